"""Train state: everything a step reads and writes, and everything a checkpoint holds (with the data
iterator). A plain pytree so that orbax saves it and jit shards it."""
from typing import Any

import flax.struct
import jax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # micro-steps taken (int32)
  params: PyTree  # float32 master weights
  model_state: PyTree  # non-trained collections, e.g. {"batch_stats": ...}; {} when none
  opt_state: PyTree
  rng: jax.Array  # base key (raw uint32[2]); each step folds in its step number
  nonfinite_steps: jax.Array  # updates skipped because loss or gradients were not finite
