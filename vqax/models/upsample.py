"""2x upsampling by a transposed convolution (kernel 4, stride 2, padding 1 in PyTorch terms).

One parameterisation (a 4x4 transposed-conv kernel), two exactly equivalent implementations:
- "transpose": the textbook form, a convolution over the input dilated by 2 (what nn.ConvTranspose
  lowers to). XLA:CPU runs this lhs-dilated convolution slowly.
- "subpixel": the same kernel split into its four output phases, each a 2x2 sub-kernel embedded in a
  3x3 kernel, run as one 3x3 convolution to 4x channels followed by depth-to-space. Same arithmetic,
  no zero-stuffed input, and fast on every backend.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

UPSAMPLE_IMPLS = ("subpixel", "transpose")

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


def depth_to_space(x: jax.Array, block: int = 2) -> jax.Array:
  """[N, H, W, b*b*C] -> [N, H*b, W*b, C] with channels ordered (row phase, col phase, C)."""
  n, h, w, c = x.shape
  c_out = c // (block * block)
  x = x.reshape(n, h, w, block, block, c_out)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * block, w * block, c_out)


def upsample2x(x: jax.Array, kernel: jax.Array, impl: str = "subpixel") -> jax.Array:
  """Apply the stride-2 transposed convolution `kernel` ([4, 4, Cin, Cout]) to NHWC `x`."""
  dn = ("NHWC", "HWIO", "NHWC")
  if impl == "transpose":
    # Dilate the input by 2, pad k-1-p = 2 on each side, correlate with the spatially flipped kernel.
    return jax.lax.conv_general_dilated(x, kernel[::-1, ::-1], window_strides=(1, 1),
                                        padding=((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                        dimension_numbers=dn)
  if impl == "subpixel":
    y = jax.lax.conv_general_dilated(x, subpixel_kernel(kernel), window_strides=(1, 1),
                                     padding=((1, 1), (1, 1)), dimension_numbers=dn)
    return depth_to_space(y, 2)
  raise ValueError(f"upsample impl {impl!r} is not one of {UPSAMPLE_IMPLS}")


class Upsample2x(nn.Module):
  """Transposed convolution, kernel 4, stride 2: H x W x Cin -> 2H x 2W x features."""
  features: int
  impl: str = "subpixel"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    y = upsample2x(x.astype(self.dtype), kernel.astype(self.dtype), self.impl)
    return y + bias.astype(self.dtype)
