"""tools/profile_step.py's FLOP count per op, read from XLA:CPU's optimized HLO.

The count is what tells a traced op that only shows its launch (work on Eigen's thread pool) from one
that really ran that fast, so it must match the arithmetic of the ops XLA actually emitted.
"""

import jax
import jax.numpy as jnp
from jax import lax

from tools import profile_step


def _largest_op_flops(fn, *args) -> int:
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  return max(profile_step.op_flops(hlo).values())


def test_dot_flops():
  a, b = jnp.ones((96, 40)), jnp.ones((40, 24))
  assert _largest_op_flops(lambda a, b: jax.nn.relu(a @ b), a, b) == 2 * 96 * 24 * 40


def test_batched_dot_flops():
  a, b = jnp.ones((3, 50, 20)), jnp.ones((3, 20, 30))
  assert _largest_op_flops(lambda a, b: jnp.einsum("bik,bkj->bij", a, b), a, b) == 2 * 3 * 50 * 30 * 20


def test_convolution_flops_dense_and_grouped():
  x = jnp.ones((2, 12, 10, 8))

  def conv(x, w, groups):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=groups)

  dense = jnp.ones((3, 3, 8, 16))
  assert _largest_op_flops(lambda x, w: conv(x, w, 1), x, dense) == 2 * (2 * 12 * 10 * 16) * 3 * 3 * 8
  grouped = jnp.ones((3, 3, 2, 16))
  assert _largest_op_flops(lambda x, w: conv(x, w, 4), x, grouped) == 2 * (2 * 12 * 10 * 16) * 3 * 3 * 2


def test_untimed_ops_are_those_faster_than_the_machine():
  by_op = {"dot.1": 0.1, "dot.2": 10.0, "add.3": 0.5}
  step_flops = {"dot.1": 18e9, "dot.2": 1e9, "add.3": 0}
  assert profile_step.untimed_ops(by_op, step_flops, max_gflops=1000) == {"dot.1"}
