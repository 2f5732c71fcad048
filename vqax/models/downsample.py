"""2x downsampling layer: a convolution, kernel 4, stride 2, padding 1 (PyTorch terms)."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from vqax.ops.resample import downsample2x


class Downsample2x(nn.Module):
  """Convolution, kernel 4, stride 2, padding 1: H x W x Cin -> H/2 x W/2 x features.

  Parameters are named and shaped as nn.Conv's (kernel [4, 4, Cin, features], bias), so checkpoints
  move between the implementations and from the plain nn.Conv layer.
  """
  features: int
  impl: str | None = None  # a `vqax.ops.resample` form; None: as `vqax.ops.forms` says
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    y = downsample2x(x.astype(self.dtype), kernel.astype(self.dtype), self.impl)
    return y + bias.astype(self.dtype)
