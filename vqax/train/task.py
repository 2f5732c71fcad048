"""The contract between a task (its data, model and loss) and the generic trainer and planner.

A task is registered by name in `vqax/tasks/__init__.py` and built in two steps, so that nothing it
computes from its data is mutated later:

  task = TaskClass(config)                     # validates the config; reads no data
  data = task.prepare_data(workdir, batch)     # host-side loader + DataInfo (steps per epoch, classes, ...)
  program = task.build(data.info, platform)    # frozen: model, loss, phases for exactly that data
  (the planner calls task.build(task.planning_info(), platform) instead: no data is read)

The trainer jits `program.train_step`. The default is the shared single-loss step (`vqax.train.step`) over
`program.loss_fn`; a task that trains several networks (a GAN) overrides `init_state`/`make_optimizer`/
`train_step` with its own, over the same `TrainState` fields, so that checkpointing, sharding, accumulation,
the non-finite guard and the planner work on it unchanged.
"""
import dataclasses
from typing import Any, Callable, ClassVar, Mapping

import jax
import jax.numpy as jnp

from vqax.train import optimizer as optimizer_lib
from vqax.train import step as step_lib
from vqax.train.step import path_names  # noqa: F401  (re-exported for tasks)
from vqax.train.state import TrainState

PyTree = Any
# The epoch length changes no shape; a plan (which reads no data) assumes this many steps per epoch.
PLANNING_STEPS_PER_EPOCH = 1000


@dataclasses.dataclass(frozen=True)
class BatchSizes:
  """The one meaning of batch size. `config.batch_size` is per device and micro-step; the trainer derives
  the others once from the mesh and hands them to the task."""
  per_device: int
  devices: int  # in the mesh, over every process
  local_devices: int  # this process's devices in the mesh
  accumulation: int = 1

  @property
  def per_process(self) -> int:
    """Rows this process loads for each micro-step."""
    return self.per_device * self.local_devices

  @property
  def global_batch(self) -> int:
    """Rows of one micro-step over the whole mesh (what the jitted step sees)."""
    return self.per_device * self.devices

  @property
  def effective(self) -> int:
    """Rows per optimizer update (global batch x accumulation steps)."""
    return self.global_batch * self.accumulation

  @classmethod
  def for_mesh(cls, config, mesh) -> "BatchSizes":
    local = sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())
    return cls(int(config.batch_size), int(mesh.size), local or int(mesh.size),
               int(config.gradient_accumulation_steps))


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What a task learns from its data that its program depends on; a plan assumes these values."""
  steps_per_epoch: int
  num_classes: int | None = None


@dataclasses.dataclass
class TrainData:
  """A task's prepared data: a checkpointable host-side loader and the facts the program needs."""
  loader: Any  # grain.DataLoader; iter() gives a checkpointable iterator of per-process batches
  info: DataInfo
  samples_per_step: int  # e.g. patches per step, for throughput
  sample_unit: str = "samples"
  summary: dict = dataclasses.field(default_factory=dict)


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


class Program:
  """A task built for one run: everything the jitted step needs, with data-dependent values fixed.

  Subclasses define `batch_spec`, `init_variables`, `phases` and `loss_fn`; the rest has shared defaults.
  """
  config: Any

  def batch_spec(self, global_batch: int) -> PyTree:
    """jax.ShapeDtypeStruct tree of one global micro-batch (for init and the planner)."""
    raise NotImplementedError

  def init_variables(self, rng: jax.Array, batch_spec: PyTree) -> dict:
    """{"params": ..., other collections} for a fresh run."""
    raise NotImplementedError

  def phases(self, total_steps: int) -> list[Phase]:
    return [Phase("full", 0, total_steps)]

  def loss_fn(self, params, model_state, batch, rng, step, phase: Phase):
    """-> (scalar float32 loss, (new model_state e.g. batch_stats, metrics dict of scalars))."""
    raise NotImplementedError

  def after_update(self, params, model_state, rng, phase: Phase):
    """State edits outside the gradient path after each update (e.g. dead-code revival); none by default."""
    return params, model_state

  def make_optimizer(self, total_micro_steps: int):
    """(optax transformation, learning-rate schedule); MultiSteps accumulation inside."""
    return optimizer_lib.make_optimizer(self.config, total_micro_steps)

  def init_state(self, rng: jax.Array, batch_spec: PyTree, tx) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    variables = dict(self.init_variables(init_rng, batch_spec))
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                      opt_state=tx.init(params), rng=state_rng, nonfinite_steps=jnp.zeros((), jnp.int32))

  def train_step(self, state: TrainState, batch, *, tx, phase: Phase):
    """One micro-step -> (new state, metrics with at least loss and finite)."""
    return step_lib.train_step(state, batch, program=self, tx=tx, phase=phase)


class Task:
  """A registered task: its config checks, data preparation and how it builds a `Program`.

  Class attributes tell the generic code what is specific to the task, so that it names no task:
  `flag_aliases` (seed-script flag -> config field, for `vqax train`), `boolean_flags` (such flags that take
  no value), `fit_fields` (what `vqax plan --budget --fit` may search) and `commands` (a module whose
  COMMANDS list holds the task's own CLI subcommands, see `vqax.commands`). A task with a demo (`vqax demo
  --task NAME`: synthetic data -> train -> evaluate) names its `demo_config` and overrides `make_demo_data`
  and `evaluate_demo`.
  """
  name: ClassVar[str]
  flag_aliases: ClassVar[Mapping[str, str]] = {}
  boolean_flags: ClassVar[frozenset] = frozenset()
  fit_fields: ClassVar[tuple[str, ...]] = ("batch_size",)
  commands: ClassVar[str | None] = None
  demo_config: ClassVar[str | None] = None  # "path/to/config.py:variant"
  demo_data_root: ClassVar[str] = "data/demo"

  @classmethod
  def make_demo_data(cls, data_root: str) -> None:
    """Write (or keep) the demo's synthetic data set under data_root."""
    raise NotImplementedError(f"task {cls.name!r} has no demo")

  @classmethod
  def evaluate_demo(cls, workdir: str):
    """Evaluate the trained demo run and print its results."""
    raise NotImplementedError(f"task {cls.name!r} has no demo")

  def __init__(self, config):
    self.config = config

  def prepare_data(self, workdir, batch: BatchSizes) -> TrainData:
    raise NotImplementedError

  def planning_info(self) -> DataInfo:
    """The data facts a plan assumes (no data is read)."""
    return DataInfo(steps_per_epoch=PLANNING_STEPS_PER_EPOCH)

  def build(self, info: DataInfo, platform: str) -> Program:
    """The program for data described by `info`, compiled for `platform` ("cpu", "gpu", "tpu")."""
    raise NotImplementedError


def total_steps(config, steps_per_epoch: int) -> int:
  return int(config.epochs) * steps_per_epoch
