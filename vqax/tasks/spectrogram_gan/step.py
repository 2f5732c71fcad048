"""One jitted step of conditional-GAN training: `n_critic` discriminator updates, then one generator update.

Pure functions over the trainer's `TrainState` fields:
  params      {"generator": ..., "discriminator": ...}
  model_state {"spectral_norm": the discriminator's power-iteration vectors, "generator_ema": EMA weights}
  opt_state   {"generator": ..., "discriminator": ...}: two optimizers (`tx` is a dict of two optax
              transformations, each with its own MultiSteps accumulation when configured)
Batch: {"spectrogram": [B, n_critic, n_mels, frames] float32, "label": [B, n_critic] int32}: one real
microbatch per critic update (a fresh real batch for every D step, as in SNGAN), the sharded batch axis
first. The generator update draws its fake classes from the last microbatch's labels, so classes follow
the data's balance. A step with a non-finite loss or gradient anywhere leaves no trace
(`keep_if_finite`, as the shared step).
"""
import jax
import jax.numpy as jnp
import optax

from vqax.models.gan import Discriminator, Generator, one_hot, sample_noise
from vqax.models.gan_objectives import ema_update, gan_losses
from vqax.train.state import TrainState
from vqax.train.step import keep_if_finite

NETWORKS = ("generator", "discriminator")


def init_gan_variables(generator: Generator, discriminator: Discriminator, rng: jax.Array) -> dict:
  """{"params": {generator, discriminator}, "spectral_norm": ..., "generator_ema": ...} of a fresh run."""
  g_rng, d_rng, z_rng = jax.random.split(rng, 3)
  condition = one_hot(jnp.zeros((1,), jnp.int32), generator.num_classes)
  g_params = generator.init(g_rng, sample_noise(z_rng, 1, generator.latent_dim), condition)["params"]
  d_vars = discriminator.init(d_rng, jnp.zeros((1, generator.n_mels, generator.frames)), condition)
  return {"params": {"generator": g_params, "discriminator": d_vars["params"]},
          "spectral_norm": d_vars["batch_stats"],
          "generator_ema": jax.tree.map(jnp.copy, g_params)}  # its own buffers: the step donates the state


def gan_train_step(state: TrainState, batch: dict, *, generator: Generator, discriminator: Discriminator,
                   tx: dict, loss: str = "hinge", ema_decay: float = 0.999) -> tuple[TrainState, dict]:
  """-> (new state, metrics {loss, d_loss, g_loss, d_real, d_fake, d_grad_norm, g_grad_norm, finite})."""
  d_loss_fn, g_loss_fn = gan_losses(loss)
  rng = jax.random.fold_in(state.rng, state.step)
  num_classes = generator.num_classes
  g_params, d_params = state.params["generator"], state.params["discriminator"]

  def fake(params, labels, key):
    z = sample_noise(key, labels.shape[0], generator.latent_dim)
    return generator.apply({"params": params}, z, one_hot(labels, num_classes))

  def discriminate(params, stats, x, labels):
    (logits, _), updates = discriminator.apply({"params": params, "batch_stats": stats}, x,
                                               one_hot(labels, num_classes), update_stats=True,
                                               mutable=["batch_stats"])
    return logits, updates["batch_stats"]

  def critic_update(carry, micro):
    params, stats, opt_state = carry
    real, labels, key = micro
    fakes = jax.lax.stop_gradient(fake(g_params, labels, key))

    def objective(p):
      real_logits, new_stats = discriminate(p, stats, real, labels)
      fake_logits, new_stats = discriminate(p, new_stats, fakes, labels)
      return d_loss_fn(real_logits, fake_logits), (new_stats, real_logits.mean(), fake_logits.mean())

    (d_loss, (stats, d_real, d_fake)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx["discriminator"].update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), stats, opt_state), (d_loss, d_real, d_fake, optax.tree.norm(grads))

  # [B, n_critic, ...] -> [n_critic, B, ...]: one scan step per critic update.
  spectrograms = jnp.swapaxes(batch["spectrogram"], 0, 1)
  labels = jnp.swapaxes(batch["label"], 0, 1)
  n_critic = labels.shape[0]
  keys = jax.random.split(jax.random.fold_in(rng, 0), n_critic)
  (d_params, d_stats, d_opt_state), (d_losses, d_reals, d_fakes, d_norms) = jax.lax.scan(
      critic_update, (d_params, state.model_state["spectral_norm"], state.opt_state["discriminator"]),
      (spectrograms, labels, keys))

  g_labels = labels[-1]

  def g_objective(params):
    # Statistics are not updated by the generator pass (they track the discriminator's own updates).
    logits, _ = discriminator.apply({"params": d_params, "batch_stats": d_stats},
                                    fake(params, g_labels, jax.random.fold_in(rng, 1)),
                                    one_hot(g_labels, num_classes), update_stats=False)
    return g_loss_fn(logits)

  g_loss, g_grads = jax.value_and_grad(g_objective)(g_params)
  g_updates, g_opt_state = tx["generator"].update(g_grads, state.opt_state["generator"], g_params)
  new_g = optax.apply_updates(g_params, g_updates)

  g_norm = optax.tree.norm(g_grads)
  d_loss = d_losses.mean()
  finite = (jnp.isfinite(d_loss) & jnp.isfinite(g_loss) & jnp.all(jnp.isfinite(d_norms))
            & jnp.isfinite(g_norm))
  params = {"generator": new_g, "discriminator": d_params}
  model_state = {"spectral_norm": d_stats,
                 "generator_ema": ema_update(state.model_state["generator_ema"], new_g, ema_decay)}
  opt_state = {"generator": g_opt_state, "discriminator": d_opt_state}
  new_state = state.replace(
      step=state.step + 1,
      params=keep_if_finite(finite, params, state.params),
      model_state=keep_if_finite(finite, model_state, state.model_state),
      opt_state=keep_if_finite(finite, opt_state, state.opt_state),
      nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
  metrics = {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss, "d_real": d_reals.mean(),
             "d_fake": d_fakes.mean(), "d_grad_norm": d_norms.mean(), "g_grad_norm": g_norm, "finite": finite}
  return new_state, metrics


def generate(generator: Generator, g_params, labels: jax.Array, rng: jax.Array) -> jax.Array:
  """Spectrograms [B, n_mels, frames] for class `labels` [B] (use the EMA weights for evaluation)."""
  z = sample_noise(rng, labels.shape[0], generator.latent_dim)
  return generator.apply({"params": g_params}, z, one_hot(labels, generator.num_classes))
