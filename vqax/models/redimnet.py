"""ReDimNet speaker-embedding model (IDRnD/ReDimNet `ReDimNetWrap`) in Flax Linen.

Log-mel front end -> ReDimNet backbone -> attentive statistics pooling -> BatchNorm -> Linear (192-d).
The module's fields carry the official constructor argument names, so a checkpoint's `model_config` builds
it unchanged (`redimnet_from_config`), and the named sizes b0...b6 are such configs (`SIZES`).

Layouts (channels-last, unlike the official channels-first code):
  2-D maps are [B, F, T, C] (frequency is the conv "height"), 1-D maps are [B, T, F*C] with channel index
  f*C + c -- the official frequency-major order, so converted 1-D weights (attention, pooling, head) act on
  the same channels. `to2d` always uses the current stage's (f, c).
Time is never downsampled; stages only trade frequency resolution for channels.
Apply with `capture_intermediates=True` to get every submodule's output (the parity tests compare them
with the official forward hooks).
"""
import dataclasses
import json
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqax.audio.melbanks import MelBanks
from vqax.errors import ConfigError
from vqax import ops
from vqax.models.remat import maybe_remat, policy_for

# PyTorch's default Conv/Linear weight init, U(+-1/sqrt(fan_in)), so training from scratch starts where the
# official recipe does. Biases start at zero (PyTorch draws them from the same range; it does not matter).
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

BLOCK_2D_TYPES = ("convnext_like", "convnext_like_relu", "basic_resnet", "basic_resnet_fwse")
BLOCK_1D_TYPES = ("conv+att", "att", "conv", "fc")
POOLING_FUNCS = ("ASTP", "TSTP")
FEAT_TYPES = ("pt", "pt_mel")
MODULE_ONLY_FIELDS = ("dtype", "param_dtype", "remat_policy", "layer_forms")

Dtype = Any


def to1d(x: jax.Array) -> jax.Array:
  """[B, F, T, C] -> [B, T, F*C], frequency-major (channel index f*C + c)."""
  b, f, t, c = x.shape
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(b, t, f * c)


def to2d(x: jax.Array, f: int, c: int) -> jax.Array:
  """Inverse of `to1d` for a map with `f` frequencies and `c` channels."""
  b, t, _ = x.shape
  return jnp.transpose(x.reshape(b, t, f, c), (0, 2, 1, 3))


def conv_groups(channels: int, group_divisor: int | None) -> int:
  """The official blocks' groups = channels // Gdiv, and a dense conv when Gdiv is None."""
  return 1 if group_divisor is None else channels // group_divisor


def exact_gelu(x):
  """GELU x * Phi(x) as PyTorch's nn.GELU() computes it, x/2 * (1 + erf(x / sqrt 2)).

  flax's nn.gelu(approximate=False) goes through erfc, which XLA:CPU evaluates about 3x slower (a
  [32, 6, 134, 192] map: 15.8 against 4.9 ms); the values agree to float32 rounding.
  """
  return 0.5 * x * (1 + jax.lax.erf(x * np.asarray(1 / np.sqrt(2), x.dtype)))


def _same(kernel_size: Sequence[int]):
  # PyTorch 'same' padding for odd kernels: symmetric k // 2 on each side.
  return tuple((k // 2, k // 2) for k in kernel_size)


class _Layers:
  """Mixin: layer factories with this module's dtypes and the official inits/eps."""
  dtype: Dtype
  param_dtype: Dtype

  def conv(self, features, kernel_size, *, groups=1, use_bias=True, strides=None, padding=None, name=None):
    return ops.Conv(features, tuple(kernel_size), strides=strides,
                   padding=_same(kernel_size) if padding is None else padding, feature_group_count=groups,
                   use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=TORCH_KERNEL_INIT, name=name)

  def dense(self, features, name=None):
    """A Linear, or a 1x1 convolution in channels-last layout."""
    return ops.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=TORCH_KERNEL_INIT,
                     name=name)

  def batch_norm(self, train: bool, eps: float = 1e-5, name=None):
    # PyTorch momentum 0.1 is Flax momentum 0.9; two-pass variance for parity with PyTorch.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=eps, use_fast_variance=False,
                        dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def layer_norm(self, name=None):
    # Every LayerNorm in ReDimNet (channels_first custom and nn.LayerNorm) uses eps 1e-6.
    return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=self.dtype, param_dtype=self.param_dtype,
                        name=name)


# ----------------------------------------------------------------------------------------------------------
# 2-D blocks
# ----------------------------------------------------------------------------------------------------------


class FwSE(nn.Module, _Layers):
  """Frequency-wise squeeze-excitation: one gate per frequency bin from the (C, T) mean."""
  num_freq: int
  se_channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(2, 3))  # [B, F]
    s = nn.relu(self.dense(self.se_channels, name="squeeze")(s))
    s = nn.sigmoid(self.dense(self.num_freq, name="exitation")(s))
    return x * s[:, :, None, None]


class ResBasicBlock(nn.Module, _Layers):
  """Official ResBasicBlock (stride 1, in == out): grouped 3x3 + 1x1, note ReLU *before* bn1."""
  channels: int
  num_freq: int
  group_divisor: int | None = 1
  use_fwse: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    groups = conv_groups(self.channels, self.group_divisor)
    pointwise = self.group_divisor is not None
    y = self.conv(self.channels, (3, 3), groups=groups, use_bias=False, name="conv1")(x)
    if pointwise:
      y = self.dense(self.channels, name="conv1pw")(y)
    y = self.batch_norm(train, name="bn1")(nn.relu(y))
    y = self.conv(self.channels, (3, 3), groups=groups, use_bias=False, name="conv2")(y)
    if pointwise:
      y = self.dense(self.channels, name="conv2pw")(y)
    y = self.batch_norm(train, name="bn2")(y)
    if self.use_fwse:
      se_channels = min(64, max(self.channels, 32))
      y = FwSE(self.num_freq, se_channels, dtype=self.dtype, param_dtype=self.param_dtype, name="se")(y)
    # XLA:CPU forms keep the residual stream as a buffer (see `vqax.ops.materialized`); elsewhere a no-op.
    return ops.materialized(nn.relu(y + x))


class ConvNeXtLikeBlock(nn.Module, _Layers):
  """Grouped convs (one per kernel size, concatenated) -> BN -> act -> 1x1 -> + skip; 1-D or 2-D."""
  channels: int
  kernel_sizes: Sequence[Sequence[int]] = ((3, 3),)
  group_divisor: int | None = 1
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    groups = conv_groups(self.channels, self.group_divisor)
    y = jnp.concatenate([
        self.conv(self.channels, k, groups=groups, name=f"dwconvs_{i}")(x)
        for i, k in enumerate(self.kernel_sizes)], axis=-1)
    y = self.batch_norm(train, name="norm")(y)
    y = nn.relu(y) if self.activation == "relu" else exact_gelu(y)
    return x + self.dense(self.channels, name="pwconv1")(y)


class ChannelSqueeze(nn.Module, _Layers):
  """Brings c * conv_exp channels back to c so the stage output reshapes to F*C: 3x3 -> BN -> act -> 1x1."""
  channels: int
  group_divisor: int | None = 1
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    groups = conv_groups(self.channels, self.group_divisor)
    x = self.conv(self.channels, (3, 3), groups=groups, name="conv")(x)
    x = self.batch_norm(train, eps=1e-6, name="norm")(x)
    x = nn.relu(x) if self.activation == "relu" else exact_gelu(x)
    return self.dense(self.channels, name="pwconv")(x)


def _block2d(block_type: str, num_freq: int, group_divisor: int | None) -> tuple[type, dict]:
  """The official ConvBlock2d choice: block class and its arguments other than channels."""
  if block_type.startswith("convnext_like"):
    activation = "relu" if block_type == "convnext_like_relu" else "gelu"
    return ConvNeXtLikeBlock, dict(kernel_sizes=((3, 3),), group_divisor=group_divisor, activation=activation)
  return ResBasicBlock, dict(num_freq=num_freq, group_divisor=group_divisor,
                             use_fwse=block_type == "basic_resnet_fwse")


# ----------------------------------------------------------------------------------------------------------
# 1-D (time context) blocks
# ----------------------------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module, _Layers):
  """Self-attention as in the official (wav2vec2) code: q is scaled after its projection, no mask."""
  embed_dim: int
  num_heads: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, _ = x.shape
    head_dim = self.embed_dim // self.num_heads
    split = lambda y: y.reshape(b, t, self.num_heads, head_dim)
    q = split(self.dense(self.embed_dim, name="q_proj")(x) * head_dim**-0.5)
    k = split(self.dense(self.embed_dim, name="k_proj")(x))
    v = split(self.dense(self.embed_dim, name="v_proj")(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, self.embed_dim)
    return self.dense(self.embed_dim, name="out_proj")(out)


class FeedForward(nn.Module, _Layers):
  hidden: int
  out: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    # 'gelu_new' in the official code: the tanh approximation, unlike every other GELU in ReDimNet.
    x = nn.gelu(self.dense(self.hidden, name="intermediate_dense")(x), approximate=True)
    return self.dense(self.out, name="output_dense")(x)


class TransformerEncoderLayer(nn.Module, _Layers):
  """Post-norm encoder layer: x = LN(x + MHA(x)); x = LN(x + FFN(x))."""
  n_state: int
  n_mlp: int
  n_head: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attention = MultiHeadAttention(self.n_state, self.n_head, **kw, name="attention")
    x = self.layer_norm(name="layer_norm")(x + attention(x))
    x = x + FeedForward(self.n_mlp, self.n_state, **kw, name="feed_forward")(x)
    return self.layer_norm(name="final_layer_norm")(x)


class PosEncConv(nn.Module, _Layers):
  """x + LN(depthwise conv(x)): the convolutional position encoding of the 'att' block."""
  channels: int
  kernel_size: int = 59
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = self.conv(self.channels, (self.kernel_size,), groups=self.channels, name="conv")(x)
    return x + self.layer_norm(name="norm")(y)


class TimeContextBlock1d(nn.Module, _Layers):
  """Bottleneck over the whole F*C vector: 1x1 down -> LN -> time-context layers -> 1x1 up -> + skip.

  The time-context layers are named `tcm_<i>` after their index in the official `tcm` Sequential.
  """
  channels: int
  hidden: int
  block_type: str = "conv+att"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = self.hidden
    skip = x
    x = self.dense(h, name="red_dim_conv")(x)
    x = self.layer_norm(name="red_dim_norm")(x)
    if self.block_type == "fc":
      x = self.layer_norm(name="tcm_1")(self.dense(2 * h, name="tcm_0")(x))
      x = self.dense(h, name="tcm_3")(exact_gelu(x))
    else:
      if self.block_type == "conv+att":
        layers = [ConvNeXtLikeBlock(h, ((k,),), 1, **kw, name=f"tcm_{i}")
                  for i, k in enumerate((7, 19, 31, 59))]
        layers.append(TransformerEncoderLayer(h, h, 4, **kw, name="tcm_4"))
      elif self.block_type == "att":
        layers = [PosEncConv(h, 59, **kw, name="tcm_0"),
                  TransformerEncoderLayer(h, 2 * h, 4, **kw, name="tcm_1")]
      else:  # "conv"
        layers = [ConvNeXtLikeBlock(h, ((7,), (15,), (31,)), 1, **kw, name=f"tcm_{i}")
                  for i in range(4)]
      for layer in layers:
        x = layer(x, train)
    return skip + self.dense(self.channels, name="exp_dim_conv")(x)


# ----------------------------------------------------------------------------------------------------------
# Backbone
# ----------------------------------------------------------------------------------------------------------


class WeightedSum(nn.Module):
  """Learnable per-channel softmax weights over N earlier 1-D outputs (official `weigth1d`)."""
  num_inputs: int
  channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array]) -> jax.Array:
    w = self.param("w", nn.initializers.zeros, (self.num_inputs, self.channels), self.param_dtype)
    w = jax.nn.softmax(w.astype(jnp.float32), axis=0).astype(self.dtype)
    # A running sum rather than sum(stack(...)): one fused loop instead of a copy of every input and a
    # reduction (forward + backward over six [32, 134, 600] inputs: 140 -> 20 ms on a 2-core CPU).
    total = w[0] * inputs[0].astype(self.dtype)
    for i in range(1, len(inputs)):
      total = total + w[i] * inputs[i].astype(self.dtype)
    return total


class Stage(nn.Module, _Layers):
  """Weighted input -> 2-D -> frequency-only strided conv -> 2-D blocks (-> squeeze) -> 1-D -> time context.

  Each 2-D block, the squeeze and the time-context block are rematerialised with `remat_policy`.
  """
  F: int
  C: int
  f: int  # frequencies of the stage input
  c: int  # channels of the stage input
  stride: int
  num_blocks: int
  conv_exp: int
  att_block_red: int | None
  block_2d_type: str
  block_1d_type: str
  group_divisor: int | None
  remat_policy: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array], train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    remat = lambda cls: maybe_remat(cls, self.remat_policy, static_argnums=(2,))  # (self, x, train)
    n = len(inputs)
    # With one input the official weight is a frozen [1,1,1,1] tensor; kept so parameter counts match.
    x = WeightedSum(n, self.F * self.C if n > 1 else 1, **kw, name="aggregate")(inputs)
    s, e = self.stride, self.conv_exp
    x = self.conv(s * self.c * e, (s, 1), strides=(s, 1), padding="VALID", name="freq_conv")(
        to2d(x, self.f, self.c))
    c, f = s * self.c, self.f // s
    block_cls, block_kw = _block2d(self.block_2d_type, f, self.group_divisor)
    for j in range(self.num_blocks):
      x = remat(block_cls)(c * e, **block_kw, **kw, name=f"block{j}")(x, train)
    if e != 1:
      activation = "relu" if "relu" in self.block_1d_type and "relu" in self.block_2d_type else "gelu"
      x = remat(ChannelSqueeze)(c, self.group_divisor, activation, **kw,
                                name="squeeze")(x, train)
    x = to1d(x)
    if self.att_block_red is not None:
      hidden = (self.F * self.C) // self.att_block_red
      x = remat(TimeContextBlock1d)(self.F * self.C, hidden, self.block_1d_type, **kw,
                                    name="time_context")(
          x, train)
    return x


class ReDimNetBackbone(nn.Module, _Layers):
  """Spectrogram [B, F, T] -> 1-D features [B, T, F*C] (or [B, T, out_channels] with `out_channels`)."""
  F: int
  C: int
  stages_setup: Sequence[Sequence[Any]]
  block_1d_type: str = "conv+att"
  block_2d_type: str = "convnext_like"
  group_divisor: int | None = 1
  out_channels: int | None = None
  feat_agg_dropout: float = 0.0
  remat_policy: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, spec: jax.Array, train: bool = False):
    """Returns (features, all 1-D outputs: stem, each stage, final weighted sum)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = self.conv(self.C, (3, 3), name="stem_conv")(spec[..., None].astype(self.dtype))
    outputs = [to1d(self.layer_norm(name="stem_norm")(x))]
    c, f = self.C, self.F
    for i, (stride, num_blocks, conv_exp, _kernel_sizes, att_block_red) in enumerate(self.stages_setup):
      x = Stage(self.F, self.C, f, c, stride, num_blocks, conv_exp, att_block_red, self.block_2d_type,
                self.block_1d_type, self.group_divisor, self.remat_policy, **kw,
                name=f"stage{i}")(
                    tuple(outputs), train)
      if self.feat_agg_dropout > 0:
        x = nn.Dropout(self.feat_agg_dropout)(x, deterministic=not train)
      outputs.append(x)
      c, f = stride * c, f // stride
    x = WeightedSum(len(outputs), self.F * self.C, **kw, name="fin_wght1d")(outputs)
    outputs.append(x)
    if self.out_channels is not None:
      x = self.dense(self.out_channels, name="mfa_conv")(x)
      x = self.batch_norm(train, name="mfa_norm")(x)
    return x, outputs


# ----------------------------------------------------------------------------------------------------------
# Pooling and the full model
# ----------------------------------------------------------------------------------------------------------


class ASTP(nn.Module, _Layers):
  """Attentive statistics pooling over time; with `global_context_att` the attention also sees the
  utterance mean and (unbiased) std. Statistics are computed in float32 whatever the compute dtype."""
  in_dim: int
  bottleneck_dim: int = 128
  global_context_att: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, T, D] -> [B, 2D]
    x32 = x.astype(jnp.float32)
    x_in = x
    if self.global_context_att:
      mean = jnp.broadcast_to(jnp.mean(x32, axis=1, keepdims=True), x32.shape)
      std = jnp.broadcast_to(jnp.sqrt(jnp.var(x32, axis=1, ddof=1, keepdims=True) + 1e-7), x32.shape)
      x_in = jnp.concatenate([x32, mean, std], axis=-1)
    alpha = jnp.tanh(self.dense(self.bottleneck_dim, name="linear1")(x_in))
    alpha = jax.nn.softmax(self.dense(self.in_dim, name="linear2")(alpha).astype(jnp.float32), axis=1)
    mean = jnp.sum(alpha * x32, axis=1)
    var = jnp.sum(alpha * x32**2, axis=1) - mean**2
    return jnp.concatenate([mean, jnp.sqrt(jnp.maximum(var, 1e-7))], axis=-1)


class TSTP(nn.Module):
  """Temporal statistics pooling: mean ++ unbiased std over time."""
  in_dim: int
  global_context_att: bool = False  # accepted (and ignored) like the official class
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    return jnp.concatenate([jnp.mean(x, axis=1), jnp.sqrt(jnp.var(x, axis=1, ddof=1) + 1e-7)], axis=-1)


_M_STAGES = ((1, 2, 1, ((3, 3),), 12), (2, 2, 1, ((3, 3),), 12), (1, 3, 1, ((3, 3),), 12),
             (2, 4, 1, ((3, 3),), 8), (1, 4, 1, ((3, 3),), 8), (2, 4, 1, ((3, 3),), 4))


class ReDimNet(nn.Module, _Layers):
  """Waveform [B, T] at 16 kHz -> (embedding [B, embed_dim], aux).

  Architecture fields are `ReDimNetWrap`'s arguments with its defaults (the "M" setup); use
  `redimnet(size)` or `redimnet_from_config(model_config)` rather than filling them by hand. aux holds
  'spec' [B, F, T], 'frame_features' [B, T, D] (backbone output), 'pooled' [B, 2D], plus 'outputs_1d'
  with `return_all_outputs` and 'logits' with `num_classes` (the official forward returns the logits in
  place of the embedding then). The front end always runs in float32, the rest in `dtype`; pooling
  statistics in float32. BatchNorm statistics live in 'batch_stats' and update when `train` is True.
  """
  F: int = 72
  C: int = 16
  block_1d_type: str = "att"
  block_2d_type: str = "convnext_like"
  stages_setup: Sequence[Sequence[Any]] = _M_STAGES
  group_divisor: int | None = 4
  out_channels: int | None = None
  embed_dim: int = 192
  num_classes: int | None = None
  class_dropout: float = 0.0
  feat_agg_dropout: float = 0.0
  head_activation: str | None = None
  hop_length: int = 160
  pooling_func: str = "ASTP"
  feat_type: str = "pt"
  global_context_att: bool = False
  emb_bn: bool = False
  spec_params: Any = None  # MelBanks keyword arguments; None means ReDimNetWrap's default
  return_all_outputs: bool = False
  tf_optimized_arch: bool = False
  # Not official arguments: how to run it.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_policy: str = "none"
  layer_forms: str = "auto"  # `vqax.ops.forms`: XLA's own layers or the XLA:CPU reformulations

  def setup(self):
    _validate(self)
    self.spec = MelBanks(n_mels=self.F, hop_length=self.hop_length, **melbank_kwargs(self.spec_params))
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.backbone = ReDimNetBackbone(self.F, self.C, self.stages_setup, self.block_1d_type,
                                     self.block_2d_type, self.group_divisor, self.out_channels,
                                     self.feat_agg_dropout, self.remat_policy, **kw)
    pool_dim = self.F * self.C if self.out_channels is None else self.out_channels
    pool_cls = ASTP if self.pooling_func == "ASTP" else TSTP
    self.pool = pool_cls(pool_dim, global_context_att=self.global_context_att, **kw)
    self.bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=False, **kw)
    self.linear = self.dense(self.embed_dim)
    if self.emb_bn:
      self.bn2 = nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=False, **kw)
    if self.num_classes is not None:
      self.cls_head = self.dense(self.num_classes)

  def __call__(self, wave: jax.Array, train: bool = False):
    spec = self.spec(wave, train)
    return self.embed_features(spec, train)

  def embed_features(self, spec: jax.Array, train: bool = False):
    """Same as `__call__` from precomputed log-mel features [B, F, T] (the official `spec` output)."""
    with ops.forms.use(self.layer_forms):
      return self._embed(spec, train)

  def _embed(self, spec, train):
    frames, outputs_1d = self.backbone(spec, train)
    pooled = self.pool(frames)
    x = self.bn(pooled, use_running_average=not train)
    embedding = self.linear(x)
    if self.emb_bn:
      embedding = self.bn2(embedding, use_running_average=not train)
    aux = {"spec": spec, "frame_features": frames, "pooled": pooled}
    if self.return_all_outputs:
      aux["outputs_1d"] = outputs_1d
    if self.num_classes is not None:
      hidden = nn.relu(embedding)
      if self.class_dropout > 0:
        hidden = nn.Dropout(self.class_dropout, deterministic=not train)(hidden)
      aux["logits"] = self.cls_head(hidden)
    return embedding, aux


# ----------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------

# ReDimNetWrap's own default for spec_params (its MelBanks defaults apply to every key left out).
DEFAULT_SPEC_PARAMS = {"do_spec_aug": False, "freq_mask_width": (0, 6), "time_mask_width": (0, 8)}

_COMMON = {
    "block_1d_type": "conv+att", "out_channels": None, "embed_dim": 192, "num_classes": None,
    "class_dropout": 0.0, "feat_agg_dropout": 0.0, "head_activation": None, "hop_length": 240,
    "pooling_func": "ASTP", "feat_type": "pt", "global_context_att": True, "emb_bn": False,
    "spec_params": DEFAULT_SPEC_PARAMS, "return_all_outputs": False, "tf_optimized_arch": False,
}


def _stages(*rows):
  """(stride, num_blocks, conv_exp, att_block_red) rows -> official stages_setup (kernel sizes unused)."""
  return tuple((s, n, e, ((3, 3),), red) for s, n, e, red in rows)


# Released sizes (SPEC section 2; the parity fixture's `param_counts` gives the same configs and counts).
# hop 240 and b2's stride-3 stage follow the released checkpoints, see the fixture's `config_provenance`.
SIZES: dict[str, dict] = {
    "b0": {**_COMMON, "F": 60, "C": 10, "block_2d_type": "basic_resnet", "group_divisor": 1,
           "stages_setup": _stages((1, 2, 1, 30), (2, 3, 2, 30), (1, 3, 3, 30), (2, 4, 2, 10),
                                   (1, 3, 1, 10))},
    "b1": {**_COMMON, "F": 72, "C": 12, "block_2d_type": "convnext_like", "group_divisor": 8,
           "stages_setup": _stages((1, 2, 1, None), (2, 3, 1, None), (3, 4, 1, 12), (2, 5, 1, 12),
                                   (2, 3, 1, 8))},
    "b2": {**_COMMON, "F": 72, "C": 16, "block_2d_type": "convnext_like", "group_divisor": 4,
           "stages_setup": _stages((1, 2, 1, 12), (2, 2, 1, 12), (1, 3, 1, 12), (3, 4, 1, 8), (1, 4, 1, 8),
                                   (2, 4, 1, 4))},
    "b3": {**_COMMON, "F": 72, "C": 16, "block_2d_type": "basic_resnet_fwse", "group_divisor": 1,
           "stages_setup": _stages((1, 6, 4, 32), (2, 6, 2, 32), (1, 8, 2, 32), (2, 10, 2, 16),
                                   (1, 10, 1, 16), (2, 8, 1, 16))},
    "b4": {**_COMMON, "F": 72, "C": 32, "block_2d_type": "basic_resnet_fwse", "group_divisor": 1,
           "stages_setup": _stages((1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24),
                                   (2, 4, 1, 16))},
    "b5": {**_COMMON, "F": 72, "C": 32, "block_2d_type": "basic_resnet_fwse", "group_divisor": 16,
           "stages_setup": _stages((1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24),
                                   (2, 4, 1, 16))},
    "b6": {**_COMMON, "F": 72, "C": 32, "block_2d_type": "basic_resnet", "group_divisor": 32,
           "stages_setup": _stages((1, 4, 4, 32), (2, 6, 2, 32), (1, 6, 2, 24), (3, 8, 1, 24), (1, 8, 1, 16),
                                   (2, 8, 1, 16))},
}


def melbank_kwargs(spec_params) -> dict:
  """A model_config's `spec_params` as MelBanks keyword arguments (official default when None)."""
  params = dict(DEFAULT_SPEC_PARAMS if spec_params is None else spec_params)
  for key in ("freq_mask_width", "time_mask_width"):
    if key in params:
      params[key] = tuple(params[key])
  return params


def _config_fields() -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(ReDimNet)
               if f.init and f.name not in ("parent", "name") and f.name not in MODULE_ONLY_FIELDS)


def normalize_config(model_config: dict) -> dict:
  """Official model_config -> complete dict (ReDimNetWrap defaults filled in, sequences as tuples)."""
  defaults = {f.name: f.default for f in dataclasses.fields(ReDimNet) if f.name in _config_fields()}
  unknown = sorted(set(model_config) - set(defaults))
  if unknown:
    raise ConfigError(f"model_config has unknown keys {unknown}; "
                      f"expected ReDimNetWrap arguments {sorted(defaults)}")
  config = {**defaults, **model_config}
  config["spec_params"] = melbank_kwargs(config["spec_params"])
  config["stages_setup"] = tuple(_stage_tuple(row) for row in config["stages_setup"])
  return config


def _stage_tuple(row) -> tuple:
  if len(row) != 5:
    raise ConfigError(f"stages_setup row {row!r} must be "
                      "(stride, num_blocks, conv_exp, kernel_sizes, att_block_red)")
  stride, num_blocks, conv_exp, kernel_sizes, red = row
  kernel_sizes = tuple(tuple(k) if isinstance(k, (list, tuple)) else k for k in kernel_sizes)
  return (int(stride), int(num_blocks), int(conv_exp), kernel_sizes, None if red is None else int(red))


def _validate(model: ReDimNet) -> None:
  """ConfigError for options the official code rejects or this port does not implement."""
  choices = {"block_2d_type": BLOCK_2D_TYPES, "block_1d_type": BLOCK_1D_TYPES,
             "pooling_func": POOLING_FUNCS, "feat_type": FEAT_TYPES}
  for key, valid in choices.items():
    if getattr(model, key) not in valid:
      raise ConfigError(f"model_config {key}={getattr(model, key)!r} is not supported; "
                        f"expected one of {valid}")
  if model.tf_optimized_arch:
    raise ConfigError("model_config tf_optimized_arch=True is not supported (the official code lacks it too)")
  if model.head_activation is not None:
    raise ConfigError(f"model_config head_activation={model.head_activation!r} is not supported; "
                      "expected None")
  if model.remat_policy not in (None, "none"):
    policy_for(model.remat_policy)  # raises ConfigError naming the valid policies
  unknown = sorted(set(melbank_kwargs(model.spec_params)) - set(_melbank_fields()))
  if unknown:
    raise ConfigError(f"model_config spec_params has unknown keys {unknown}; expected MelBanks arguments")
  f = model.F
  for i, (stride, _n, _e, _k, red) in enumerate(model.stages_setup):
    if stride not in (1, 2, 3) or f % stride:
      raise ConfigError(f"stages_setup[{i}] stride={stride}: expected 1, 2 or 3 dividing the {f} "
                        "frequencies left")
    f //= stride
    if red is not None and "att" in model.block_1d_type and ((model.F * model.C) // red) % 4:
      raise ConfigError(f"stages_setup[{i}] att_block_red={red}: F*C//att_block_red must split into 4 heads")


def _melbank_fields() -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(MelBanks)
               if f.init and f.name not in ("parent", "name", "n_mels", "hop_length"))


def redimnet_from_config(model_config: dict, **overrides) -> ReDimNet:
  """Build the model from an official `model_config` dict (as stored in release checkpoints).

  `overrides` may replace config keys or set run options (`dtype`, `param_dtype`, `remat_policy`).
  """
  run = {k: overrides.pop(k) for k in MODULE_ONLY_FIELDS if k in overrides}
  config = normalize_config({**model_config, **overrides})
  model = ReDimNet(**config, **run)
  _validate(model)
  return model


def redimnet(size: str, **overrides) -> ReDimNet:
  """A named size, b0...b6 (SPEC section 2 / official released configs)."""
  if size not in SIZES:
    raise ConfigError(f"unknown ReDimNet size {size!r}; expected one of {', '.join(SIZES)}")
  return redimnet_from_config(SIZES[size], **overrides)


def config_to_json(config: dict) -> dict:
  """Normalised config with tuples as lists (what `json.dump` writes anyway), for sidecar files."""
  return json.loads(json.dumps(normalize_config(config)))
