"""One jitted step of conditional-GAN training: `n_critic` discriminator updates, then one generator update.

Plain functions over a `GanState` (two parameter trees, two optax states, the discriminator's spectral-norm
statistics, the generator EMA), so a task can jit, shard and checkpoint it like any other train state.

Batch format: {"spectrogram": [n_critic, B, n_mels, frames] float32, "label": [n_critic, B] int32}: one
real microbatch per critic update (a fresh real batch for every D step, as in SNGAN). The generator update
draws its fake classes from the last microbatch's labels, so classes follow the data's balance.
"""
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from vqax.models.gan import Discriminator, Generator, one_hot, sample_noise
from vqax.models.gan_objectives import ema_update, gan_losses


@flax.struct.dataclass
class GanState:
  step: jax.Array
  g_params: Any
  d_params: Any
  d_stats: Any  # spectral-norm power-iteration vectors ('batch_stats')
  g_opt_state: Any
  d_opt_state: Any
  g_ema: Any


def create_gan_state(generator: Generator, discriminator: Discriminator, g_tx: optax.GradientTransformation,
                     d_tx: optax.GradientTransformation, rng: jax.Array) -> GanState:
  g_rng, d_rng, z_rng = jax.random.split(rng, 3)
  condition = one_hot(jnp.zeros((1,), jnp.int32), generator.num_classes)
  g_params = generator.init(g_rng, sample_noise(z_rng, 1, generator.latent_dim), condition)["params"]
  d_vars = discriminator.init(d_rng, jnp.zeros((1, generator.n_mels, generator.frames)), condition)
  return GanState(step=jnp.zeros((), jnp.int32), g_params=g_params, d_params=d_vars["params"],
                  d_stats=d_vars["batch_stats"], g_opt_state=g_tx.init(g_params),
                  d_opt_state=d_tx.init(d_vars["params"]),
                  g_ema=jax.tree.map(jnp.copy, g_params))  # its own buffers: the step donates the state


def gan_train_step(state: GanState, batch: dict, rng: jax.Array, *, generator: Generator,
                   discriminator: Discriminator, g_tx: optax.GradientTransformation,
                   d_tx: optax.GradientTransformation, loss: str = "hinge",
                   ema_decay: float = 0.999) -> tuple[GanState, dict]:
  """-> (new state, metrics {d_loss, g_loss, d_real, d_fake}). Pure: jit with the keyword args bound."""
  d_loss_fn, g_loss_fn = gan_losses(loss)
  rng = jax.random.fold_in(rng, state.step)
  num_classes = generator.num_classes

  def fake(g_params, labels, key):
    z = sample_noise(key, labels.shape[0], generator.latent_dim)
    return generator.apply({"params": g_params}, z, one_hot(labels, num_classes))

  def discriminate(d_params, d_stats, x, labels):
    (logits, _), updates = discriminator.apply({"params": d_params, "batch_stats": d_stats}, x,
                                               one_hot(labels, num_classes), update_stats=True,
                                               mutable=["batch_stats"])
    return logits, updates["batch_stats"]

  def critic_update(carry, micro):
    d_params, d_stats, d_opt_state = carry
    real, labels, key = micro
    fakes = jax.lax.stop_gradient(fake(state.g_params, labels, key))

    def d_objective(params):
      real_logits, stats = discriminate(params, d_stats, real, labels)
      fake_logits, stats = discriminate(params, stats, fakes, labels)
      return d_loss_fn(real_logits, fake_logits), (stats, real_logits.mean(), fake_logits.mean())

    (d_loss, (d_stats, d_real, d_fake)), grads = jax.value_and_grad(d_objective, has_aux=True)(d_params)
    updates, d_opt_state = d_tx.update(grads, d_opt_state, d_params)
    return (optax.apply_updates(d_params, updates), d_stats, d_opt_state), (d_loss, d_real, d_fake)

  n_critic = batch["spectrogram"].shape[0]
  keys = jax.random.split(jax.random.fold_in(rng, 0), n_critic)
  (d_params, d_stats, d_opt_state), (d_losses, d_reals, d_fakes) = jax.lax.scan(
      critic_update, (state.d_params, state.d_stats, state.d_opt_state),
      (batch["spectrogram"], batch["label"], keys))

  g_labels = batch["label"][-1]

  def g_objective(g_params):
    # Statistics are not updated by the generator pass (they track the discriminator's own updates).
    (logits, _) = discriminator.apply({"params": d_params, "batch_stats": d_stats},
                                      fake(g_params, g_labels, jax.random.fold_in(rng, 1)),
                                      one_hot(g_labels, num_classes), update_stats=False)
    return g_loss_fn(logits)

  g_loss, g_grads = jax.value_and_grad(g_objective)(state.g_params)
  g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)
  new_state = state.replace(step=state.step + 1, g_params=g_params, d_params=d_params, d_stats=d_stats,
                            g_opt_state=g_opt_state, d_opt_state=d_opt_state,
                            g_ema=ema_update(state.g_ema, g_params, ema_decay))
  metrics = {"d_loss": d_losses.mean(), "g_loss": g_loss, "d_real": d_reals.mean(), "d_fake": d_fakes.mean()}
  return new_state, metrics


def jit_gan_step(**static):
  """`gan_train_step` with its networks, optimizers and settings bound, jitted (state donated)."""
  return jax.jit(functools.partial(gan_train_step, **static), donate_argnums=0)


def generate(generator: Generator, g_params, labels: jax.Array, rng: jax.Array) -> jax.Array:
  """Spectrograms [B, n_mels, frames] for class `labels` [B] (use the EMA weights for evaluation)."""
  z = sample_noise(rng, labels.shape[0], generator.latent_dim)
  return generator.apply({"params": g_params}, z, one_hot(labels, generator.num_classes))
