"""Class-conditional GAN for log-mel spectrograms: SNGAN-projection style (Miyato & Koyama, 2018).

Generator: noise z [B, latent_dim] + one-hot class [B, num_classes] -> Dense to a small [h0, w0, C] map ->
`num_upsamples` blocks of (nearest x2, 3x3 conv, GroupNorm, class-conditional scale/shift, ReLU) -> 3x3 conv
to one channel, cropped to the configured [n_mels, frames]. GroupNorm with a class-conditional affine is
the stateless stand-in for SNGAN's conditional BatchNorm: nothing to carry between steps, and the same
output for a sample whatever else is in its batch. The output is the normalised log-mel (no squashing):
the data loader standardises real spectrograms the same way.

Discriminator: [B, n_mels, frames] -> `num_downsamples` blocks of spectrally normalised convs (3x3, then
4x4 stride 2) with leaky ReLU -> sum over time and frequency -> h [B, C];
    D(x, y) = linear(h) + <embed(y), h>
the projection of the condition (one-hot y, so embed(y) is a learned class vector). Every conv, the linear
and the embedding are wrapped in `nn.SpectralNorm`; its power-iteration vectors live in the 'batch_stats'
collection: apply with `update_stats=True, mutable=['batch_stats']` in training steps.

Both networks take `dtype` (compute; params stay float32), `remat_policy` (per block, `vqax.models.remat`) and
`remat_groups`. Per-block remat alone saves almost nothing here (measured: the generator's gradient at 128 x
1292 needs as many bytes with it as without): the biggest block's backward needs all of its own interior
activations at once, and the block boundaries next to it are as big. Every sample is independent (GroupNorm
is per sample; spectral norm depends on the weights only), so with remat on each network also runs over
`remat_groups` groups of samples in turn (`remat.grouped_remat`), keeping one group's activations alive.
In the discriminator the groups read the spectral-norm statistics as they were; with `update_stats` one
more pass on a 1 x 1 dummy input then advances them, which gives exactly the ungrouped result (the power
iteration does not look at the input).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqax.errors import ConfigError
from vqax.models.remat import grouped_remat, maybe_remat, policy_for

Dtype = Any


def check_condition(condition: jax.Array, num_classes: int) -> None:
  """ConfigError when the condition is not [B, num_classes] (a one-hot vector per sample)."""
  if condition.ndim != 2 or condition.shape[-1] != num_classes:
    raise ConfigError(f"GAN condition has shape {tuple(condition.shape)}, expected [batch, num_classes="
                      f"{num_classes}] one-hot vectors (does num_classes match the data's classes?)")


class UpBlock(nn.Module):
  channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, condition):
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest")
    x = nn.Conv(self.channels, (3, 3), dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
    x = nn.GroupNorm(num_groups=min(8, self.channels), use_scale=False, use_bias=False, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="norm")(x)
    film = nn.Dense(2 * self.channels, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=nn.initializers.zeros, name="class_affine")(condition)
    scale, shift = jnp.split(film[:, None, None, :], 2, axis=-1)
    return nn.relu(x * (1.0 + scale) + shift)


class Generator(nn.Module):
  """(z [B, latent_dim], one-hot [B, num_classes]) -> log-mel [B, n_mels, frames] (float32)."""
  n_mels: int = 128
  frames: int = 1292
  num_classes: int = 2
  latent_dim: int = 128
  channels: tuple[int, ...] = (256, 128, 64, 32)  # one upsampling block per entry
  remat_policy: str = "none"
  remat_groups: int = 1  # with remat on: samples run in this many groups in turn
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def base_shape(self) -> tuple[int, int]:
    """The Dense map's [h0, w0]: the smallest that upsamples to at least [n_mels, frames]."""
    factor = 2 ** len(self.channels)
    return -(-self.n_mels // factor), -(-self.frames // factor)

  def __call__(self, z, condition):
    check_condition(condition, self.num_classes)
    inputs = jnp.concatenate([z.astype(jnp.float32), condition.astype(jnp.float32)], axis=-1)
    return grouped_remat(lambda m, part: m.synthesize(part), self, inputs, self.remat_groups, self.remat_policy)

  @nn.compact
  def synthesize(self, inputs):
    """[B, latent_dim + num_classes] (noise, one-hot condition) -> log-mel [B, n_mels, frames] float32."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h0, w0 = self.base_shape
    condition = inputs[:, -self.num_classes:].astype(self.dtype)
    x = inputs.astype(self.dtype)
    x = nn.Dense(h0 * w0 * self.channels[0], **kw, name="project")(x).reshape(-1, h0, w0, self.channels[0])
    block = maybe_remat(UpBlock, self.remat_policy)
    for i, channels in enumerate(self.channels):
      x = block(channels, **kw, name=f"up{i}")(x, condition)
    x = nn.Conv(1, (3, 3), **kw, name="to_spectrogram")(x)
    return x[:, :self.n_mels, :self.frames, 0].astype(jnp.float32)


class DownBlock(nn.Module):
  channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, update_stats: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # The wrapped layer's parameters sit under its own name ("conv"); the wrapper ("conv_sn") holds only
    # the power-iteration statistics.
    x = nn.SpectralNorm(nn.Conv(self.channels, (3, 3), **kw, name="conv"), name="conv_sn")(
        x, update_stats=update_stats)
    x = nn.leaky_relu(x, 0.2)
    x = nn.SpectralNorm(nn.Conv(self.channels, (4, 4), strides=(2, 2), **kw, name="down"), name="down_sn")(
        x, update_stats=update_stats)
    return nn.leaky_relu(x, 0.2)


class Discriminator(nn.Module):
  """(log-mel [B, n_mels, frames], one-hot [B, num_classes]) -> (logits [B] float32, {"features": h})."""
  num_classes: int = 2
  channels: tuple[int, ...] = (32, 64, 128, 256)  # one downsampling block per entry
  remat_policy: str = "none"
  remat_groups: int = 1  # with remat on: samples run in this many groups in turn
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __call__(self, x, condition, update_stats: bool = False):
    check_condition(condition, self.num_classes)
    b, height, width = x.shape
    if self.remat_policy in (None, "none") or min(self.remat_groups, b) <= 1:
      out, h = self.judge(x, condition, update_stats)
      return out, {"features": h}
    packed = jnp.concatenate([x.reshape(b, -1).astype(jnp.float32), condition.astype(jnp.float32)], axis=-1)

    def judge_group(m, part):
      out, h = m.judge(part[:, :height * width].reshape(-1, height, width), part[:, height * width:], False)
      return jnp.concatenate([out[:, None], h.astype(jnp.float32)], axis=-1)

    both = grouped_remat(judge_group, self, packed, self.remat_groups, self.remat_policy,
                         broadcast=("params", "batch_stats"))
    if update_stats and not self.is_initializing():
      self.judge(jnp.zeros((1, 1, 1), x.dtype), condition[:1], True)  # advance the statistics the groups read
    return both[:, 0], {"features": both[:, 1:].astype(self.dtype)}

  @nn.compact
  def judge(self, x, condition, update_stats: bool):
    """-> (logits [B] float32, features h [B, C]) with the spectral-norm statistics as stored (advanced
    when `update_stats`)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x[..., None].astype(self.dtype)
    block = maybe_remat(DownBlock, self.remat_policy, static_argnums=(2,))  # (self, x, update_stats)
    for i, channels in enumerate(self.channels):
      x = block(channels, **kw, name=f"down{i}")(x, update_stats)
    h = jnp.sum(x, axis=(1, 2))  # sum pooling, as SNGAN
    out = nn.SpectralNorm(nn.Dense(1, **kw, name="linear"), name="linear_sn")(h, update_stats=update_stats)[:, 0]
    embed = nn.SpectralNorm(nn.Dense(h.shape[-1], use_bias=False, **kw, name="embed"), name="embed_sn")(
        condition.astype(self.dtype), update_stats=update_stats)
    out = out + jnp.sum(embed * h, axis=-1)
    return out.astype(jnp.float32), h


def validate(module):
  """ConfigError for settings a GAN network cannot run with; returns the module."""
  if module.num_classes < 2:
    raise ConfigError(f"GAN num_classes={module.num_classes}: a conditional GAN needs at least 2 classes")
  if not module.channels:
    raise ConfigError("GAN channels is empty: expected one entry per up/downsampling block")
  if module.remat_policy not in (None, "none"):
    policy_for(module.remat_policy)
  if module.remat_groups < 1:
    raise ConfigError(f"GAN remat_groups={module.remat_groups}: expected an integer >= 1")
  if isinstance(module, Generator) and (module.n_mels < 1 or module.frames < 1):
    raise ConfigError(f"GAN spectrogram size [{module.n_mels}, {module.frames}] must be positive")
  return module


def one_hot(labels: jax.Array, num_classes: int) -> jax.Array:
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def sample_noise(rng: jax.Array, batch: int, latent_dim: int) -> jax.Array:
  return jax.random.normal(rng, (batch, latent_dim), jnp.float32)
