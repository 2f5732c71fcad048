"""Remat (activation checkpointing) policies by name.

Models take a `remat_policy` string and wrap each block with `flax.linen.remat(Block, policy=...)`; this is
the one place that maps names to `jax.checkpoint_policies`. `grouped_remat` adds the coarser unit that
models of independent samples can use (the VQ-VAE's patches): the batch in groups, one group at a time.
"""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def grouped_remat(fn: Callable, module: nn.Module, x: jax.Array, groups: int, policy_name: str,
                  broadcast=("params",)) -> jax.Array:
  """`fn(module, x)` over `groups` slices of x's leading axis in turn, each slice rematerialised.

  Per-block remat cannot shrink a chain of single-conv blocks: the block boundaries it keeps are all the
  activations there are. Running independent samples a group at a time (a flax scan over groups with the
  parameters broadcast) keeps one group's activations alive in the backward pass, about 1/groups of them,
  for one extra forward. Only for modules without cross-sample state (no BatchNorm statistics).
  Group g takes samples g, g + groups, ...: strided, so a batch sharded over devices stays balanced. A
  batch that does not divide is padded with zeros (discarded after), so memory never jumps with its size.
  Parameter paths are those of `module`. `broadcast` names the variable collections every group reads
  unchanged (parameters; also e.g. spectral-norm statistics that the groups read but do not update).
  """
  n = x.shape[0]
  groups = min(int(groups), n)
  if policy_name in (None, "none") or groups <= 1:
    return fn(module, x)
  padded = -(-n // groups) * groups
  if padded != n:
    x = jnp.concatenate([x, jnp.zeros((padded - n, *x.shape[1:]), x.dtype)])
  body = nn.remat(lambda m, carry, xg: (carry, fn(m, xg)), policy=policy_for(policy_name), prevent_cse=False)
  scan = nn.scan(body, variable_broadcast=tuple(broadcast), split_rngs={"params": False}, length=groups)
  xs = x.reshape(padded // groups, groups, *x.shape[1:]).swapaxes(0, 1)
  _, ys = scan(module, (), xs)
  return ys.swapaxes(0, 1).reshape(padded, *ys.shape[2:])[:n]
