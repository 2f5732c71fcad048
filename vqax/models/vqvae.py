"""VQ-VAE for 64x64 log-mel patches (DCASE2020 Task 2 style anomalous-sound detection).

Encoder 1 -> 32 -> 64 -> 96 channels by stride-2 convolutions (64x64 -> 8x8), a 3x3 conv to `latent_dim`,
vector quantisation, and a mirrored decoder (8x8 -> 64x64 by stride-2 transposed convolutions, then a 3x3
conv to one channel). Channels-last throughout. With remat on, each down/up block is rematerialised and the
encoder and decoder run over `remat_groups` groups of patches in turn (patches are independent; see
`vqax.models.remat.grouped_remat` for why the blocks alone save nothing here).
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vqax import ops
from vqax.models.downsample import Downsample2x
from vqax.models.quantizer import VectorQuantizer
from vqax.models.remat import grouped_remat, maybe_remat
from vqax.models.upsample import Upsample2x


def conv3x3(features: int, name: str, dtype) -> nn.Conv:
  return ops.Conv(features, (3, 3), padding="SAME", dtype=dtype, name=name)


class DownBlock(nn.Module):
  """Conv 4x4 stride 2 (PyTorch padding 1) + ReLU: halves height and width."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    # Named as the nn.Conv this layer used to be, so earlier checkpoints keep their parameter paths.
    return nn.relu(Downsample2x(self.features, dtype=self.dtype, name="Conv_0")(x))


class UpBlock(nn.Module):
  """Transposed conv 4x4 stride 2 + ReLU: doubles height and width."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.relu(Upsample2x(self.features, dtype=self.dtype)(x))


class Encoder(nn.Module):
  channels: Sequence[int] = (32, 64, 96)
  latent_dim: int = 64
  dtype: jnp.dtype = jnp.float32
  remat_policy: str = "none"

  @nn.compact
  def __call__(self, x):
    block = maybe_remat(DownBlock, self.remat_policy)
    for i, features in enumerate(self.channels):
      x = block(features, self.dtype, name=f"down{i}")(x)
    return conv3x3(self.latent_dim, "to_latent", self.dtype)(x)


class Decoder(nn.Module):
  channels: Sequence[int] = (96, 64, 32)
  out_channels: int = 1
  dtype: jnp.dtype = jnp.float32
  remat_policy: str = "none"

  @nn.compact
  def __call__(self, z):
    block = maybe_remat(UpBlock, self.remat_policy)
    x = z
    for i, features in enumerate(self.channels):
      x = block(features, self.dtype, name=f"up{i}")(x)
    return conv3x3(self.out_channels, "to_output", self.dtype)(x)


class VQVAE(nn.Module):
  """x [N, 64, 64, 1] -> (reconstruction [N, 64, 64, 1] float32, aux).

  aux: codes [N, 8, 8], codebook_loss, commitment_loss, perplexity, usage, code_counts.
  """
  encoder_channels: Sequence[int] = (32, 64, 96)
  latent_dim: int = 64
  num_embeddings: int = 128
  dtype: jnp.dtype = jnp.float32
  remat_policy: str = "none"
  remat_groups: int = 1
  layer_forms: str = "auto"  # `vqax.ops.forms`: XLA's own layers or the XLA:CPU reformulations

  def setup(self):
    self.encoder = Encoder(self.encoder_channels, self.latent_dim, self.dtype, self.remat_policy)
    self.quantizer = VectorQuantizer(self.num_embeddings, self.latent_dim)
    self.decoder = Decoder(tuple(reversed(self.encoder_channels)), 1, self.dtype, self.remat_policy)

  def encode(self, x):
    """Patches -> (quantised latents, aux with codes); used by scoring without decoding."""
    with ops.forms.use(self.layer_forms):
      # The quantizer sees every patch at once: its code statistics are over the whole batch.
      z = grouped_remat(lambda m, xg: m.encoder(xg.astype(m.dtype)), self, x, self.remat_groups, self.remat_policy)
      return self.quantizer(z)

  def __call__(self, x):
    quantized, aux = self.encode(x)
    with ops.forms.use(self.layer_forms):
      reconstruction = grouped_remat(lambda m, q: m.decoder(q.astype(m.dtype)), self, quantized, self.remat_groups,
                                     self.remat_policy)
    return reconstruction.astype(jnp.float32), aux
