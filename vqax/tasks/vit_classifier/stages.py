"""Unfreezing stages as trainer phases, with one optimizer state per group of newly unfrozen units.

The trainer keeps one `TrainState` whose shape is fixed for the whole run (one abstract state for
checkpoints and shardings). So the optimizer state is split by *group*: group k holds the units the
schedule unfreezes at stage k (never-unfrozen units belong to no group and have no optimizer state at all).
The step of stage k differentiates only the units of groups 0..k (`Partition`: frozen layers get no
gradient buffer and keep no residuals), clips their gradients jointly, and updates each group with its own
optimizer state. Groups > k are not touched: their state stays the fresh `init` until their stage starts,
so a newly unfrozen group begins with zero moments and its own bias-correction count -- what re-creating
the optimizer at the boundary (the seed's recompile) gives. The cost of the fixed shape: from the first step
the state of every group the schedule will ever unfreeze is allocated (the last stage's optimizer state),
which is also the run's peak, reached in the last stage anyway.
"""
import dataclasses

import jax
import numpy as np

from vqax.errors import ConfigError
from vqax.models.vit import ViT
from vqax.models.vit_unfreeze import SINGLE_UNITS, Partition, normalize_schedule


@dataclasses.dataclass(frozen=True)
class Stage:
  index: int
  start_epoch: int
  partition: Partition  # every unit trainable in this stage
  group: Partition  # the units this stage adds (its own optimizer state)

  @property
  def name(self) -> str:
    return f"stage{self.index}"


def schedule_dict(schedule) -> dict:
  """A config's schedule (ConfigDict or dict, string keys) as a plain dict."""
  return schedule.to_dict() if hasattr(schedule, "to_dict") else dict(schedule)


def build_stages(model: ViT, schedule, epochs: int, last_stage: int = -1) -> tuple[Stage, ...]:
  """The schedule's stages that start before `epochs` (and up to `last_stage` unless -1). A stage that adds
  no unit merges into the one before. ConfigError for a schedule naming a layer the model does not have."""
  normalized = normalize_schedule(schedule_dict(schedule), model.num_layers)
  stages, trained = [], frozenset()
  for start, units in normalized.items():
    if start >= epochs and stages:
      break
    if last_stage >= 0 and len(stages) > last_stage:
      break
    new = units - trained
    if not new:
      continue
    trained = trained | new
    stages.append(Stage(len(stages), start, Partition(trained, model.num_layers), Partition(new, model.num_layers)))
  return tuple(stages)


def check_last_stage(schedule, num_layers: int, last_stage: int) -> None:
  count = len(normalize_schedule(schedule_dict(schedule), num_layers))
  if last_stage < -1 or last_stage >= count:
    raise ConfigError(f"last_stage={last_stage}: expected -1 (every stage) or a stage index below {count}")


def take_group(tree: dict, source: Partition, group: Partition) -> dict:
  """The part of `tree` (laid out as `source.split(...)[0]`) that belongs to `group` (units within source)."""
  out = {name: tree[name] for name in SINGLE_UNITS if name in group.units}
  if group.trainable_layers:
    rows = np.asarray([source.trainable_layers.index(i) for i in group.trainable_layers])
    out["layers"] = jax.tree.map(lambda a: a if len(rows) == a.shape[0] else a[rows], tree["layers"])
  return out


def put_group(params: dict, group: Partition, values: dict) -> dict:
  """The full params tree with `group`'s units replaced by `values` (laid out as `group.split(...)[0]`)."""
  out = dict(params)
  for name in SINGLE_UNITS:
    if name in group.units:
      out[name] = values[name]
  if group.trainable_layers:
    rows = np.asarray(group.trainable_layers)
    layers = params["encoder"]["layers"]
    if len(rows) == group.num_layers:
      out["encoder"] = {"layers": values["layers"]}
    else:
      out["encoder"] = {"layers": jax.tree.map(lambda a, v: a.at[rows].set(v), layers, values["layers"])}
  return out
