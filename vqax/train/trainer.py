"""The generic trainer: one loop for every task.

`train(config, workdir, task)` prepares the task's data, builds its program, restores the newest checkpoint
in `workdir` if any, and trains to `epochs`, compiling the step once per phase in one place
(`Trainer.compile_train_step`). Every process runs this same function; only process 0 prints and writes
TensorBoard and `metrics.jsonl` (one line per logged step; a resumed run first drops the lines past its
checkpoint, so the file stays one curve).
Reliability: SIGTERM/SIGINT finish the step, checkpoint and return; a run killed outright resumes from its
newest readable checkpoint, bit-exact; non-finite steps are skipped (counted) or halt the run
(config.nonfinite), and parameters are checked finite before every save. A step that runs out of device
memory raises `on_out_of_memory(config, workdir, error)` when given (the CLI passes the planner's report).
"""
import dataclasses
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from vqax import config_loading
from vqax.errors import CheckpointError, ConfigError, VqaxError
from vqax import stop_signals
from vqax.train import distributed, run_guard
from vqax.train import sharding as sharding_lib
from vqax.train.checkpointing import Checkpointer, abstract_like
from vqax.train.metrics_log import MetricsLog
from vqax.train.monitoring import Monitor
from vqax.train.state import TrainState
from vqax.train.task import BatchSizes, DataInfo, Phase, Program, Task, total_steps

log = logging.getLogger(__name__)

# Config groups that change the parameter structure: a checkpoint from another value cannot be resumed.
STRUCTURAL_KEYS = ("task", "model")
# Fields of those groups that change how the step runs, not what it computes or holds.
RUN_ONLY_MODEL_FIELDS = ("layer_forms",)


class NonFiniteError(VqaxError):
  """Training halted on a non-finite loss or gradient (nonfinite="halt")."""


def prepare_workdir(workdir, config) -> pathlib.Path:
  """Create `workdir`, check it is writable, and keep the config beside the checkpoints."""
  workdir = pathlib.Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_test.{jax.process_index()}"  # one per process: no races
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ConfigError(f"--workdir {workdir}: not writable ({e.strerror})") from None
  saved = workdir / "config.json"
  if saved.exists() and (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir()):
    previous = config_loading.config_from_json(saved.read_text())
    for key in STRUCTURAL_KEYS:
      if key in previous and _structure(previous[key]) != _structure(config[key]):
        raise CheckpointError(
            f"--workdir {workdir} holds checkpoints of a different '{key}' config; use a new --workdir "
            f"or the original settings (saved in {saved})")
  tmp = workdir / f"config.json.tmp.{jax.process_index()}"
  tmp.write_text(config_loading.config_to_json(config))
  tmp.replace(saved)
  return workdir


def _structure(group) -> str:
  value = group.to_dict() if hasattr(group, "to_dict") else group
  if isinstance(value, dict):
    value = {k: v for k, v in value.items() if k not in RUN_ONLY_MODEL_FIELDS}
  return config_loading.config_to_json(value)


def phase_at(phases: list[Phase], step: int) -> Phase:
  for phase in phases:
    if phase.start_step <= step < phase.end_step:
      return phase
  return phases[-1]


def mesh_platform(mesh) -> str:
  """"cpu", "gpu" or "tpu": what the step is compiled for (a GPU target's devices on a CPU host say gpu)."""
  platform = mesh.devices.flat[0].platform
  return "gpu" if platform in ("cuda", "rocm") else platform


@dataclasses.dataclass
class Trainer:
  """The pieces of one training run, built once and shared by the loop, tests and the planner."""
  config: object
  program: Program
  info: DataInfo
  batch: BatchSizes
  mesh: jax.sharding.Mesh
  tx: object
  schedule: object
  state_shardings: object
  batch_sharding: object
  total_steps: int
  phases: list

  @property
  def steps_per_epoch(self) -> int:
    return self.info.steps_per_epoch

  def batch_spec(self):
    return self.program.batch_spec(self.batch.global_batch)

  def init_state(self) -> TrainState:
    init = lambda rng: self.program.init_state(rng, self.batch_spec(), self.tx)
    return jax.jit(init, out_shardings=self.state_shardings)(jax.random.PRNGKey(int(self.config.seed)))

  def abstract_state(self):
    """ShapeDtypeStructs (with shardings) of the train state: what a checkpoint restores into."""
    return abstract_like(jax.eval_shape(self.init_state), self.state_shardings)

  def compile_train_step(self, phase: Phase):
    """The one place the step is jitted: explicit shardings, state donated (updated in place)."""
    def step(state, batch):
      return self.program.train_step(state, batch, tx=self.tx, phase=phase)
    return jax.jit(step, in_shardings=(self.state_shardings, self.batch_sharding),
                   out_shardings=(self.state_shardings, None), donate_argnums=0)


def make_trainer(config, task: Task, info: DataInfo, *, mesh=None) -> Trainer:
  """Build `task`'s program for `info` on `mesh` (default: every device) with its optimizer and shardings."""
  mesh = mesh if mesh is not None else sharding_lib.make_mesh()
  batch = BatchSizes.for_mesh(config, mesh)
  program = task.build(info, mesh_platform(mesh))
  n_steps = total_steps(config, info.steps_per_epoch)
  tx, schedule = program.make_optimizer(n_steps)
  abstract = jax.eval_shape(lambda rng: program.init_state(rng, program.batch_spec(batch.global_batch), tx),
                            jax.random.PRNGKey(0))
  state_sh = sharding_lib.state_shardings(mesh, abstract, bool(config.get("shard_params", False)),
                                          bool(config.get("shard_opt_state", False)))
  return Trainer(config, program, info, batch, mesh, tx, schedule, state_sh, sharding_lib.batch_sharding(mesh),
                 n_steps, program.phases(n_steps))


@run_guard.guarded  # stop signals caught from the first line; the workdir lock released on return
def train(config, workdir, task: Task, *, max_steps: int | None = None, progress: bool = True,
          on_out_of_memory=None, devices=None) -> dict:
  """Train `config` with `task` in `workdir`, resuming from its newest checkpoint. Returns a summary dict.

  max_steps stops early after that global step (tests, benchmarks); the schedule still spans the config.
  on_out_of_memory(config, workdir, error) -> exception to raise when a step runs out of device memory.
  """
  distributed.maybe_initialize(config)  # multi-host: before anything touches a device
  run_guard.lock_workdir(workdir)  # before anything is written there
  workdir = prepare_workdir(workdir, config)
  mesh = sharding_lib.make_mesh(devices)
  batch = BatchSizes.for_mesh(config, mesh)
  data = task.prepare_data(workdir, batch)
  stop_signals.check("data scan")
  trainer = make_trainer(config, task, data.info, mesh=mesh)
  if jax.process_index() == 0:
    print(f"[vqax] {task.name}: {mesh.size} device(s) x {jax.process_count()} process(es); global batch = "
          f"{batch.per_device} per device x {batch.devices} devices x {batch.accumulation} accumulation = "
          f"{batch.effective}; {trainer.steps_per_epoch} steps/epoch, {trainer.total_steps} steps; "
          f"{sharding_lib.describe(config)}", flush=True)

  stop_signals.check("model set-up")
  checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=int(config.keep_checkpoints))
  data_iterator = iter(data.loader)
  state, restored_step = checkpointer.restore(trainer.abstract_state(), data_iterator, set_aside_unreadable=True)
  if state is None:
    data_iterator = iter(data.loader)  # a failed restore may have moved the iterator: start it afresh
    state = trainer.init_state()
  elif jax.process_index() == 0:
    print(f"[vqax] resumed from {checkpointer.directory / str(restored_step)} at step {restored_step}", flush=True)

  start = int(state.step)
  end = trainer.total_steps if max_steps is None else min(trainer.total_steps, max_steps)
  compiled = {}
  monitor = Monitor(workdir, total_steps=trainer.total_steps, start_step=start, sample_unit=data.sample_unit,
                    progress_bar=progress)
  metrics_log = MetricsLog(workdir / "metrics.jsonl", resume_step=start, enabled=jax.process_index() == 0)
  history, pending, last_saved = [], [], restored_step
  log_every = max(int(config.log_every_steps), 1)
  stopped_by = None
  try:
    with stop_signals.training_loop() as stop:
      for step in range(start, end):
        phase = phase_at(trainer.phases, step)
        global_batch = sharding_lib.global_batch(mesh, next(data_iterator))
        if phase.name not in compiled:
          compiled[phase.name] = _compile_step(trainer, phase, state, global_batch)
        state, metrics = _run_step(compiled[phase.name], state, global_batch, config, workdir, on_out_of_memory)
        pending.append(metrics)
        monitor.step()
        done = step + 1
        epoch_end = done % trainer.steps_per_epoch == 0
        stopping = stop.signal_name is not None  # read once: a signal arriving later stops after the next step
        save_now = done % int(config.checkpoint_every_steps) == 0 or epoch_end or done == end or stopping
        log_now = done % log_every == 0 or done == end
        if config.nonfinite == "halt" and (log_now or save_now):  # before anything is logged or saved
          _halt_if_nonfinite(pending, done, checkpointer, last_saved)
        if log_now:
          scalars = _mean_scalars(pending, config, step=done)
          pending = []
          scalars["learning_rate"] = float(trainer.schedule(max(done - 1, 0) // batch.accumulation))
          scalars = monitor.log(done, scalars, data.samples_per_step)
          history.append(dict(scalars, step=done, phase=phase.name))
          metrics_log.append(history[-1])
        if save_now:
          if not _all_finite(state.params):  # never write NaN parameters to disk
            raise NonFiniteError(f"parameters are non-finite at step {done}; not saved, the last good checkpoint "
                                 f"({_describe_saved(checkpointer, last_saved)}) is kept")
          checkpointer.save(done, state, data_iterator)
          last_saved = done
        if stopping:
          stopped_by = stop.signal_name
          monitor.write(f"[vqax] {stopped_by} received: saved step {done} in {checkpointer.directory}; rerun the "
                        f"same command to resume")
          break
  finally:
    metrics_log.close()
    monitor.close()
    checkpointer.close()
  final_step = int(state.step)
  summary = {"final_step": final_step, "total_steps": trainer.total_steps, "last_saved_step": last_saved,
             "stopped_by": stopped_by, "nonfinite_steps": int(state.nonfinite_steps), "history": history,
             "data": data.summary}
  return summary


def _compile_step(trainer, phase, state, batch):
  """The phase's step. With several processes it is compiled here and all meet before running it: gloo
  drops a first collective whose peers arrive over 30 s apart, as uneven compiles on a busy host can."""
  step_fn = trainer.compile_train_step(phase)
  if jax.process_count() > 1:
    step_fn = step_fn.lower(state, batch).compile()
    distributed.barrier(f"compiled step of phase {phase.name}")
  return step_fn


def _run_step(step_fn, state, batch, config, workdir, on_out_of_memory):
  try:
    return step_fn(state, batch)
  except jax.errors.JaxRuntimeError as e:
    if on_out_of_memory is None or not is_out_of_memory(e):
      raise
    # Nothing is saved past this point: the donated state is gone, the last checkpoint stays the newest.
    raise on_out_of_memory(config, workdir, e) from None


def is_out_of_memory(error: BaseException) -> bool:
  """An XLA allocation failure (RESOURCE_EXHAUSTED) rather than another runtime error."""
  return isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


def _halt_if_nonfinite(pending: list[dict], done: int, checkpointer, last_saved) -> None:
  """nonfinite="halt": raise naming the first non-finite step of the window ending at `done`."""
  flags = jax.device_get([m["finite"] for m in pending])
  for offset, ok in enumerate(flags):
    if not ok:
      bad_step = done - len(flags) + offset + 1
      raise NonFiniteError(f"non-finite loss or gradients at step {bad_step} (nonfinite=halt); nothing after "
                           f"it was saved, the last good checkpoint ({_describe_saved(checkpointer, last_saved)}) "
                           f"is kept")


def _describe_saved(checkpointer, last_saved) -> str:
  return f"step {last_saved} in {checkpointer.directory}" if last_saved else "none written yet"


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _mean_scalars(pending: list[dict], config, step: int) -> dict:
  fetched = jax.device_get(pending)
  out = {}
  finite_flags = [bool(m["finite"]) for m in fetched]
  for key in fetched[0]:
    if key == "finite":
      continue
    values = [np.asarray(m[key], np.float64) for m, ok in zip(fetched, finite_flags) if ok and np.ndim(m[key]) == 0]
    if values:
      out[key] = float(np.mean(values))
  out["nonfinite_in_window"] = float(finite_flags.count(False))
  return out
