"""2x downsampling by a convolution with kernel 4, stride 2, padding 1 (PyTorch terms).

One parameterisation (a [4, 4, Cin, Cout] kernel and a bias, as nn.Conv's), two exactly equivalent
implementations:
- "strided": the textbook strided convolution. Its input gradient is a convolution over the output
  gradient dilated by 2 (3/4 zeros), and its kernel gradient a convolution with a map-sized window; XLA:CPU
  runs both slowly.
- "space_to_depth": pad by 1, fold each 2x2 block of pixels into channels, then a 2x2 stride-1 convolution
  with the same kernel rearranged to [2, 2, 4*Cin, Cout]. The same products and sums, no dilation in
  either gradient, and the kernel gradient as matmuls (`vqax.models.conv`).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from vqax.models.conv import conv, pass_impls

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


def downsample2x(x: jax.Array, kernel: jax.Array, impl: str = "space_to_depth", conv_impl: str = "auto") -> jax.Array:
  """Apply the stride-2 convolution `kernel` ([4, 4, Cin, Cout], padding 1) to NHWC `x`.

  conv_impl picks how the space-to-depth form's convolution runs each pass (`vqax.models.conv`).
  """
  if impl == "strided":
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if impl == "space_to_depth":
    # Output o reads padded rows 2o .. 2o+3, i.e. blocks o and o+1. An odd side is padded to even length
    # with one zero row fewer at the end: the strided convolution never reads that row either.
    h, w = x.shape[1], x.shape[2]
    x = jnp.pad(x, ((0, 0), (1, 1 - h % 2), (1, 1 - w % 2), (0, 0)))
    return conv(space_to_depth(x), space_to_depth_kernel(kernel), (1, 1), ((0, 0), (0, 0)), 1,
                pass_impls(conv_impl))
  raise ValueError(f"downsample impl {impl!r} is not one of {DOWNSAMPLE_IMPLS}")


class Downsample2x(nn.Module):
  """Convolution, kernel 4, stride 2, padding 1: H x W x Cin -> H/2 x W/2 x features.

  Parameters are named and shaped as nn.Conv's (kernel [4, 4, Cin, features], bias), so checkpoints
  move between the implementations and from the plain nn.Conv layer.
  """
  features: int
  impl: str = "space_to_depth"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    y = downsample2x(x.astype(self.dtype), kernel.astype(self.dtype), self.impl, self.conv_impl)
    return y + bias.astype(self.dtype)
