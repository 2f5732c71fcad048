"""2x upsampling by a transposed convolution (kernel 4, stride 2, padding 1 in PyTorch terms).

One parameterisation (a 4x4 transposed-conv kernel), two exactly equivalent implementations:
- "transpose": the textbook form, a convolution over the input dilated by 2 (what nn.ConvTranspose
  lowers to). XLA:CPU runs this lhs-dilated convolution slowly.
- "subpixel": the same kernel split into its four output phases, each a 2x2 sub-kernel embedded in a
  3x3 kernel, run as one 3x3 convolution to 4x channels followed by depth-to-space. No zero-stuffed
  input, but 5 of each phase's 9 taps are zeros: 2.25x the multiply-adds of the transposed convolution.
- "polyphase": the four 2x2 phase sub-kernels side by side as one 2x2 convolution to 4x channels over the
  input padded by 1 ((H+1) x (W+1) outputs); phase (p, q) of output pixel (m, n) is output (m+p, n+q).
  The transposed convolution's multiply-adds (plus one row and column), no zeros anywhere.
Both phase forms compute their kernel gradient as matmuls (`vqax.models.conv`): XLA's own kernel
gradient of these convolutions is a convolution with a map-sized window, which XLA:CPU runs slowly.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqax.models.conv import conv, pass_impls

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


def upsample2x(x: jax.Array, kernel: jax.Array, impl: str = "polyphase", conv_impl: str = "auto") -> jax.Array:
  """Apply the stride-2 transposed convolution `kernel` ([4, 4, Cin, Cout]) to NHWC `x`.

  conv_impl picks how the phase forms' convolution runs each pass (`vqax.models.conv`).
  """
  dn = ("NHWC", "HWIO", "NHWC")
  if impl == "transpose":
    # Dilate the input by 2, pad k-1-p = 2 on each side, correlate with the spatially flipped kernel.
    return jax.lax.conv_general_dilated(x, kernel[::-1, ::-1], window_strides=(1, 1),
                                        padding=((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                        dimension_numbers=dn)
  if impl == "polyphase":
    y = conv(x, polyphase_kernel(kernel), (1, 1), ((1, 1), (1, 1)), 1, pass_impls(conv_impl))
    return polyphase_to_space(y)
  if impl == "subpixel":
    y = conv(x, subpixel_kernel(kernel), (1, 1), ((1, 1), (1, 1)), 1, pass_impls(conv_impl))
    return depth_to_space(y, 2)
  raise ValueError(f"upsample impl {impl!r} is not one of {UPSAMPLE_IMPLS}")


class Upsample2x(nn.Module):
  """Transposed convolution, kernel 4, stride 2: H x W x Cin -> 2H x 2W x features."""
  features: int
  impl: str = "polyphase"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    y = upsample2x(x.astype(self.dtype), kernel.astype(self.dtype), self.impl, self.conv_impl)
    return y + bias.astype(self.dtype)
