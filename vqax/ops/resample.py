"""Stride-2 resampling convolutions (kernel 4, padding 1 in PyTorch terms) in exactly equivalent forms.

Upsampling (a transposed convolution), one [4, 4, Cin, Cout] kernel, three forms:
- "transpose": the textbook form, a convolution over the input dilated by 2 (what nn.ConvTranspose
  lowers to). XLA:CPU runs this lhs-dilated convolution slowly.
- "subpixel": the kernel split into its four output phases, each a 2x2 sub-kernel embedded in a 3x3
  kernel, run as one 3x3 convolution to 4x channels followed by depth-to-space (2.25x the multiply-adds).
- "polyphase": the four 2x2 phase sub-kernels side by side as one 2x2 convolution to 4x channels over the
  input padded by 1 ((H+1) x (W+1) outputs); phase (p, q) of output pixel (m, n) is output (m+p, n+q).
  The transposed convolution's multiply-adds (plus one row and column), no zeros anywhere.

Downsampling (a strided convolution), two forms:
- "strided": the textbook strided convolution. Its input gradient is a convolution over the output
  gradient dilated by 2 (3/4 zeros), and its kernel gradient a convolution with a map-sized window; XLA:CPU
  runs both slowly.
- "space_to_depth": pad by 1, fold each 2x2 block of pixels into channels, then a 2x2 stride-1 convolution
  with the same kernel rearranged to [2, 2, 4*Cin, Cout]: the same products and sums, no dilation.

The phase and block forms run their convolution through `vqax.ops.conv` (kernel gradients as matmuls).
Which form a model gets follows `vqax.ops.forms`; every form has the same parameters and function.
"""
import jax
import jax.numpy as jnp
import numpy as np

from vqax.ops import forms
from vqax.ops.conv import conv



UPSAMPLE_IMPLS = ("polyphase", "subpixel", "transpose")

# For output phase p (0 = even rows, 1 = odd rows) and 3x3 tap t, the 4x4 kernel row it uses (or none).
# Even output 2m: x[m-1]*w[3] + x[m]*w[1]; odd output 2m+1: x[m]*w[2] + x[m+1]*w[0].
_PHASE_TAPS = np.zeros((2, 3, 4), np.float32)
_PHASE_TAPS[0, 0, 3] = _PHASE_TAPS[0, 1, 1] = 1.0
_PHASE_TAPS[1, 1, 2] = _PHASE_TAPS[1, 2, 0] = 1.0


def subpixel_kernel(kernel: jax.Array) -> jax.Array:
  """[4, 4, Cin, Cout] transposed-conv kernel -> [3, 3, Cin, 4*Cout] kernel ordered (row phase, col phase, Cout)."""
  taps = jnp.asarray(_PHASE_TAPS, kernel.dtype)
  k3 = jnp.einsum("aty,bsx,yxio->tsiabo", taps, taps, kernel)
  return k3.reshape(3, 3, kernel.shape[2], 4 * kernel.shape[3])


def polyphase_kernel(kernel: jax.Array) -> jax.Array:
  """[4, 4, Cin, Cout] transposed-conv kernel -> [2, 2, Cin, 4*Cout] ordered (row phase, col phase, Cout).

  Phase p's tap t is kernel row 3 - p - 2t: even outputs 2m = x[m-1] w[3] + x[m] w[1], odd outputs
  2m+1 = x[m] w[2] + x[m+1] w[0], both read as padded rows (m + p, m + p + 1).
  """
  cin, cout = kernel.shape[2], kernel.shape[3]
  k = kernel[::-1, ::-1].reshape(2, 2, 2, 2, cin, cout)  # flipped index 2t + p -> (t_h, p_h, t_w, p_w)
  return k.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, cin, 4 * cout)


def polyphase_to_space(y: jax.Array) -> jax.Array:
  """[N, H+1, W+1, 4*C] phase outputs -> [N, 2H, 2W, C]: pixel (2m+p, 2n+q) is phase (p, q) at (m+p, n+q)."""
  n, h1, w1, c4 = y.shape
  h, w, c = h1 - 1, w1 - 1, c4 // 4
  y = y.reshape(n, h1, w1, 2, 2, c)
  phases = [[y[:, p:p + h, q:q + w, p, q] for q in range(2)] for p in range(2)]
  return jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2).reshape(n, 2 * h, 2 * w, c)


def depth_to_space(x: jax.Array, block: int = 2) -> jax.Array:
  """[N, H, W, b*b*C] -> [N, H*b, W*b, C] with channels ordered (row phase, col phase, C)."""
  n, h, w, c = x.shape
  c_out = c // (block * block)
  x = x.reshape(n, h, w, block, block, c_out)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * block, w * block, c_out)


def upsample2x(x: jax.Array, kernel: jax.Array, impl: str | None = None) -> jax.Array:
  """Apply the stride-2 transposed convolution `kernel` ([4, 4, Cin, Cout]) to NHWC `x`.

  impl None: "polyphase" under the XLA:CPU forms (`vqax.ops.forms`), else "transpose" (XLA's own).
  """
  impl = impl or ("polyphase" if forms.cpu_forms() else "transpose")
  dn = ("NHWC", "HWIO", "NHWC")
  if impl == "transpose":
    # Dilate the input by 2, pad k-1-p = 2 on each side, correlate with the spatially flipped kernel.
    return jax.lax.conv_general_dilated(x, kernel[::-1, ::-1], window_strides=(1, 1),
                                        padding=((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                        dimension_numbers=dn)
  if impl == "polyphase":
    y = conv(x, polyphase_kernel(kernel), (1, 1), ((1, 1), (1, 1)), 1)
    return polyphase_to_space(y)
  if impl == "subpixel":
    y = conv(x, subpixel_kernel(kernel), (1, 1), ((1, 1), (1, 1)), 1)
    return depth_to_space(y, 2)
  raise ValueError(f"upsample impl {impl!r} is not one of {UPSAMPLE_IMPLS}")


DOWNSAMPLE_IMPLS = ("space_to_depth", "strided")


def space_to_depth(x: jax.Array, block: int = 2) -> jax.Array:
  """[N, H, W, C] -> [N, H/b, W/b, b*b*C] with channels ordered (row offset, column offset, C)."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // block, w // block, block * block * c)


def space_to_depth_kernel(kernel: jax.Array) -> jax.Array:
  """[4, 4, Cin, Cout] stride-2 kernel -> [2, 2, 4*Cin, Cout]: tap (2t + r) is block tap t, offset r."""
  cin, cout = kernel.shape[2], kernel.shape[3]
  k = kernel.reshape(2, 2, 2, 2, cin, cout)  # (t_h, r_h, t_w, r_w, Cin, Cout)
  return k.transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * cin, cout)


def downsample2x(x: jax.Array, kernel: jax.Array, impl: str | None = None) -> jax.Array:
  """Apply the stride-2 convolution `kernel` ([4, 4, Cin, Cout], padding 1) to NHWC `x`.

  impl None: "space_to_depth" under the XLA:CPU forms (`vqax.ops.forms`), else "strided" (XLA's own).
  """
  impl = impl or ("space_to_depth" if forms.cpu_forms() else "strided")
  if impl == "strided":
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if impl == "space_to_depth":
    # Output o reads padded rows 2o .. 2o+3, i.e. blocks o and o+1. An odd side is padded to even length
    # with one zero row fewer at the end: the strided convolution never reads that row either.
    h, w = x.shape[1], x.shape[2]
    x = jnp.pad(x, ((0, 0), (1, 1 - h % 2), (1, 1 - w % 2), (0, 0)))
    return conv(space_to_depth(x), space_to_depth_kernel(kernel), (1, 1), ((0, 0), (0, 0)), 1)
  raise ValueError(f"downsample impl {impl!r} is not one of {DOWNSAMPLE_IMPLS}")
