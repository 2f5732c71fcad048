"""The contract between a task (model + loss + data) and the generic trainer."""
import dataclasses
from typing import Any, Callable, Iterator, Protocol

import jax

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Phase:
  """A stretch of training [start_step, end_step) with its own loss terms and frozen parameters.

  `trainable(path)` gets a parameter's key path (tuple of names) and says whether it updates. Frozen
  parameters get zero gradients and zero updates, so they stay bit-identical.
  """
  name: str
  start_step: int
  end_step: int
  trainable: Callable[[tuple[str, ...]], bool] = lambda path: True

  def __hash__(self):
    return hash((self.name, self.start_step, self.end_step))


@dataclasses.dataclass
class TrainData:
  """What the trainer needs from a task's data: an iterator of host batches and the epoch length."""
  loader: Any  # grain.DataLoader; iter() gives a checkpointable iterator
  steps_per_epoch: int
  samples_per_step: int  # e.g. patches per step, for throughput
  sample_unit: str = "samples"
  summary: dict = dataclasses.field(default_factory=dict)


class Task(Protocol):
  """A training task. Pure parts (init, loss) are traced inside the jitted step."""

  name: str

  def prepare_data(self, workdir) -> TrainData: ...

  def batch_spec(self, per_process_batch: int) -> PyTree:
    """jax.ShapeDtypeStruct tree of one host batch (for init and the planner)."""

  def init_variables(self, rng: jax.Array, batch: PyTree) -> dict: ...

  def phases(self, steps_per_epoch: int, total_steps: int) -> list[Phase]: ...

  def loss_fn(self, params: PyTree, model_state: PyTree, batch: PyTree, rng: jax.Array, step: jax.Array,
              phase: Phase) -> tuple[jax.Array, tuple[PyTree, dict]]:
    """-> (scalar float32 loss, (new model_state e.g. batch_stats, metrics dict of scalars))."""


def total_steps(config, steps_per_epoch: int) -> int:
  return int(config.epochs) * steps_per_epoch


def path_names(path) -> tuple[str, ...]:
  """jax key path -> tuple of plain names (('encoder', 'down0', 'Conv_0', 'kernel'))."""
  return tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)
