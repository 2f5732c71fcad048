"""2x upsampling layer: a transposed convolution, kernel 4, stride 2 (padding 1 in PyTorch terms)."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from vqax.ops.resample import upsample2x


class Upsample2x(nn.Module):
  """Transposed convolution, kernel 4, stride 2: H x W x Cin -> 2H x 2W x features."""
  features: int
  impl: str | None = None  # a `vqax.ops.resample` form; None: as `vqax.ops.forms` says
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    y = upsample2x(x.astype(self.dtype), kernel.astype(self.dtype), self.impl)
    return y + bias.astype(self.dtype)
