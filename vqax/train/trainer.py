"""The generic trainer: one loop for every task (VQ-VAE, ReDimNet-MRL).

`train(config, workdir)` builds the task, restores the newest checkpoint in `workdir` if any, and trains
to `epochs`, compiling the step once per phase in one place (`compile_train_step`). Every process runs
this same function; only process 0 prints and writes TensorBoard and `metrics.jsonl` (one line per logged
step; a resumed run first drops the lines past its checkpoint, so the file stays one curve).
Reliability: SIGTERM/SIGINT finish the step, checkpoint and return; a run killed outright resumes from its
newest readable checkpoint, bit-exact; non-finite steps are skipped (counted) or halt the run
(config.nonfinite), and parameters are checked finite before every save.
"""
import dataclasses
import logging
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vqax import config_loading
from vqax.errors import CheckpointError, ConfigError, VqaxError
from vqax.tasks.base import Phase, total_steps
from vqax.train import distributed, run_guard, stop_signals
from vqax.train import sharding as sharding_lib
from vqax.train.checkpointing import Checkpointer, abstract_like
from vqax.train.metrics_log import MetricsLog
from vqax.train.monitoring import Monitor
from vqax.train.optimizer import make_optimizer
from vqax.train.state import TrainState
from vqax.train.step import bind_train_step

log = logging.getLogger(__name__)

# Config groups that change the parameter structure: a checkpoint from another value cannot be resumed.
STRUCTURAL_KEYS = ("task", "model")


class NonFiniteError(VqaxError):
  """Training halted on a non-finite loss or gradient (nonfinite="halt")."""


def build_task(config):
  if config.task == "vqvae":
    from vqax.tasks.vqvae import VQVAETask
    return VQVAETask(config)
  if config.task == "redimnet_mrl":
    from vqax.tasks.redimnet_mrl import ReDimNetMRLTask
    return ReDimNetMRLTask(config)
  raise ConfigError(f"task={config.task!r}: expected 'vqvae' or 'redimnet_mrl'")


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
      if key in previous and config_loading.config_to_json(previous[key]) != config_loading.config_to_json(config[key]):
        raise CheckpointError(
            f"--workdir {workdir} holds checkpoints of a different '{key}' config; use a new --workdir "
            f"or the original settings (saved in {saved})")
  tmp = workdir / f"config.json.tmp.{jax.process_index()}"
  tmp.write_text(config_loading.config_to_json(config))
  tmp.replace(saved)
  return workdir


def phase_at(phases: list[Phase], step: int) -> Phase:
  for phase in phases:
    if phase.start_step <= step < phase.end_step:
      return phase
  return phases[-1]


@dataclasses.dataclass
class Trainer:
  """The pieces of one training run, built once and shared by the loop, tests and the planner."""
  config: object
  task: object
  mesh: jax.sharding.Mesh
  tx: object
  schedule: object
  state_shardings: object
  batch_sharding: object
  steps_per_epoch: int
  total_steps: int
  phases: list

  def init_state(self, batch_spec) -> TrainState:
    def init(rng):
      init_rng, state_rng = jax.random.split(rng)
      variables = self.task.init_variables(init_rng, batch_spec)
      params = variables.pop("params")
      return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=dict(variables),
                        opt_state=self.tx.init(params), rng=state_rng,
                        nonfinite_steps=jnp.zeros((), jnp.int32))
    return jax.jit(init, out_shardings=self.state_shardings)(jax.random.PRNGKey(int(self.config.seed)))

  def compile_train_step(self, phase: Phase):
    """The one place the step is jitted: explicit shardings, state donated (updated in place)."""
    return jax.jit(bind_train_step(self.task, self.tx, phase),
                   in_shardings=(self.state_shardings, self.batch_sharding),
                   out_shardings=(self.state_shardings, None), donate_argnums=0)


def make_trainer(config, task, steps_per_epoch: int, devices=None) -> Trainer:
  mesh = sharding_lib.make_mesh(devices)
  n_steps = total_steps(config, steps_per_epoch)
  tx, schedule = make_optimizer(config, n_steps)
  phases = task.phases(steps_per_epoch, n_steps)
  batch_spec = task.batch_spec(config.batch_size * mesh.size)
  abstract = jax.eval_shape(
      lambda rng: _abstract_state(task, tx, rng, batch_spec), jax.random.PRNGKey(0))
  state_sh = sharding_lib.state_shardings(mesh, abstract, bool(config.get("shard_params", False)),
                                          bool(config.get("shard_opt_state", False)))
  return Trainer(config, task, mesh, tx, schedule, state_sh, sharding_lib.batch_sharding(mesh), steps_per_epoch,
                 n_steps, phases)


def _abstract_state(task, tx, rng, batch_spec):
  variables = task.init_variables(rng, batch_spec)
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=dict(variables),
                    opt_state=tx.init(params), rng=jax.random.PRNGKey(0), nonfinite_steps=jnp.zeros((), jnp.int32))


@run_guard.guarded  # stop signals caught from the first line; the workdir lock released on return
def train(config, workdir, *, task=None, max_steps: int | None = None, progress: bool = True) -> dict:
  """Train `config` in `workdir`, resuming from its newest checkpoint. Returns a summary dict.

  max_steps stops early after that global step (tests, benchmarks); the schedule still spans the config.
  """
  distributed.maybe_initialize(config)  # multi-host: before anything touches a device
  run_guard.lock_workdir(workdir)  # before anything is written there
  workdir = prepare_workdir(workdir, config)
  task = task or build_task(config)
  data = task.prepare_data(workdir)
  stop_signals.check("data scan")
  trainer = make_trainer(config, task, data.steps_per_epoch)
  mesh = trainer.mesh
  accumulation = int(config.gradient_accumulation_steps)
  global_batch = int(config.batch_size) * mesh.size * accumulation
  if jax.process_index() == 0:
    print(f"[vqax] {task.name}: {mesh.size} device(s) x {jax.process_count()} process(es); global batch = "
          f"{config.batch_size} per device x {mesh.size} devices x {accumulation} accumulation = {global_batch}; "
          f"{trainer.steps_per_epoch} steps/epoch, {trainer.total_steps} steps; "
          f"{sharding_lib.describe(config)}", flush=True)

  stop_signals.check("model set-up")
  checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=int(config.keep_checkpoints))
  data_iterator = iter(data.loader)
  abstract = abstract_like(jax.eval_shape(lambda: trainer.init_state(task.batch_spec(config.batch_size * mesh.size))),
                           trainer.state_shardings)
  state, restored_step = checkpointer.restore(abstract, data_iterator, set_aside_unreadable=True)
  if state is None:
    data_iterator = iter(data.loader)  # a failed restore may have moved the iterator: start it afresh
    state = trainer.init_state(task.batch_spec(config.batch_size * mesh.size))
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
        batch = sharding_lib.global_batch(mesh, next(data_iterator))
        if phase.name not in compiled:
          compiled[phase.name] = _compile_step(trainer, phase, state, batch)
        state, metrics = _run_step(compiled[phase.name], state, batch, config, workdir)
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
          scalars["learning_rate"] = float(trainer.schedule(max(done - 1, 0) // accumulation))
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


def _run_step(step_fn, state, batch, config, workdir):
  try:
    return step_fn(state, batch)
  except jax.errors.JaxRuntimeError as e:
    from vqax.memory import oom
    if not oom.is_out_of_memory(e):
      raise
    # Nothing is saved past this point: the donated state is gone, the last checkpoint stays the newest.
    error = oom.out_of_memory_error(config, workdir, e)
    if jax.process_index() == 0:
      print(error.report, file=sys.stderr, flush=True)
    raise error from None


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
