"""The shared train step: loss and gradients, phase freezing, optimizer update, non-finite guard.

Tasks with a step of their own (several networks, several optimizers) reuse `trainable_mask`,
`zero_frozen` and `keep_if_finite` so that freezing and the non-finite guard behave the same everywhere.
"""
import jax
import jax.numpy as jnp
import optax

from vqax.train.state import TrainState


def path_names(path) -> tuple[str, ...]:
  """jax key path -> tuple of plain names (('encoder', 'down0', 'Conv_0', 'kernel'))."""
  return tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)


def trainable_mask(params, phase):
  """Python-bool pytree: which leaves update in `phase` (static, so frozen leaves compile to zeros)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: bool(phase.trainable(path_names(path))), params)


def zero_frozen(tree, mask):
  return jax.tree.map(lambda x, m: x if m else jnp.zeros_like(x), tree, mask)


def keep_if_finite(finite, new, old):
  """`new` where the step was finite, else `old`, leaf by leaf (a skipped update leaves no trace)."""
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def train_step(state: TrainState, batch, *, program, tx: optax.GradientTransformation, phase):
  """One micro-step of `program.loss_fn`. Returns (new state, metrics). Pure: the RNG is the base key
  folded with the step."""
  rng = jax.random.fold_in(state.rng, state.step)
  mask = trainable_mask(state.params, phase)

  def loss_of(params):
    return program.loss_fn(params, state.model_state, batch, rng, state.step, phase)

  (loss, (model_state, metrics)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  grads = zero_frozen(grads, mask)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # A non-finite step must not poison the optimizer moments: feed zeros and then discard the update.
  safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
  updates, opt_state = tx.update(safe_grads, state.opt_state, state.params)
  updates = zero_frozen(updates, mask)
  params = optax.apply_updates(state.params, updates)
  params, model_state = program.after_update(params, model_state, rng, phase)

  new_state = state.replace(
      step=state.step + 1,
      params=keep_if_finite(finite, params, state.params),
      opt_state=keep_if_finite(finite, opt_state, state.opt_state),
      model_state=keep_if_finite(finite, model_state, state.model_state),
      nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
  )
  metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)
  return new_state, metrics
