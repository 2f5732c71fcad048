"""Checks shared by the converters of official weights (ReDimNet, DreaMS, ...)."""
import jax

from vqax.errors import CheckpointError


def check_converted_tree(variables: dict, abstract: dict) -> None:
  """Every Flax leaf filled, nothing extra, shapes as `init` makes them; CheckpointError naming the first
  leaf that is not."""
  got = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(variables)}
  want = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(abstract)}
  for name in sorted(set(want) | set(got)):
    if name not in got:
      raise CheckpointError(f"Flax variable {name} was not filled by any state_dict key")
    if name not in want:
      raise CheckpointError(f"converted variable {name} does not exist in the Flax model")
    if tuple(got[name]) != tuple(want[name]):
      raise CheckpointError(f"Flax variable {name} got shape {tuple(got[name])}, expected {tuple(want[name])}")
