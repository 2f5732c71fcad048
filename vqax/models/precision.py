"""The memory switches a config resolves to: compute dtype, remat policy and remat groups.

`memory_saver` is the seed scripts' one-flag promise: bfloat16 compute plus per-block remat. Parameters and
optimizer state stay float32 whatever the compute dtype (master weights). `remat_groups` only acts with
remat on, in models whose samples are independent (see `remat.grouped_remat`).
"""
import dataclasses

import jax.numpy as jnp

from vqax.errors import ConfigError
from vqax.models.remat import DEFAULT_REMAT_POLICY, REMAT_POLICIES

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class MemorySettings:
  compute_dtype: str
  remat_policy: str
  remat_groups: int = 1  # 1 whenever remat_policy is "none"

  @property
  def dtype(self):
    return COMPUTE_DTYPES[self.compute_dtype]


def memory_settings(config) -> MemorySettings:
  compute_dtype = config.compute_dtype
  remat_policy = config.remat_policy
  if compute_dtype not in COMPUTE_DTYPES:
    raise ConfigError(f"compute_dtype={compute_dtype!r}: expected one of {', '.join(COMPUTE_DTYPES)}")
  if remat_policy not in REMAT_POLICIES:
    raise ConfigError(f"remat_policy={remat_policy!r}: expected one of {', '.join(REMAT_POLICIES)}")
  remat_groups = int(config.get("remat_groups", 1))
  if remat_groups < 1:
    raise ConfigError(f"remat_groups={remat_groups}: expected an integer >= 1")
  if config.get("memory_saver", False):
    compute_dtype = "bfloat16"
    remat_policy = DEFAULT_REMAT_POLICY if remat_policy == "none" else remat_policy
  return MemorySettings(compute_dtype, remat_policy, remat_groups if remat_policy != "none" else 1)
