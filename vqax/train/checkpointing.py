"""Checkpoints with orbax: the train state and the grain iterator, saved together, atomically.

Resume order (the one place it is written down):
  1. build the abstract state (shapes, dtypes, shardings) from the config;
  2. find the newest step whose checkpoint restores completely; a corrupt or truncated one is skipped
     with a warning naming it, and the previous one is used;
  3. restore the state into the abstract structure and the data iterator to its saved position;
  4. continue at state.step: the next batch, RNG and schedule value are those an uninterrupted run uses.
orbax writes each step into a temporary folder and renames it when complete, so a run killed mid-save
never leaves a half-written "latest".
"""
import logging
import pathlib

import grain
import jax
import orbax.checkpoint as ocp

from vqax.errors import CheckpointError

log = logging.getLogger(__name__)


class Checkpointer:
  """Save/restore {state, data iterator} under `<workdir>/checkpoints/<step>/`."""

  def __init__(self, directory, *, max_to_keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state, data_iterator=None) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._manager.wait_until_finished()

  def restore(self, abstract_state, data_iterator=None, step: int | None = None):
    """Restore the newest complete checkpoint (or `step`); returns (state, step) or (None, None)."""
    steps = [step] if step is not None else list(reversed(self.all_steps()))
    for candidate in steps:
      # abstract_state=None restores the saved structure as is (e.g. to read params for evaluation).
      items = {"state": ocp.args.StandardRestore(abstract_state)}
      if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
      try:
        restored = self._manager.restore(candidate, args=ocp.args.Composite(**items))
      except Exception as e:  # orbax raises many types for truncated/corrupt files
        if _is_structure_mismatch(e):
          raise CheckpointError(
              f"checkpoint {self.directory / str(candidate)} was written by a different model config "
              f"({str(e).splitlines()[0][:200]}); use a new --workdir or the original config") from None
        log.warning("checkpoint %s is unreadable (%s); trying the previous one",
                    self.directory / str(candidate), str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        if step is not None:
          raise CheckpointError(f"checkpoint {self.directory / str(candidate)} is unreadable") from None
        continue
      return restored["state"], candidate
    return None, None

  def close(self):
    self._manager.close()


def _is_structure_mismatch(error: Exception) -> bool:
  text = str(error).lower()
  return any(s in text for s in ("tree structure", "shape mismatch", "structures do not match",
                                 "does not match", "mismatch"))


def abstract_like(tree, shardings=None):
  """ShapeDtypeStruct tree (with shardings) to restore into."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
