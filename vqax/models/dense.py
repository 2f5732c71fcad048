"""A Dense layer's matmul over leading dimensions flattened into one (a drop-in for lax.dot_general).

flax's nn.Dense contracts the last axis of x [B, F, T, C] with the kernel directly. Its kernel gradient then
contracts the three leading axes of x and dy, and XLA:CPU writes one of them out transposed first: for a
ReDimNet-b0 1x1 convolution over [32, 30, 134, 60] maps the kernel gradient takes 46 ms that way and 29 ms
from [128640, 60] matrices (one transpose of a 31 MB map saved, times the 40 pointwise layers of a step).
Flattening is a free reshape of row-major arrays, and the products and sums are the same. Only XLA:CPU
gets it: a TPU tiles the two minor axes, where merging T into the rows can cost a relayout.

Use it through `nn.Dense(..., dot_general=dense_dot_general)`; parameters are unchanged.
"""
import jax


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
  """lax.dot_general, with x[..., C] @ W[C, D] computed as a 2-D matmul on XLA:CPU."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  dense = (lhs.ndim > 2 and rhs.ndim == 2 and tuple(lhs_contract) == (lhs.ndim - 1,) and
           tuple(rhs_contract) == (0,) and not lhs_batch and not rhs_batch)
  if not dense or jax.default_backend() != "cpu":
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)
  out = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs, (((1,), (0,)), ((), ())), precision=precision,
                            preferred_element_type=preferred_element_type, **kwargs)
  return out.reshape(lhs.shape[:-1] + rhs.shape[1:])
