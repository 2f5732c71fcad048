"""Convolution whose kernel gradient is a sum of matrix products (a drop-in for lax.conv_general_dilated).

Autodiff turns the kernel gradient of a convolution into another convolution whose window is the whole
output map (batch and channels swapped). XLA:CPU runs those far below its matmul speed: for the VQ-VAE's
decoder (64 patches, a 2x2 kernel over a 33x33 map, 64 -> 128 channels) 19.7 s against 0.28 s for the same
sums as four matmuls. Here the forward pass and the input gradient stay XLA's own convolutions; the kernel
gradient is one matmul per kernel tap, dW[tap] = shifted(x)^T @ dy, contracting batch and positions.
The sums are the same, only their order differs (float32 rounding).

Use it through `nn.Conv(..., conv_general_dilated=conv_general_dilated)`: the parameters are unchanged.
Cases the matmul form does not cover (dilations, batch groups, channels-first layouts) fall back to XLA.
"""
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

WEIGHT_GRAD_IMPLS = ("matmul", "xla")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """lax.conv_general_dilated with a matmul kernel gradient for channels-last, undilated convolutions."""
  nd = lhs.ndim - 2
  plain = functools.partial(jax.lax.conv_general_dilated, lhs, rhs, window_strides, padding,
                            lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                            batch_group_count=batch_group_count, precision=precision,
                            preferred_element_type=preferred_element_type)
  channels_last = _channels_last(nd)
  dilated = any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
  if dilated or batch_group_count != 1 or preferred_element_type is not None or \
      _normalize_dims(dimension_numbers, nd) != channels_last:
    return plain()
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], window_strides, padding)
  return conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), feature_group_count, precision)


def _channels_last(nd: int):
  spatial = "HWD"[:nd] if nd <= 3 else None
  return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


def _normalize_dims(dimension_numbers, nd: int):
  if dimension_numbers is None:
    return None  # lax's default is channels-first
  if isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers):
    channels_last = jax.lax.conv_dimension_numbers((1,) * (nd + 2), (1,) * (nd + 2), _channels_last(nd))
    return _channels_last(nd) if dimension_numbers == channels_last else None
  return tuple(dimension_numbers)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding, groups: int = 1, precision=None):
  """Channels-last convolution (x [N, *spatial, Cin], kernel [*k, Cin/groups, Cout]); matmul kernel grad."""
  return _xla_conv(x, kernel, strides, padding, groups, precision)


def _xla_conv(x, kernel, strides, padding, groups, precision):
  nd = x.ndim - 2
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_channels_last(nd),
                                      feature_group_count=groups, precision=precision)


def _conv_fwd(x, kernel, strides, padding, groups, precision):
  return _xla_conv(x, kernel, strides, padding, groups, precision), (x, kernel)


def _conv_bwd(strides, padding, groups, precision, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, kernel, strides, padding, groups, precision), x)
  (dx,) = input_vjp(dy)
  return dx, kernel_gradient(x, dy, kernel.shape, strides, padding, groups).astype(kernel.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


def kernel_gradient(x, dy, kernel_shape, strides, padding, groups: int = 1) -> jax.Array:
  """d(loss)/d(kernel) of a channels-last convolution as one matmul (or product-sum) per kernel tap."""
  nd = x.ndim - 2
  window = kernel_shape[:nd]
  x = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
  out_spatial = dy.shape[1:-1]
  cin_group, cout = kernel_shape[-2], kernel_shape[-1]
  cout_group = cout // groups
  accumulate = jnp.promote_types(dy.dtype, jnp.float32)  # bfloat16 products summed in float32
  dy_flat = dy.reshape(-1, groups, cout_group)
  taps = []
  for offset in np.ndindex(*window):
    start = (0,) + tuple(offset) + (0,)
    limit = (x.shape[0],) + tuple(o + s * (n - 1) + 1 for o, s, n in zip(offset, strides, out_spatial)) + \
        (x.shape[-1],)
    shifted = jax.lax.slice(x, start, limit, (1,) + tuple(strides) + (1,)).reshape(-1, groups, cin_group)
    if groups == 1:
      tap = jax.lax.dot_general(shifted[:, 0], dy_flat[:, 0], (((0,), (0,)), ((), ())),
                                preferred_element_type=accumulate)
    elif cin_group == 1 and cout_group == 1:  # depthwise: a product-sum per channel
      tap = jnp.sum(shifted[:, :, 0].astype(accumulate) * dy_flat[:, :, 0], axis=0)[None]
    else:
      tap = jnp.einsum("mgc,mgo->cgo", shifted, dy_flat, preferred_element_type=accumulate)
    taps.append(tap.reshape(cin_group, cout))
  return jnp.stack(taps).reshape(kernel_shape).astype(dy.dtype)
