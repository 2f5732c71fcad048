"""Out of device memory: stop cleanly, show the plan, and name the smallest change that fits.

When XLA reports RESOURCE_EXHAUSTED, the step's donated state is gone but the last checkpoint on disk is
intact, so training stops without saving and without a traceback. The planner then compiles the current
config and candidate changes, from the least intrusive up (same numbers, then bfloat16, then the same
effective batch in micro-batches, and only then a smaller batch), and names the first whose compiled peak
fits the device.
"""
import pathlib
import sys

import jax
import psutil

from vqax.errors import VqaxError
from vqax.models.precision import memory_settings
from vqax.planning import planner
from vqax.train.trainer import is_out_of_memory  # noqa: F401  (re-exported: what counts as out of memory)

# Plan against this share of the device: the allocator, the input pipeline's prefetched batches and
# fragmentation need the rest.
HEADROOM = 0.9
RESUMABLE_FLAGS = ("--use_amp", "--use_gradient_checkpointing", "--memory_saver")


class OutOfMemoryError(VqaxError):
  """A step ran out of device memory; `report` holds the plan and the suggested change."""

  def __init__(self, message: str, report: str = ""):
    super().__init__(message)
    self.report = report


def device_memory_bytes() -> int:
  """Memory of one device: the allocator's limit where the backend reports one, else the host's RAM."""
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # some backends raise instead of returning None
    stats = {}
  return int(stats.get("bytes_limit") or psutil.virtual_memory().total)


def candidate_changes(config):
  """(flags, what they keep) from the smallest change up; each flag list is applied to `config` alone."""
  memory = memory_settings(config)
  bf16, remat = memory.compute_dtype == "bfloat16", memory.remat_policy != "none"
  if not remat:
    yield ["--use_gradient_checkpointing"], "same numbers, one extra forward pass"
  if not bf16:
    yield ["--use_amp"], "bfloat16 compute, float32 weights"
  saver = [] if bf16 and remat else ["--memory_saver"]
  if saver and not (bf16 or remat):
    yield saver, "bfloat16 compute and remat"
  batch, steps = int(config.batch_size), int(config.gradient_accumulation_steps)
  k = 2
  while k <= batch:
    if batch % k == 0:
      yield (saver + ["--batch_size", str(batch // k), "--gradient_accumulation_steps", str(steps * k)],
             f"the same effective batch in {k}x as many micro-steps")
    k *= 2


def smallest_fitting_change(config, budget: int, *, devices=None):
  """(flags, plan, what it keeps) of the first candidate change whose compiled peak is within `budget`.

  Without one, the largest batch_size (then the task's other fit fields) that fits with memory_saver; None if
  nothing fits.
  """
  for flags, keeps in candidate_changes(config):
    candidate = planner.plan(planner.with_flags(config, flags), "change", flags, devices=devices)
    if candidate.peak <= budget:
      return flags, candidate, keeps
  memory = memory_settings(config)
  fixed = [] if memory.compute_dtype == "bfloat16" and memory.remat_policy != "none" else ["--memory_saver"]
  for field in planner.fit_fields(config):
    current = int(config.get(field, 1))
    if current > 1:
      fit, = planner.fit_budgets(planner.with_flags(config, fixed), [budget], field=field, flags=fixed,
                                 devices=devices, limit=current - 1)
      if fit.size:
        return fixed + planner.size_flags(field, fit.size, config), fit.plan, "fewer samples per step: the effective batch changes"
      fixed = fixed + planner.size_flags(field, 1, config)
  return None


def out_of_memory_error(config, workdir, error: BaseException, *, devices=None) -> OutOfMemoryError:
  """The error to raise for an XLA RESOURCE_EXHAUSTED step: plan, budget and the suggested change."""
  first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
  saved = latest_checkpoint(pathlib.Path(workdir) / "checkpoints")
  kept = (f"the last good checkpoint {saved} is kept" if saved else "no checkpoint had been written yet")
  limit = device_memory_bytes()
  lines = [f"[vqax] out of device memory ({first_line})"]
  try:
    current = planner.plan(config, "current config", devices=devices)
    # If the plan fits on paper, the rest of the device was in use: ask for a clearly smaller peak.
    budget = int(min(HEADROOM * limit, HEADROOM * current.peak))
    lines += [f"Memory plan per device (compiled for {current.device}):",
              planner.format_plans({"current config": current}),
              f"Device memory {planner.format_bytes(limit)}; planning for {planner.format_bytes(budget)} "
              f"({HEADROOM:.0%} of the smaller of device memory and the current peak)."]
    change = smallest_fitting_change(config, budget, devices=devices)
  except Exception as planning_error:  # never hide the out-of-memory behind a planner failure
    lines.append(f"(the memory planner failed: {type(planning_error).__name__}: {planning_error})")
    change = None
  if change:
    flags, fitted, keeps = change
    # Precision and remat leave the train state as it is; a new batch or accumulation changes the optimizer
    # state and the epoch length, which this run's checkpoints cannot resume into.
    resumable = all(f in RESUMABLE_FLAGS for f in flags)
    advice = (f"smallest change that fits: {' '.join(flags)} (compiled peak {planner.format_bytes(fitted.peak)}; "
              f"{keeps}); " + ("rerun the same command with it to resume" if resumable else
                               "start a new --workdir with it (this run's checkpoints cannot resume with it)"))
  else:
    advice = "no change the planner knows fits this device; see `vqax plan --budget` for the options"
  lines.append(advice[0].upper() + advice[1:])
  report = "\n".join(lines)
  return OutOfMemoryError(f"a train step ran out of device memory (XLA RESOURCE_EXHAUSTED); training stopped "
                          f"and {kept}. {advice[0].upper() + advice[1:]}", report)


def latest_checkpoint(directory: pathlib.Path) -> pathlib.Path | None:
  """The newest finished step folder (orbax renames a step's folder only when it is complete)."""
  if not directory.is_dir():
    return None
  steps = [p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
  return max(steps, key=lambda p: int(p.name), default=None)


def handle_out_of_memory(config, workdir, error: BaseException) -> OutOfMemoryError:
  """The trainer's `on_out_of_memory`: print the plan report (process 0) and return the error to raise."""
  oom = out_of_memory_error(config, workdir, error)
  if jax.process_index() == 0:
    print(oom.report, file=sys.stderr, flush=True)
  return oom
