"""Memory planner: the compiled peak of the real train step, known before anything runs.

The planner builds the same `Trainer` that training builds (the task's program for its `planning_info()`)
and lowers the same `compile_train_step(phase)` from shapes alone (state by `jax.eval_shape`, batch from
the program's `batch_spec`), so XLA reports the memory of the program training would run, on the backend at
hand (the CPU here; the GPU/TPU where there is one) or for the devices passed in, such as the compile-only
devices of a GPU that is not here (`targets.py`, `vqax plan --target`). No data is read and nothing runs.

Per device:  compiled peak = argument + output + temp - alias bytes (`Compiled.memory_analysis()`).
Arguments split into parameters, model state, optimizer state, gradient accumulator (optax.MultiSteps'
acc_grads) and batch by summing each abstract leaf's shard under its sharding; temp holds the activations
and other temporaries of forward and backward; alias is the donated state that the outputs reuse.

Variants are command-line flags (`--use_amp`, `--memory_saver`, ...) applied to the config with the same
`apply_overrides` as `vqax train`, so a printed command line runs exactly what was planned.
"""
import copy
import dataclasses
import math
from typing import Callable

import jax
import numpy as np
import optax

from vqax import config_loading, tasks
from vqax.errors import ConfigError
from vqax.models.precision import memory_settings
from vqax.models.remat import DEFAULT_REMAT_POLICY
from vqax.train import sharding as sharding_lib
from vqax.train import trainer as trainer_lib

GiB = 2**30
# The accumulation variant splits each step's batch into up to this many micro-batches.
ACCUMULATION_FACTOR = 4
# Budget searches stop here: past it the answer is "more than you will want".
MAX_SEARCH_SIZE = 1 << 16
VARIANTS = ("plain", "bf16", "remat", "bf16+remat", "accumulation")


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per device of one compiled train step; `peak` = argument + output + temp - alias."""
  variant: str
  flags: tuple[str, ...]  # what turns the base config into this one, as `vqax train` options
  batch_size: int  # per device and micro-step
  sizes: tuple[tuple[str, int], ...]  # the task's fit fields and their values, e.g. (("batch_size", 16), ...)
  accumulation_steps: int
  compute_dtype: str
  remat_policy: str
  params: int
  model_state: int
  optimizer_state: int
  accumulator: int
  batch: int
  argument: int
  output: int
  temp: int
  alias: int
  generated_code: int
  device: str
  n_devices: int
  phase: str = "full"  # the training phase whose step was compiled (`planning_phase`)

  @property
  def peak(self) -> int:
    return self.argument + self.output + self.temp - self.alias

  def to_dict(self) -> dict:
    return dict(dataclasses.asdict(self), peak=self.peak)


# ----------------------------------------------------------------------------------------------------------
# Variants as flags
# ----------------------------------------------------------------------------------------------------------

def variant_flags(config, variant: str) -> list[str]:
  """`vqax train` options that turn `config` into `variant` (only those that change something).

  plain / bf16 / remat / bf16+remat set the compute dtype and remat (the config's own policy when it names
  one, else the default); accumulation is plain with each step's batch split into k micro-batches
  (batch_size / k per micro-step, k times the accumulation steps): the same effective batch.
  """
  if variant not in VARIANTS:
    raise ConfigError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
  saver = bool(config.get("memory_saver", False))
  if variant == "bf16+remat" and (saver or config.remat_policy in ("none", DEFAULT_REMAT_POLICY)):
    return [] if saver else ["--memory_saver"]
  bf16, remat = variant in ("bf16", "bf16+remat"), variant in ("remat", "bf16+remat")
  flags = ["--memory_saver=false"] if saver else []
  if bf16 != (config.compute_dtype == "bfloat16"):
    flags.append("--use_amp" if bf16 else "--use_amp=false")
  if remat != (config.remat_policy != "none"):
    flags.append("--use_gradient_checkpointing" if remat else "--use_gradient_checkpointing=false")
  if variant == "accumulation":
    k = accumulation_factor(int(config.batch_size))
    flags += ["--batch_size", str(int(config.batch_size) // k),
              "--gradient_accumulation_steps", str(int(config.gradient_accumulation_steps) * k)]
  return flags


def accumulation_factor(batch_size: int) -> int:
  """The largest k <= ACCUMULATION_FACTOR dividing batch_size (1 when the batch cannot be split)."""
  return max(k for k in range(1, ACCUMULATION_FACTOR + 1) if batch_size % k == 0)


def with_flags(config, flags):
  """A copy of `config` with `vqax train` options applied (the training CLI's own parser)."""
  return tasks.apply_overrides(copy.deepcopy(config), list(flags))


def fit_fields(config) -> tuple[str, ...]:
  """What `--fit` may search for this config's task (batch_size first)."""
  return tuple(tasks.task_class(config.task).fit_fields)


def size_flags(field: str, size: int, config) -> list[str]:
  fields = fit_fields(config)
  if field not in fields:
    raise ConfigError(f"--fit {field}: expected one of {', '.join(fields)} for task {config.task!r}")
  return [tasks.flag_for(config, field), str(int(size))]


# ----------------------------------------------------------------------------------------------------------
# Compiling from shapes
# ----------------------------------------------------------------------------------------------------------

def planning_phase(phases):
  """The phase whose step is planned: "full" (everything trains: the most memory) or else the last."""
  return next((p for p in phases if p.name == "full"), phases[-1])


def abstract_inputs(trainer):
  """ShapeDtypeStructs (with shardings) of the step's arguments: train state and one global batch."""
  batch_spec = trainer.batch_spec()
  state = trainer.abstract_state()
  batch = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=trainer.batch_sharding),
                       batch_spec)
  return state, batch


def lower_train_step(config, *, task=None, devices=None):
  """(trainer, lowered step, abstract state, abstract batch): training's own jit, lowered from shapes."""
  task = task or tasks.create(config)
  mesh = sharding_lib.make_mesh(devices)
  trainer = trainer_lib.make_trainer(config, task, task.planning_info(), mesh=mesh)
  state, batch = abstract_inputs(trainer)
  lowered = trainer.compile_train_step(planning_phase(trainer.phases)).lower(state, batch)
  return trainer, lowered, state, batch


def compiler_options(device) -> dict:
  """XLA:CPU's LLVM optimisations take half of a compile and change no buffer: plans skip them.

  A GPU that is not here (a compile-only device of `vqax plan --target`) cannot run CUB's radix sort, which
  XLA picks for large sorts (e.g. `random.choice` without replacement over every latent) and which needs the
  CUDA runtime at compile time; XLA's own sort takes its place (the same figures where both compile). Nor
  can it autotune, and without autotuning XLA 0.10.2's Triton GEMM fusions fail on some of ReDimNet's
  attention matmuls ("Couldn't find output tile sizes"): those compiles use cuBLAS GEMMs instead (whose
  workspace, like cuDNN's, is not in the figure). Other backends keep their defaults.
  """
  if device.platform == "cpu":
    return {"xla_backend_optimization_level": 0}
  if device.platform == "gpu" and compile_only(device):
    return {"xla_gpu_enable_cub_radix_sort": False, "xla_gpu_enable_triton_gemm": False}
  return {}


def compile_only(device) -> bool:
  """Whether `device` is a compile-only one (a target's description, not a device on this machine)."""
  return type(getattr(device, "client", None)).__name__ == "CompileOnlyPyClient"


def plan(config, variant: str = "config", flags=(), *, devices=None) -> MemoryPlan:
  """Compile `config`'s train step ahead of time and break its per-device memory down."""
  trainer, lowered, state, batch = lower_train_step(config, devices=devices)
  device = trainer.mesh.devices.flat[0]
  analysis = lowered.compile(compiler_options(device)).memory_analysis()
  optimizer_state, accumulator = _split_optimizer_state(state.opt_state)
  memory = memory_settings(config)
  return MemoryPlan(
      variant=variant, flags=tuple(flags), batch_size=int(config.batch_size),
      sizes=tuple((field, int(config[field])) for field in fit_fields(config)),
      accumulation_steps=int(config.gradient_accumulation_steps),
      compute_dtype=memory.compute_dtype, remat_policy=memory.remat_policy,
      params=device_bytes(state.params), model_state=device_bytes(state.model_state),
      optimizer_state=device_bytes(optimizer_state), accumulator=device_bytes(accumulator),
      batch=device_bytes(batch), argument=int(analysis.argument_size_in_bytes),
      output=int(analysis.output_size_in_bytes), temp=int(analysis.temp_size_in_bytes),
      alias=int(analysis.alias_size_in_bytes), generated_code=int(analysis.generated_code_size_in_bytes),
      device=_describe(device),
      n_devices=int(trainer.mesh.size), phase=planning_phase(trainer.phases).name)


def _describe(device) -> str:
  kind = str(getattr(device, "device_kind", device.platform))
  return device.platform if kind.lower() == device.platform else f"{device.platform} ({kind})"


def plan_variants(config, variants=VARIANTS, *, include_config: bool = True, devices=None) -> dict[str, MemoryPlan]:
  """Plans for `config` itself ("config") and for each variant of it; identical configs compile once."""
  todo = {"config": []} if include_config else {}
  todo.update({name: variant_flags(config, name) for name in variants})
  plans, compiled = {}, {}
  for name, flags in todo.items():
    variant = with_flags(config, flags)
    key = config_loading.config_to_json(variant)
    if key not in compiled:
      compiled[key] = plan(variant, name, flags, devices=devices)
    plans[name] = dataclasses.replace(compiled[key], variant=name, flags=tuple(flags))
  return plans


def device_bytes(tree) -> int:
  """Bytes one device holds of an abstract tree: each leaf's shard shape under its sharding."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.shape
    sharding = getattr(leaf, "sharding", None)
    if sharding is not None:
      shape = sharding.shard_shape(shape)
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def _split_optimizer_state(opt_state):
  """(optimizer state without accumulators, MultiSteps' acc_grads); no accumulator without MultiSteps.
  MultiSteps states are found anywhere in the tree (a task with several optimizers keeps a dict of them)."""
  is_multi = lambda node: isinstance(node, optax.MultiStepsState)
  rest = jax.tree.map(lambda node: node._replace(acc_grads=()) if is_multi(node) else node, opt_state,
                      is_leaf=is_multi)
  return rest, [node.acc_grads for node in jax.tree.leaves(opt_state, is_leaf=is_multi) if is_multi(node)]


# ----------------------------------------------------------------------------------------------------------
# Budget search
# ----------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Fit:
  """The largest size within a budget and the plans that prove it (size None: even 1 is over)."""
  field: str
  budget: int
  size: int | None
  plan: MemoryPlan | None  # compiled at `size`
  next_plan: MemoryPlan | None  # compiled at size + 1 (or 1), over the budget; None when the cap was hit
  compiles: int  # compiles this budget added


def largest_fitting(peak_of: Callable[[int], int], budget: int, *, limit: int = MAX_SEARCH_SIZE,
                    peaks: dict[int, int] | None = None) -> int | None:
  """Largest n in [1, limit] with peak_of(n) <= budget, the peak growing with n; None when 1 is over.

  Peaks grow almost linearly with the batch, so each probe aims where the line through the two nearest
  known points meets the budget: usually two or three compiles. A probe that makes poor progress (a
  bracket shrinking by less than half, an open bracket's lower end less than doubling) is followed by a
  bisection or doubling step, so the count stays logarithmic when the line misleads. `peaks` ({n: peak},
  filled in) lets searches for several budgets share compiles. Below `limit` the answer comes with its
  proof: n was compiled and fits, n + 1 was compiled and does not.
  """
  peaks = {} if peaks is None else peaks

  def fits(n):
    if n not in peaks:
      peaks[n] = int(peak_of(n))
    return peaks[n] <= budget

  hi = min((n for n in peaks if peaks[n] > budget), default=None)  # smallest known size over the budget
  lo = max((n for n in peaks if peaks[n] <= budget and (hi is None or n < hi)), default=None)
  if lo is None:
    if hi == 1 or not fits(1):
      return None
    lo = 1
  safe_step = False
  while hi is None or hi - lo > 1:
    if hi is None and lo >= limit:
      return lo
    aim = _aim(peaks, budget, lo, hi)
    if hi is None:
      probe = min(2 * lo if safe_step or aim is None else max(aim, lo + 1), limit)
    else:
      probe = (lo + hi) // 2 if safe_step or aim is None else min(max(aim, lo + 1), hi - 1)
    old_lo, old_width = lo, None if hi is None else hi - lo
    if fits(probe):
      lo = probe
    else:
      hi = probe
    if safe_step:
      safe_step = False
    elif old_width is None:
      safe_step = hi is None and lo < 2 * old_lo
    else:
      safe_step = (hi - lo) * 2 > old_width
  return lo


def _aim(peaks, budget, lo, hi):
  """Where the line through the two known points nearest the budget crosses it (None without a slope)."""
  if hi is not None:
    a, b = lo, hi
  else:
    below = sorted(n for n in peaks if n < lo)
    if not below:
      return None
    a, b = below[-1], lo
  if peaks[b] <= peaks[a]:
    return None
  return int(math.floor(a + (budget - peaks[a]) * (b - a) / (peaks[b] - peaks[a])))


def fit_budgets(config, budgets, *, field: str = "batch_size", variant: str = "config", flags=(), devices=None,
                limit: int = MAX_SEARCH_SIZE, known: MemoryPlan | None = None) -> list[Fit]:
  """For each budget (bytes per device), the largest `field` (one of the task's fit fields) within it.

  The searches for several budgets share their compiles; `known`, a plan of `config` itself, saves one.
  """
  plans, peaks = {}, {}
  if known is not None:
    plans[int(config[field])] = known
    peaks[int(config[field])] = known.peak

  def peak_of(n):
    size = size_flags(field, n, config)
    plans[n] = plan(with_flags(config, size), variant, tuple(flags) + tuple(size), devices=devices)
    return plans[n].peak

  fits = []
  for budget in budgets:
    before = len(plans)
    size = largest_fitting(peak_of, int(budget), limit=limit, peaks=peaks)
    fits.append(Fit(field, int(budget), size, plans.get(size), plans.get(size + 1 if size else 1),
                    len(plans) - before))
  return fits


# ----------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------

ROWS = (("parameters", "params"), ("model state", "model_state"), ("optimizer state", "optimizer_state"),
        ("gradient accumulator", "accumulator"), ("batch", "batch"), ("temporaries (activations)", "temp"),
        ("arguments", "argument"), ("outputs", "output"), ("aliased (donated state)", "alias"),
        ("compiled peak", "peak"))


def format_bytes(n: int | None) -> str:
  if n is None:
    return "-"
  for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n} B"


def format_table(rows: list[list[str]]) -> str:
  """Left-aligned first column, right-aligned others, a rule under the header row."""
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

  def line(r):
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
  return "\n".join([line(rows[0]), line(["-" * w for w in widths])] + [line(r) for r in rows[1:]])


def format_plans(plans: dict[str, MemoryPlan], memory: int | None = None) -> str:
  """Side-by-side table, one column per plan, bytes per device (and the peak's share of `memory`, if given)."""
  ps = list(plans.values())
  rows = [["per device"] + list(plans),
          ["compute, remat"] + [f"{p.compute_dtype}, {p.remat_policy}" for p in ps],
          [" x ".join(name for name, _ in ps[0].sizes) + " x accum."] +
          [" x ".join(str(v) for _, v in p.sizes) + f" x {p.accumulation_steps}" for p in ps]]
  for label, attr in ROWS:
    values = [getattr(p, attr) for p in ps]
    if attr in ("model_state", "accumulator") and not any(values):
      continue
    rows.append([label] + [format_bytes(v) for v in values])
  if memory:
    rows.append([f"of {format_bytes(memory)}"] + [f"{100 * p.peak / memory:.1f}%" for p in ps])
  base = plans.get("plain")
  if base is not None:
    rows.append(["vs plain"] + [f"{100 * (p.peak / base.peak - 1):+.0f}%" for p in ps])
  return format_table(rows)


def parse_bytes(text: str) -> int:
  """'8GiB', '512MiB', '8G', '1.5GB' or a byte count -> bytes (binary units throughout)."""
  units = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
           "g": GiB, "gb": GiB, "gib": GiB, "t": 2**40, "tb": 2**40, "tib": 2**40}
  stripped = str(text).strip().lower().replace(" ", "")
  number = stripped.rstrip("kmgtib")
  unit = stripped[len(number):]
  try:
    value = float(number)
  except ValueError:
    value = -1.0
  if unit not in units or not value > 0:
    raise ConfigError(f"--budget {text}: expected a size like 8GiB, 512MiB or 1.5G")
  return int(value * units[unit])
