"""The pure train step: loss and gradients, phase freezing, optimizer update, non-finite guard."""
import functools

import jax
import jax.numpy as jnp
import optax

from vqax.tasks.base import Phase, path_names
from vqax.train.state import TrainState


def trainable_mask(params, phase: Phase):
  """Python-bool pytree: which leaves update in `phase` (static, so frozen leaves compile to zeros)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: bool(phase.trainable(path_names(path))), params)


def _zero_frozen(tree, mask):
  return jax.tree.map(lambda x, m: x if m else jnp.zeros_like(x), tree, mask)


def train_step(state: TrainState, batch, *, task, tx: optax.GradientTransformation, phase: Phase):
  """One micro-step. Returns (new state, metrics). Pure: the RNG is the base key folded with the step."""
  rng = jax.random.fold_in(state.rng, state.step)
  mask = trainable_mask(state.params, phase)

  def loss_of(params):
    return task.loss_fn(params, state.model_state, batch, rng, state.step, phase)

  (loss, (model_state, metrics)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  grads = _zero_frozen(grads, mask)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # A non-finite step must not poison the optimizer moments: feed zeros and then discard the update.
  safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
  updates, opt_state = tx.update(safe_grads, state.opt_state, state.params)
  updates = _zero_frozen(updates, mask)
  params = optax.apply_updates(state.params, updates)
  if hasattr(task, "after_update"):  # e.g. dead-code revival: state edits outside the gradient path
    params, model_state = task.after_update(params, model_state, rng, phase)

  def keep_if_finite(new, old):
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

  new_state = state.replace(
      step=state.step + 1,
      params=keep_if_finite(params, state.params),
      opt_state=keep_if_finite(opt_state, state.opt_state),
      model_state=keep_if_finite(model_state, state.model_state),
      nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
  )
  metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)
  return new_state, metrics


def bind_train_step(task, tx, phase: Phase):
  """train_step with its static parts bound, ready for jax.jit."""
  return functools.partial(train_step, task=task, tx=tx, phase=phase)
