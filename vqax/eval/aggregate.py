"""Patch (or frame) scores -> one clip score.

A fault may sound in a few seconds of a 10 s clip; the mean over all patches dilutes it with the normal
rest, the maximum keeps it but also keeps the noisiest normal patch. "topk" averages the highest
`topk_fraction` of the scores, between the two.
"""
import numpy as np

from vqax.errors import ConfigError

AGGREGATES = ("mean", "max", "topk")


def check_aggregate(how: str, topk_fraction: float = 0.25) -> None:
  if how not in AGGREGATES:
    raise ConfigError(f"score.aggregate={how!r}: expected one of {', '.join(AGGREGATES)}")
  if not 0.0 < float(topk_fraction) <= 1.0:
    raise ConfigError(f"score.topk_fraction={topk_fraction}: expected a fraction in (0, 1]")


def aggregate(scores, how: str = "mean", topk_fraction: float = 0.25) -> float:
  """One clip score from its unit scores (all units of one clip)."""
  check_aggregate(how, topk_fraction)
  values = np.asarray(scores, np.float64).ravel()
  if how == "mean":
    return float(values.mean())
  if how == "max":
    return float(values.max())
  count = max(1, int(np.ceil(float(topk_fraction) * values.size)))
  return float(np.mean(np.partition(values, values.size - count)[values.size - count:]))


__all__ = ["AGGREGATES", "aggregate", "check_aggregate"]
