"""Staged fine-tuning of a ViT: an unfreezing schedule `{epoch: [layers]}` and the parameter partition that
makes frozen layers cost no gradient and no optimizer memory.

Units (bottom to top): "embeddings", "layer.0" ... "layer.{L-1}" (an int i, or -1 for the last, means
"layer.i"), "final_norm", "head"; "all" names every unit. The schedule is cumulative, as in the seed
notebook: at epoch e the trainable units are those listed under every key <= e.

Zeroing the updates of frozen weights (optax.masked / set_to_zero) still computes their gradients and
often keeps optimizer state for them. Here a stage's parameters are split into two trees: `trainable`
(the only argument the step differentiates and the only tree the optimizer state is built for) and
`frozen` (a constant of the step). Encoder layers are stacked on a leading axis by the model's
`nn.scan`; the split slices that axis, and `apply` runs the encoder segment by segment (each contiguous
run of trainable or frozen layers through its own scan), so frozen layers below every trainable one are
plain forward computation -- JAX keeps no residuals for them -- and no frozen layer gets a gradient buffer.

Wiring a stage into a step:
    partition = Partition.for_units(model, trainable_units(schedule, epoch, model.num_layers))
    trainable, frozen = partition.split(params)
    opt_state = tx.init(trainable)
    loss_fn = lambda t: loss(partition.apply(model, t, frozen, batch))   # grad w.r.t. t only
    params = partition.merge(trainable, frozen)   # for checkpoints, evaluation and the next stage
A Partition is hashable: one compiled step per stage.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vqax.errors import ConfigError
from vqax.models.vit import ViT, encoder_stack

_SINGLE_UNITS = ("embeddings", "final_norm", "head")
SINGLE_UNITS = _SINGLE_UNITS  # the units that are not encoder layers


def unit_names(num_layers: int) -> tuple[str, ...]:
  return ("embeddings", *(f"layer.{i}" for i in range(num_layers)), "final_norm", "head")


def _unit(name, num_layers: int) -> tuple[str, ...]:
  """One schedule entry -> the unit names it means; ConfigError naming it when it matches none."""
  index = None
  if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
    index = int(name)
  elif isinstance(name, str):
    if name == "all":
      return unit_names(num_layers)
    if name in _SINGLE_UNITS:
      return (name,)
    if name.startswith("layer.") and name[len("layer."):].lstrip("-").isdigit():
      index = int(name[len("layer."):])
  if index is not None and -num_layers <= index < num_layers:
    return (f"layer.{index % num_layers}",)
  raise ConfigError(f"unfreezing schedule names layer {name!r}, which does not exist; expected a layer "
                    f"index in [-{num_layers}, {num_layers}), 'layer.N', one of {', '.join(_SINGLE_UNITS)}, "
                    "or 'all'")


def normalize_schedule(schedule: dict, num_layers: int) -> dict[int, frozenset[str]]:
  """{epoch: [names]} (keys may be strings, as from a config file) -> {epoch: unit names}, validated.

  ConfigError for an unknown layer, a negative or non-integer epoch, or no entry at epoch 0 (the first
  epoch would train nothing).
  """
  if not schedule:
    raise ConfigError("unfreezing schedule is empty; expected {epoch: [layers]} with an entry for epoch 0")
  out: dict[int, frozenset[str]] = {}
  for key, names in schedule.items():
    try:
      epoch = int(key)
    except (TypeError, ValueError):
      raise ConfigError(f"unfreezing schedule key {key!r} is not an epoch number") from None
    if epoch < 0:
      raise ConfigError(f"unfreezing schedule key {key!r}: epochs start at 0")
    if isinstance(names, (str, int)):
      names = [names]
    out[epoch] = out.get(epoch, frozenset()) | frozenset(u for n in names for u in _unit(n, num_layers))
  if 0 not in out or not out[0]:
    raise ConfigError("unfreezing schedule has no layers at epoch 0; the first epoch would train nothing")
  return dict(sorted(out.items()))


def trainable_units(schedule: dict, epoch: int, num_layers: int) -> frozenset[str]:
  """Units that train at `epoch`: everything listed at or before it."""
  normalized = normalize_schedule(schedule, num_layers)
  return frozenset().union(*(units for start, units in normalized.items() if start <= epoch))


def stages(schedule: dict, num_layers: int) -> list[tuple[int, frozenset[str]]]:
  """[(first epoch, trainable units)] for each stage -- what the memory planner sizes one by one."""
  normalized = normalize_schedule(schedule, num_layers)
  return [(start, trainable_units(normalized, start, num_layers)) for start in normalized]


@dataclasses.dataclass(frozen=True)
class Partition:
  """Which parts of a ViT's params train in one stage (static and hashable)."""
  units: frozenset[str]
  num_layers: int

  @classmethod
  def for_units(cls, model: ViT, units) -> "Partition":
    units = frozenset(u for name in units for u in _unit(name, model.num_layers))
    return cls(units, model.num_layers)

  @property
  def trainable_layers(self) -> tuple[int, ...]:
    return tuple(i for i in range(self.num_layers) if f"layer.{i}" in self.units)

  @property
  def frozen_layers(self) -> tuple[int, ...]:
    return tuple(i for i in range(self.num_layers) if f"layer.{i}" not in self.units)

  def segments(self) -> list[tuple[bool, int, int]]:
    """Contiguous runs of encoder layers: (trainable, first, stop)."""
    runs: list[tuple[bool, int, int]] = []
    for i in range(self.num_layers):
      flag = f"layer.{i}" in self.units
      if runs and runs[-1][0] == flag:
        runs[-1] = (flag, runs[-1][1], i + 1)
      else:
        runs.append((flag, i, i + 1))
    return runs

  def split(self, params: dict) -> tuple[dict, dict]:
    """params -> (trainable, frozen); encoder layer leaves are sliced on the layer axis."""
    trainable, frozen = {}, {}
    for name in _SINGLE_UNITS:
      (trainable if name in self.units else frozen)[name] = params[name]
    layers = params["encoder"]["layers"]
    for side, rows in ((trainable, self.trainable_layers), (frozen, self.frozen_layers)):
      if rows:
        side["layers"] = jax.tree.map(functools.partial(_take_rows, rows=np.asarray(rows)), layers)
    return trainable, frozen

  def merge(self, trainable: dict, frozen: dict) -> dict:
    """Inverse of `split`: the full params tree in the model's layout."""
    params = {name: (trainable if name in self.units else frozen)[name] for name in _SINGLE_UNITS}
    pieces = [self._segment_params(trainable, frozen, run) for run in self.segments()]
    params["encoder"] = {"layers": jax.tree.map(lambda *xs: _concat(xs), *pieces)}
    return params

  def _segment_params(self, trainable: dict, frozen: dict, run: tuple[bool, int, int]) -> dict:
    """Layer params of one run, sliced from the side that holds it (rows counted within that side)."""
    flag, start, stop = run
    rows = self.trainable_layers if flag else self.frozen_layers
    first = rows.index(start)
    source = (trainable if flag else frozen)["layers"]
    return jax.tree.map(lambda a: a[first:first + stop - start] if stop - start < a.shape[0] else a, source)

  def apply(self, model: ViT, trainable: dict, frozen: dict, x):
    """`model.apply` on the merged params, the encoder run segment by segment (see the module docstring).

    Frozen parameters pass through stop_gradient: differentiating w.r.t. `frozen` gives zeros by design.
    """
    frozen = jax.lax.stop_gradient(frozen)
    single = {name: (trainable if name in self.units else frozen)[name] for name in _SINGLE_UNITS}
    tokens = model.apply({"params": {"embeddings": single["embeddings"]}}, x, method=ViT.embed)
    for run in self.segments():
      segment = self._segment_params(trainable, frozen, run)
      tokens = encoder_stack(model, run[2] - run[1]).apply({"params": {"layers": segment}}, tokens)
    head_params = {"final_norm": single["final_norm"], "head": single["head"]}
    return model.apply({"params": head_params}, tokens, method=ViT.classify)


def _take_rows(a, rows):
  return a[rows] if len(rows) < a.shape[0] else a


def _concat(xs):
  return xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=0)
