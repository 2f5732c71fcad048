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
A grouped convolution that sums several inputs per output runs on XLA:CPU as a depthwise convolution over
its channel pairs followed by a 0/1 matmul (`summed_pairs_conv`), so that XLA cannot recompute it inside
its consumers.

Models reach this through `vqax.ops.Conv` (an nn.Conv with these forms where `vqax.ops.forms` says so):
parameters are unchanged. Cases outside these forms (dilations, batch groups, channels-first layouts) go to XLA.
"""
import contextlib
import contextvars
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vqax.ops import forms
from vqax.ops.dense import materialized

PASS_IMPLS = ("xla", "gemm", "elementwise")
# Below this many input x output channels per group a matmul is a sliver: multiply-adds instead.
_ELEMENTWISE_MAX_CHANNELS = 16
# A pass of a kernel wider than 1x1 that reads at most this many inputs (taps x input channels) per output
# runs as multiply-adds.
_ELEMENTWISE_MAX_READS = 16
# Up to this many channel pairs per group, a grouped convolution that sums several inputs runs as
# `summed_pairs_conv` (its 0/1 matmul grows with the pairs: 7.6 GFLOP for ReDimNet-b2's 192-channel 4x4 groups).
_PAIR_SUM_MAX_CHANNELS = 8


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """lax.conv_general_dilated, with `conv`'s per-pass forms for channels-last undilated convolutions."""
  nd = lhs.ndim - 2
  dilated = any(d != 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
  if not forms.cpu_forms() or dilated or batch_group_count != 1 or preferred_element_type is not None or \
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


# ----------------------------------------------------------------------------------------------------------
# Overriding the choice (benchmarks and experiments; models never do)
# ----------------------------------------------------------------------------------------------------------

_OVERRIDE: contextvars.ContextVar = contextvars.ContextVar("vqax_conv_override", default=None)
_JOINT_BACKWARD: dict = {}


@contextlib.contextmanager
def override_forms(rule):
  """While tracing inside this, `choose_impls` returns `rule(x_shape, kernel_shape, strides, groups, chosen)`
  instead of `chosen`: the public way for tools to try other forms (tools/ab_step.py) without patching."""
  token = _OVERRIDE.set(rule)
  try:
    yield
  finally:
    _OVERRIDE.reset(token)


@contextlib.contextmanager
def joint_backward_form(name: str, backward):
  """Register a form that computes both gradients at once: `backward(dy, x, kernel, strides, padding, groups)
  -> (dx, dw)`, used where `choose_impls` (or an override) names `name` for both gradient passes."""
  if name in PASS_IMPLS:
    raise ValueError(f"{name!r} is a built-in form")
  _JOINT_BACKWARD[name] = backward
  try:
    yield
  finally:
    _JOINT_BACKWARD.pop(name, None)


def choose_impls(x_shape, kernel_shape, strides, groups: int) -> tuple[str, str, str]:
  """(forward, input gradient, kernel gradient) forms for a convolution of these shapes; XLA's own on GPU/TPU.

  Measured on the VQ-VAE layers (256 patches, 2-core AMD EPYC): a pass mapping A channels to B runs
  faster as the "gemm" form when A >= B (e.g. the encoder's space-to-depth 128 -> 64 forward: 59 ms
  against 198 ms; the 32 -> 1 output layer: 32 ms against 236 ms) and as XLA's convolution when A < B
  (the decoder's 64 -> 128 phase convolution: 217 ms against 373 ms). The forward maps Cin -> Cout, the
  input gradient Cout -> Cin. XLA's kernel gradient is never competitive. Grouped convolutions with few
  channels per group are all multiply-adds, and so is a pass that reads few inputs per output (taps x its
  input channels <= 16; 2-core Xeon, alone: the encoder's first 4 -> 32 forward 11 ms against XLA's 21, the
  output layer's 1 -> 32 input gradient 27 ms against 56; the VQ-VAE step 1.02-1.07x in two interleaved
  A/Bs; ReDimNet-b4..b6's 1 -> 32 stem forward at batch 32 x 2 s: 7.9 ms against 16.2). 1x1 kernels keep
  the matmul, which has no shifted adds to save (ReDimNet's 10 -> 10 convolutions were not measured that way).
  """
  chosen = _measured_choice(x_shape, kernel_shape, strides, groups)
  rule = _OVERRIDE.get()
  return chosen if rule is None else tuple(rule(x_shape, kernel_shape, strides, groups, chosen))


def _measured_choice(x_shape, kernel_shape, strides, groups: int) -> tuple[str, str, str]:
  if not forms.cpu_forms():
    # cuDNN / TPU convolutions run every pass (kernel gradients included) at matmul speed: keep XLA's.
    return "xla", "xla", "xla"
  nd = len(x_shape) - 2
  cin, cout = kernel_shape[-2], kernel_shape[-1] // groups
  plain = groups == 1 and all(s == 1 for s in strides) and nd <= 3
  if cin * cout <= _ELEMENTWISE_MAX_CHANNELS and all(s == 1 for s in strides):
    return "elementwise", "elementwise", "elementwise"
  if not plain:
    return "xla", "xla", "gemm"
  taps = int(np.prod(kernel_shape[:-2]))
  few_reads = lambda channels: 1 < taps and taps * channels <= _ELEMENTWISE_MAX_READS
  fwd = "elementwise" if few_reads(cin) else ("gemm" if cin >= cout else "xla")
  dx = "elementwise" if few_reads(cout) else ("gemm" if cout > cin else "xla")
  return fwd, dx, "gemm"


def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding, groups: int = 1, impls=None):
  """Channels-last convolution: x [N, *spatial, Cin], kernel [*window, Cin/groups, Cout].

  `impls` = (forward, input gradient, kernel gradient) forms from PASS_IMPLS; None chooses by shape, and
  on XLA:CPU runs a grouped convolution that sums several inputs per output as `summed_pairs_conv`.
  """
  if impls is None:
    if sums_input_pairs(kernel.shape, groups):
      return summed_pairs_conv(x, kernel, strides, padding, groups)
    # Chosen while the forward is traced, where the model's `vqax.ops.forms` setting is in force; the
    # backward is traced later, outside it.
    impls = choose_impls(x.shape, kernel.shape, strides, groups)
  return conv_passes(x, kernel, strides, padding, groups, tuple(impls))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_passes(x, kernel, strides, padding, groups: int = 1, impls=None):
  """`conv` with each pass (forward, input gradient, kernel gradient) in one of the PASS_IMPLS forms."""
  fwd_impl = (impls or choose_impls(x.shape, kernel.shape, strides, groups))[0]
  y = _FORWARD[fwd_impl](x, kernel, strides, padding, groups)
  return materialized(y, enabled=fwd_impl == "elementwise" and _mixes_channels(kernel.shape, groups))


def _conv_fwd(x, kernel, strides, padding, groups, impls):
  return conv_passes(x, kernel, strides, padding, groups, impls), (x, kernel)


def _conv_bwd(strides, padding, groups, impls, residuals, dy):
  x, kernel = residuals
  _, dx_impl, dw_impl = impls or choose_impls(x.shape, kernel.shape, strides, groups)
  if dx_impl == dw_impl and dx_impl in _JOINT_BACKWARD:
    dx, dw = _JOINT_BACKWARD[dx_impl](dy, x, kernel, strides, padding, groups)
    return dx.astype(x.dtype), dw.astype(kernel.dtype)
  dy = materialized(dy, enabled="elementwise" in (dx_impl, dw_impl) and _mixes_channels(kernel.shape, groups))
  dx = _INPUT_GRAD[dx_impl](dy, x, kernel, strides, padding, groups)
  dw = _KERNEL_GRAD[dw_impl](dy, x, kernel, strides, padding, groups)
  return dx.astype(x.dtype), dw.astype(kernel.dtype)


conv_passes.defvjp(_conv_fwd, _conv_bwd)


def _mixes_channels(kernel_shape, groups: int) -> bool:
  """Whether each output sums several input channels or each input feeds several outputs (not depthwise).

  Computed as multiply-adds, such a convolution (ReDimNet-b2's 4 -> 4 groups: 36 per output) is a cheap
  elementwise producer to XLA:CPU, which recomputes it inside its consumers: the batch norm after it, and
  in the backward pass the nine-tap input and kernel gradients recomputing the batch norm's backward
  (b2's step took 25 s that way, 6.5 s materialized). Its output and output gradient are therefore
  `materialized` on CPU.
  """
  return kernel_shape[-2] > 1 or kernel_shape[-1] > groups


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


def _pair_kernel(kernel, groups):
  """[*window, a, G*b] grouped kernel -> [taps, G*a*b]: one weight per (group, input, output) channel pair.

  A grouped convolution with a inputs and b outputs per group is a depthwise convolution over these G*a*b
  pairs, whose input is x repeated over b (`_pairs_from_input`), summed over each output's a pairs.
  """
  cin_group, cout = kernel.shape[-2], kernel.shape[-1]
  k = kernel.reshape(-1, cin_group, groups, cout // groups)
  return jnp.swapaxes(k, 1, 2).reshape(k.shape[0], -1)


def _pairs_from_input(x, groups, cin_group, cout_group):
  """[..., G*a] -> [..., G*a*b]: channel (g, c) repeated for each of its group's b outputs."""
  if cout_group == 1:
    return x
  lead = x.shape[:-1]
  x = jnp.broadcast_to(x.reshape(lead + (groups, cin_group, 1)), lead + (groups, cin_group, cout_group))
  return x.reshape(lead + (-1,))


def elementwise_conv(x, kernel, strides, padding, groups):
  """Sum over taps and per-group input channels of shifted input times kernel: one fused loop.

  Per input channel rather than per channel pair: ReDimNet's 60 -> 20 squeeze forward takes 17 ms this
  way and 26 ms over the 60 pairs summed in threes, alone. Inside a step XLA recomputes it in its
  consumers: `conv_passes` materializes its output when it mixes channels, and `conv` sends groups with
  few channel pairs through `summed_pairs_conv`.
  """
  nd = x.ndim - 2
  window, cin_group, cout = kernel.shape[:nd], kernel.shape[-2], kernel.shape[-1]
  cout_group = cout // groups
  xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
  out_shape = (x.shape[0],) + _out_spatial(x.shape[1:-1], window, strides, padding)
  k = kernel.reshape(len(_taps(window)), cin_group, groups, cout_group)
  total = 0
  for t, offset in enumerate(_taps(window)):
    shifted = _tap_slice(xp, offset, out_shape[1:], strides).reshape(out_shape + (groups, cin_group))
    for c in range(cin_group):
      total = total + shifted[..., c:c + 1] * k[t, c]
  return total.reshape(out_shape + (cout,))


_FORWARD = {"xla": xla_conv, "gemm": gemm_conv, "elementwise": elementwise_conv}


def sums_input_pairs(kernel_shape, groups: int) -> bool:
  """Whether `conv` runs these shapes as `summed_pairs_conv`: on XLA:CPU, grouped, several inputs and few
  channel pairs per group (ReDimNet's channel squeeze)."""
  cin_group, cout_group = kernel_shape[-2], kernel_shape[-1] // groups
  return (forms.cpu_forms() and groups > 1 and cin_group > 1 and
          cin_group * cout_group <= _PAIR_SUM_MAX_CHANNELS)


def summed_pairs_conv(x, kernel, strides, padding, groups):
  """A grouped convolution as a depthwise one over its (group, input, output) channel pairs, then each
  output's pairs summed by a matmul with a 0/1 matrix: the same products and sums.

  Why: XLA:CPU fuses cheap elementwise producers into every consumer, and a grouped convolution computed
  as multiply-adds is such a producer. The batch norm after ReDimNet's channel squeeze then recomputes the
  whole convolution in its backward at each of the nine positions the input gradient reads, with
  stride-a channel access: one fusion of 430 ms per squeeze in b0's step. A matmul is never recomputed,
  so the convolution's output and the gradient flowing into it (dy times the 0/1 matrix, another matmul)
  are each computed once; the depthwise passes on the pairs are contiguous in channels.
  """
  nd = x.ndim - 2
  window, cin_group, cout = kernel.shape[:nd], kernel.shape[-2], kernel.shape[-1]
  cout_group = cout // groups
  pairs = groups * cin_group * cout_group
  x_pairs = _pairs_from_input(x, groups, cin_group, cout_group)
  pair_kernel = _pair_kernel(kernel, groups).reshape(tuple(window) + (1, pairs))
  y_pairs = conv(x_pairs, pair_kernel, strides, padding, pairs,
               choose_impls(x_pairs.shape, pair_kernel.shape, strides, pairs))
  return jnp.dot(y_pairs, _pair_sum_matrix(groups, cin_group, cout_group, y_pairs.dtype))


def _pair_sum_matrix(groups, cin_group, cout_group, dtype):
  """[G*a*b, G*b] 0/1 matrix: pair (g, c, o) (index (g*a + c)*b + o) adds into output g*b + o."""
  pair = np.arange(groups * cin_group * cout_group)
  out = pair // (cin_group * cout_group) * cout_group + pair % cout_group
  matrix = np.zeros((pair.size, groups * cout_group), np.float32)
  matrix[pair, out] = 1
  return jnp.asarray(matrix, dtype)


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
  """dx as the forward multiply-adds over dy: dx[m] = sum_t dy[m + low - t] W_t^T is a convolution of dy
  with the kernel flipped in space and its per-group inputs and outputs swapped (`transposed_kernel`).

  Depthwise (one pair per group), as per-tap products of dy shifted into place. ReDimNet-b2's 4 -> 4
  groups over [32, 6, 134, 192] maps: 52 ms as a convolution of dy, 630 ms over the 16 channel pairs.
  """
  if any(s != 1 for s in strides):
    return xla_input_grad(dy, x, kernel, strides, padding, groups)
  nd = x.ndim - 2
  window, cout = kernel.shape[:nd], kernel.shape[-1]
  if _mixes_channels(kernel.shape, groups):
    # Output position n reads input n + t - low; dy is padded so that input m reads dy at m + low - t.
    pads = tuple((k - 1 - lo, n_in + lo - n_out) for k, (lo, _), n_in, n_out in
                 zip(window, padding, x.shape[1:-1], dy.shape[1:-1]))
    return elementwise_conv(dy, transposed_kernel(kernel, groups), (1,) * nd, pads, groups)
  taps = _taps(window)
  weights = kernel.reshape(len(taps), cout)
  parts = [dy * weights[t] for t in range(len(taps))]
  return shift_sum(parts, [tuple(o - lo for o, (lo, _) in zip(t, padding)) for t in taps], x.shape[1:-1])


def transposed_kernel(kernel, groups):
  """[*window, a, G*b] -> [*window reversed, b, G*a]: the kernel whose convolution of dy is the input
  gradient (each group's a inputs and b outputs swapped, taps mirrored)."""
  nd = kernel.ndim - 2
  cin_group, cout = kernel.shape[-2], kernel.shape[-1]
  k = kernel.reshape(kernel.shape[:nd] + (cin_group, groups, cout // groups))
  k = jnp.transpose(k, tuple(range(nd)) + (nd + 2, nd + 1, nd))  # [*window, b, G, a]
  return jnp.flip(k.reshape(kernel.shape[:nd] + (cout // groups, groups * cin_group)), axis=tuple(range(nd)))


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

  Per tap and per-group input channel c, x's channel c times its group's b output gradients; all these
  products in one variadic reduction, so x and dy are read once rather than once per tap. x is padded
  before any broadcast: ReDimNet-b2's 4 -> 4 groups over [32, 72, 134, 16] maps take 34 ms this way and
  165 ms from a padded copy of x repeated over the (input, output) pairs. Each example's positions are
  reduced first and the examples after: XLA:CPU then keeps one example's maps in cache (b0's depthwise
  [32, 30, 134, 60] map, nine taps: 72 ms reduced at once, 29 ms per example), and the batch axis, which
  data parallelism shards, stays a plain sum.
  """
  nd = x.ndim - 2
  window, cin_group, cout = kernel.shape[:nd], kernel.shape[-2], kernel.shape[-1]
  cout_group = cout // groups
  accumulate = jnp.promote_types(dy.dtype, jnp.float32)
  lead = dy.shape[:-1]
  xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
  dy_groups = dy.reshape(lead + (groups, cout_group)).astype(accumulate)
  products = []
  for t in _taps(window):
    shifted = _tap_slice(xp, t, dy.shape[1:-1], strides).reshape(lead + (groups, cin_group)).astype(accumulate)
    products.extend(shifted[..., c:c + 1] * dy_groups for c in range(cin_group))
  per_example = jax.lax.reduce(products, [jnp.zeros((), accumulate)] * len(products),
                               lambda a, b: [u + v for u, v in zip(a, b)], tuple(range(1, nd + 1)))
  dw = jnp.sum(jnp.stack(per_example), axis=1)  # [taps * a, batch, G, b] -> [taps * a, G, b]
  return dw.reshape(kernel.shape)  # (t, c, g, o) is the kernel's [*window, c, g * b + o] order


_KERNEL_GRAD = {"xla": xla_kernel_grad, "gemm": gemm_kernel_grad, "elementwise": elementwise_kernel_grad}


def describe(x_shape, kernel_shape, strides=None, groups: int = 1) -> str:
  """The forms `conv` picks for these shapes, e.g. 'xla/gemm/gemm' (for profiles and the benchmark)."""
  strides = strides or (1,) * (len(x_shape) - 2)
  return "/".join(choose_impls(x_shape, kernel_shape, strides, groups))

