"""Matmuls that steer XLA:CPU: a Dense layer over flattened leading axes, and a matmul that keeps a value.

`dense_dot_general` is a drop-in for lax.dot_general in `nn.Dense(..., dot_general=...)`. flax's nn.Dense
contracts the last axis of x [B, F, T, C] with the kernel directly. Its kernel gradient then contracts
the three leading axes of x and dy, and XLA:CPU writes one of them out transposed first: for a
ReDimNet-b0 1x1 convolution over [32, 30, 134, 60] maps the kernel gradient takes 46 ms that way and
29 ms from [128640, 60] matrices (one transpose of a 31 MB map saved, times the 40 pointwise layers of a
step). Flattening is a free reshape of row-major arrays; the products, sums and parameters are the same.

`materialized` makes XLA:CPU compute a value once instead of inside each consumer.

Both act on XLA:CPU only, where they were measured; on GPU/TPU the layers stay plain (a TPU tiles the two
minor axes, where merging T into the rows can cost a relayout).
"""
import math

import jax

from vqax.ops import forms


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
  """lax.dot_general, with x[..., C...] @ W[C..., D...] computed as a 2-D matmul on XLA:CPU.

  The contracted axes are x's last k and W's first k (nn.Dense: k = 1; nn.DenseGeneral, e.g. attention's
  [d, heads, head_dim] projections and their [heads, head_dim, d] output, too).
  """
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  k = len(lhs_contract)
  dense = (lhs.ndim > 2 and tuple(lhs_contract) == tuple(range(lhs.ndim - k, lhs.ndim)) and
           tuple(rhs_contract) == tuple(range(k)) and not lhs_batch and not rhs_batch)
  if not dense or not forms.cpu_forms():
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)
  contracted = math.prod(lhs.shape[lhs.ndim - k:])
  out = jax.lax.dot_general(lhs.reshape(-1, contracted), rhs.reshape(contracted, -1), (((1,), (0,)), ((), ())),
                            precision=precision, preferred_element_type=preferred_element_type, **kwargs)
  return out.reshape(lhs.shape[:lhs.ndim - k] + rhs.shape[k:])


def materialized(x: jax.Array, enabled: bool = True) -> jax.Array:
  """x, computed once: on XLA:CPU as x @ I, which XLA cannot fuse into (and so recompute in) its consumers.

  XLA:CPU fuses a cheap elementwise producer into every consumer, however often the consumer reads it. A
  residual stream relu(bn(...) + x) is such a producer, and each depthwise convolution that reads it at nine
  shifted positions, forward and in its kernel gradient, recomputes the chain of earlier blocks nine times.
  A matmul's result is a buffer; an identity matmul adds exact zeros only, and its gradient (dy @ I) is
  computed once too. The identity is block-diagonal over channel blocks of up to 32 (a [32, 6, 134, 192]
  map: 2.5 ms in 32-blocks, 11 ms as one 192 x 192 matmul). Elsewhere x is returned unchanged.
  """
  if not enabled or not forms.cpu_forms():
    return x
  channels = x.shape[-1]
  block = math.gcd(channels, 32)
  block = channels if block < 8 else block
  blocks = x.reshape(x.shape[:-1] + (channels // block, block))
  eye = jax.numpy.eye(block, dtype=x.dtype)
  return jax.lax.dot_general(blocks, eye, (((x.ndim,), (0,)), ((), ()))).reshape(x.shape)
