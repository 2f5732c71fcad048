"""Remat (activation checkpointing) policies by name.

Models take a `remat_policy` string and wrap each block with `flax.linen.remat(Block, policy=...)`; this is
the one place that maps names to `jax.checkpoint_policies`.
"""
from typing import Callable

import flax.linen as nn
import jax

from vqax.errors import ConfigError

# "none" means no remat at all; every other name wraps blocks with nn.remat and that policy.
_POLICIES: dict[str, Callable | None] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}
REMAT_POLICIES = ("none",) + tuple(_POLICIES)
DEFAULT_REMAT_POLICY = "full"  # what --use_gradient_checkpointing selects


def policy_for(name: str):
  """The jax.checkpoint policy for `name`; raises ConfigError naming the valid choices."""
  if name not in _POLICIES:
    raise ConfigError(f"remat_policy={name!r} is not one of {', '.join(REMAT_POLICIES)}")
  return _POLICIES[name]


def maybe_remat(module_cls, policy_name: str, static_argnums=()):
  """`module_cls` wrapped in nn.remat with the named policy, or unchanged for "none"."""
  if policy_name in (None, "none"):
    return module_cls
  return nn.remat(module_cls, policy=policy_for(policy_name), static_argnums=static_argnums)
