"""Channels-last convolution computed as XLA:CPU computes fastest, with the same sums (a drop-in for
lax.conv_general_dilated).

Autodiff of lax.conv_general_dilated gives two more convolutions. XLA:CPU runs them, and grouped
convolutions in general, far below its matmul speed: the kernel gradient becomes a convolution whose window
is the whole map (the VQ-VAE decoder's 2x2 kernel over 64 33x33 maps: 19.7 s, as four matmuls 0.28 s), and
a 3x3 depthwise convolution over ReDimNet's [32, 30, 134, 60] maps takes 290 ms forward (6 ms as nine
fused multiply-adds). Here every pass is one of three forms, chosen per pass from the shapes:
- "xla": XLA's own convolution;
- "gemm": one matmul against all kernel taps side by side, then the tap outputs shifted into place and
  added (`shift_sum`), or for the kernel gradient one matmul per tap, shifted(x)^T @ dy;
- "elementwise": per tap a shifted multiply-add, fused into one loop (grouped and depthwise convolutions,
  and single-channel sides, where a matmul would be a thin sliver); kernel gradients as one multi-output
  reduction over batch and positions.
Each form computes the same products and sums in another order (float32 rounding differences only).

Use `conv_general_dilated` through `nn.Conv(..., conv_general_dilated=conv_general_dilated)`: parameters
are unchanged. Cases outside these forms (dilations, batch groups, channels-first layouts) go to XLA.
"""
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

CONV_IMPLS = ("auto", "xla")
PASS_IMPLS = ("xla", "gemm", "elementwise")
# Below this many input x output channels per group a matmul is a sliver: multiply-adds instead.
_ELEMENTWISE_MAX_CHANNELS = 8


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """lax.conv_general_dilated, with `conv`'s per-pass forms for channels-last undilated convolutions."""
  nd = lhs.ndim - 2
  dilated = any(d != 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
  if dilated or batch_group_count != 1 or preferred_element_type is not None or \
      not _is_channels_last(dimension_numbers, nd):
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count,
                                        batch_group_count=batch_group_count, precision=precision,
                                        preferred_element_type=preferred_element_type)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], window_strides, padding)
  return conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), feature_group_count)


def _channels_last(nd: int):
  spatial = "DHW"[-nd:] if nd == 3 else "HW"[:nd]
  return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


def _is_channels_last(dimension_numbers, nd: int) -> bool:
  if dimension_numbers is None or nd > 3:
    return False
  shape = (1,) * (nd + 2)
  wanted = jax.lax.conv_dimension_numbers(shape, shape, _channels_last(nd))
  return jax.lax.conv_dimension_numbers(shape, shape, dimension_numbers) == wanted


def pass_impls(conv_impl: str):
  """A model's `conv_impl` ("auto" or "xla") as `conv`'s `impls` argument."""
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"conv impl {conv_impl!r} is not one of {CONV_IMPLS}")
  return None if conv_impl == "auto" else ("xla",) * 3


def choose_impls(x_shape, kernel_shape, strides, groups: int) -> tuple[str, str, str]:
  """(forward, input gradient, kernel gradient) forms for a convolution of these shapes; XLA's own on GPU/TPU.

  Measured on the VQ-VAE layers (256 patches, 2-core AMD EPYC): a pass mapping A channels to B runs
  faster as the "gemm" form when A >= B (e.g. the encoder's space-to-depth 128 -> 64 forward: 59 ms
  against 198 ms; the 32 -> 1 output layer: 32 ms against 236 ms) and as XLA's convolution when A < B
  (the decoder's 64 -> 128 phase convolution: 217 ms against 373 ms). The forward maps Cin -> Cout, the
  input gradient Cout -> Cin. XLA's kernel gradient is never competitive. Grouped convolutions with few
  channels per group are all multiply-adds.
  """
  if jax.default_backend() != "cpu":
    # cuDNN / TPU convolutions run every pass (kernel gradients included) at matmul speed: keep XLA's.
    return "xla", "xla", "xla"
  nd = len(x_shape) - 2
  cin, cout = kernel_shape[-2], kernel_shape[-1] // groups
  plain = groups == 1 and all(s == 1 for s in strides) and nd <= 3
  if cin * cout <= _ELEMENTWISE_MAX_CHANNELS and all(s == 1 for s in strides):
    return "elementwise", "elementwise", "elementwise"
  if not plain:
    return "xla", "xla", "gemm"
  return ("gemm" if cin >= cout else "xla"), ("gemm" if cout > cin else "xla"), "gemm"


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding, groups: int = 1, impls=None):
  """Channels-last convolution: x [N, *spatial, Cin], kernel [*window, Cin/groups, Cout].

  `impls` = (forward, input gradient, kernel gradient) forms from PASS_IMPLS; None chooses by shape.
  """
  fwd_impl = (impls or choose_impls(x.shape, kernel.shape, strides, groups))[0]
  return _FORWARD[fwd_impl](x, kernel, strides, padding, groups)


def _conv_fwd(x, kernel, strides, padding, groups, impls):
  return conv(x, kernel, strides, padding, groups, impls), (x, kernel)


def _conv_bwd(strides, padding, groups, impls, residuals, dy):
  x, kernel = residuals
  _, dx_impl, dw_impl = impls or choose_impls(x.shape, kernel.shape, strides, groups)
  dx = _INPUT_GRAD[dx_impl](dy, x, kernel, strides, padding, groups)
  dw = _KERNEL_GRAD[dw_impl](dy, x, kernel, strides, padding, groups)
  return dx.astype(x.dtype), dw.astype(kernel.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


# ----------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------


def xla_conv(x, kernel, strides, padding, groups):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_channels_last(x.ndim - 2),
                                      feature_group_count=groups)


def _taps(window) -> list[tuple[int, ...]]:
  return list(np.ndindex(*window))


def _tap_slice(x_padded, offset, out_spatial, strides):
  """x_padded[:, o + s*i, ...] for output positions i: the input each output reads at kernel tap `offset`."""
  start = (0,) + tuple(offset) + (0,)
  limit = (x_padded.shape[0],) + tuple(o + s * (n - 1) + 1 for o, s, n in zip(offset, strides, out_spatial)) + \
      (x_padded.shape[-1],)
  return jax.lax.slice(x_padded, start, limit, (1,) + tuple(strides) + (1,))


def _out_spatial(in_spatial, window, strides, padding):
  return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(in_spatial, window, strides, padding))


def shift_sum(parts, lows, out_spatial):
  """sum_t parts[t] padded by lows[t] (negative: cropped) at the start of each spatial axis and to
  `out_spatial` at the end: element i of the result takes parts[t][i - lows[t]]. One fused loop."""
  total = 0
  for part, low in zip(parts, lows):
    config = [(0, 0, 0)] + [(lo, n_out - n_in - lo, 0) for lo, n_in, n_out in zip(low, part.shape[1:-1], out_spatial)]
    total = total + jax.lax.pad(part, jnp.zeros((), part.dtype), config + [(0, 0, 0)])
  return total


def gemm_conv(x, kernel, strides, padding, groups):
  """Stride-1 dense convolution as x @ [all taps' kernels], then each tap's output shifted into place."""
  if groups != 1 or any(s != 1 for s in strides):
    return xla_conv(x, kernel, strides, padding, groups)
  nd = x.ndim - 2
  window, cin, cout = kernel.shape[:nd], kernel.shape[-2], kernel.shape[-1]
  taps = _taps(window)
  out_spatial = _out_spatial(x.shape[1:-1], window, strides, padding)
  # y[a] = sum_t x[a + t - low] W_t: tap t's product at input position m lands on output m - t + low.
  wide = jnp.dot(x.reshape(-1, cin), jnp.moveaxis(kernel.reshape(len(taps), cin, cout), 0, 1).reshape(cin, -1))
  wide = wide.reshape(x.shape[:-1] + (len(taps), cout))
  parts = [wide[..., i, :] for i in range(len(taps))]
  return shift_sum(parts, [tuple(lo - o for o, (lo, _) in zip(t, padding)) for t in taps], out_spatial)


def elementwise_conv(x, kernel, strides, padding, groups):
  """Sum over taps and per-group input channels of shifted input times kernel: one fused loop."""
  nd = x.ndim - 2
  window, cin_group, cout = kernel.shape[:nd], kernel.shape[-2], kernel.shape[-1]
  cout_group = cout // groups
  xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
  out_spatial = _out_spatial(x.shape[1:-1], window, strides, padding)
  k = kernel.reshape(len(_taps(window)), cin_group, groups, cout_group)
  total = 0
  for t, offset in enumerate(_taps(window)):
    shifted = _tap_slice(xp, offset, out_spatial, strides).reshape(out_spatial_shape(x, out_spatial) +
                                                                    (groups, cin_group))
    for c in range(cin_group):
      total = total + shifted[..., c:c + 1] * k[t, c]
  return total.reshape(out_spatial_shape(x, out_spatial) + (cout,))


def out_spatial_shape(x, out_spatial):
  return (x.shape[0],) + tuple(out_spatial)


_FORWARD = {"xla": xla_conv, "gemm": gemm_conv, "elementwise": elementwise_conv}


# ----------------------------------------------------------------------------------------------------------
# Input gradient
# ----------------------------------------------------------------------------------------------------------


def xla_input_grad(dy, x, kernel, strides, padding, groups):
  _, vjp = jax.vjp(lambda x_: xla_conv(x_, kernel, strides, padding, groups), x)
  return vjp(dy)[0]


def gemm_input_grad(dy, x, kernel, strides, padding, groups):
  """dx[m] = sum_t dy[m + low - t] W_t^T: one matmul dy @ [all taps' W^T], then shifted adds."""
  if groups != 1 or any(s != 1 for s in strides):
    return xla_input_grad(dy, x, kernel, strides, padding, groups)
  nd = x.ndim - 2
  window, cin, cout = kernel.shape[:nd], kernel.shape[-2], kernel.shape[-1]
  taps = _taps(window)
  wide = jnp.dot(dy.reshape(-1, cout), jnp.moveaxis(kernel.reshape(len(taps), cin, cout), 2, 0).reshape(cout, -1))
  wide = wide.reshape(dy.shape[:-1] + (len(taps), cin))
  parts = [wide[..., i, :] for i in range(len(taps))]
  return shift_sum(parts, [tuple(o - lo for o, (lo, _) in zip(t, padding)) for t in taps], x.shape[1:-1])


def elementwise_input_grad(dy, x, kernel, strides, padding, groups):
  """dx[m, g, c] = sum_t sum_o dy[m + low - t, g, o] W[t, c, g, o]: shifted multiply-adds, one loop."""
  if any(s != 1 for s in strides):
    return xla_input_grad(dy, x, kernel, strides, padding, groups)
  nd = x.ndim - 2
  window, cin_group, cout = kernel.shape[:nd], kernel.shape[-2], kernel.shape[-1]
  cout_group = cout // groups
  taps = _taps(window)
  k = kernel.reshape(len(taps), cin_group, groups, cout_group)
  lead = dy.shape[:-1]
  dyg = dy.reshape(lead + (groups, cout_group))
  parts = []
  for t in range(len(taps)):
    per_c = [sum(dyg[..., o] * k[t, c, :, o] for o in range(cout_group)) for c in range(cin_group)]
    parts.append(jnp.stack(per_c, axis=-1).reshape(lead + (groups * cin_group,)))
  return shift_sum(parts, [tuple(o - lo for o, (lo, _) in zip(t, padding)) for t in taps], x.shape[1:-1])


_INPUT_GRAD = {"xla": xla_input_grad, "gemm": gemm_input_grad, "elementwise": elementwise_input_grad}


# ----------------------------------------------------------------------------------------------------------
# Kernel gradient
# ----------------------------------------------------------------------------------------------------------


def xla_kernel_grad(dy, x, kernel, strides, padding, groups):
  _, vjp = jax.vjp(lambda k_: xla_conv(x, k_, strides, padding, groups), kernel)
  return vjp(dy)[0]


def gemm_kernel_grad(dy, x, kernel, strides, padding, groups):
  """dW[t] = shifted(x, t)^T @ dy, contracting batch and positions: one matmul per tap.

  A shifted operand is a copy; when dy is the narrower one (and the stride is 1) it is dy that moves:
  dW[t] = x^T @ dy[m + low - t], the same sums.
  """
  nd = x.ndim - 2
  window, cin_group, cout = kernel.shape[:nd], kernel.shape[-2], kernel.shape[-1]
  cout_group = cout // groups
  accumulate = jnp.promote_types(dy.dtype, jnp.float32)  # bfloat16 products summed in float32
  taps = _taps(window)
  if cout_group < cin_group and all(s == 1 for s in strides):
    lows = [tuple(o - lo for o, (lo, _) in zip(t, padding)) for t in taps]
    lefts = [x.reshape(-1, groups, cin_group)] * len(taps)
    rights = [shift_sum([dy], [low], x.shape[1:-1]).reshape(-1, groups, cout_group) for low in lows]
    if groups == 1:
      # The shifted copies of the narrow dy side by side: one matmul x^T @ [dy_t ...] for all taps.
      wide = jnp.concatenate([r[:, 0] for r in rights], axis=-1)
      dw = jax.lax.dot_general(x.reshape(-1, cin_group), wide, (((0,), (0,)), ((), ())),
                               preferred_element_type=accumulate)
      return jnp.moveaxis(dw.reshape(cin_group, len(taps), cout), 1, 0).reshape(kernel.shape)
  else:
    xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
    lefts = [_tap_slice(xp, t, dy.shape[1:-1], strides).reshape(-1, groups, cin_group) for t in taps]
    rights = [dy.reshape(-1, groups, cout_group)] * len(taps)
  out = []
  for left, right in zip(lefts, rights):
    if groups == 1:
      tap = jax.lax.dot_general(left[:, 0], right[:, 0], (((0,), (0,)), ((), ())), preferred_element_type=accumulate)
    else:
      tap = jnp.einsum("mgc,mgo->cgo", left, right, preferred_element_type=accumulate)
    out.append(tap.reshape(cin_group, cout))
  return jnp.stack(out).reshape(kernel.shape)


def elementwise_kernel_grad(dy, x, kernel, strides, padding, groups):
  """dW[t, c, g, o] = sum over batch and positions of shifted(x)[.., g, c] * dy[.., g, o].

  All taps and channel pairs in one variadic reduction, so x and dy are read once (one reduction per tap
  reads them nine times, memory-bound).
  """
  nd = x.ndim - 2
  window, cin_group, cout = kernel.shape[:nd], kernel.shape[-2], kernel.shape[-1]
  cout_group = cout // groups
  accumulate = jnp.promote_types(dy.dtype, jnp.float32)
  xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
  lead = dy.shape[:-1]
  dyg = dy.reshape(lead + (groups, cout_group)).astype(accumulate)
  products = []
  for offset in _taps(window):
    shifted = _tap_slice(xp, offset, dy.shape[1:-1], strides).reshape(lead + (groups, cin_group))
    for c in range(cin_group):
      products += [shifted[..., c].astype(accumulate) * dyg[..., o] for o in range(cout_group)]
  axes = tuple(range(len(lead)))
  sums = jax.lax.reduce(products, [jnp.zeros((), accumulate)] * len(products),
                        lambda a, b: [u + v for u, v in zip(a, b)], axes)
  # sums is ordered (tap, c, o), each [groups]: kernel layout is [*window, c, g * cout_group + o].
  dw = jnp.stack(sums).reshape(len(_taps(window)), cin_group, cout_group, groups)
  return jnp.swapaxes(dw, 2, 3).reshape(kernel.shape)


_KERNEL_GRAD = {"xla": xla_kernel_grad, "gemm": gemm_kernel_grad, "elementwise": elementwise_kernel_grad}


def describe(x_shape, kernel_shape, strides=None, groups: int = 1) -> str:
  """The forms `conv` picks for these shapes, e.g. 'xla/gemm/gemm' (for profiles and the benchmark)."""
  strides = strides or (1,) * (len(x_shape) - 2)
  return "/".join(choose_impls(x_shape, kernel_shape, strides, groups))

