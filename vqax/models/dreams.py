"""DreaMS, the self-supervised transformer over tandem mass spectra (pluskal-lab/DreaMS), in Flax Linen.

Bushuiev et al., "Self-supervised learning of molecular representations from millions of tandem mass
spectra" (Nat. Biotechnol. 2025). A spectrum is a set of peaks (m/z, relative intensity) with the
precursor as token 0 (intensity 1.1); zero rows are padding.

  token   = concat(ff_peak(m/z / max_mz, intensity) [d_peak], ff_fourier(FourierFeatures(m/z)) [d_fourier])
  encoder = n_layers pre-LN layers: x += Attn(LN(x)) + Graphormer m/z bias; x += FFN(LN(x)); final LN
  heads   = masked m/z classes over max_mz / hot_mz_bin_size bins (ff_out) and retention order of a pair
            of spectra from the concatenated precursor outputs (ro_out)

The embedding of a spectrum is the precursor token's output, `outputs["embedding"]`.

Port choices (the official code is the reference; `dreams_tiny_parity.json` lists its pitfalls):
- Graphormer bias. The official code builds dists = F_i - F_j for the Fourier-MLP output F ([B, N, N,
  d_fourier]) and adds dists.sum(-1) = s_i - s_j (s = F.sum(-1)) to every head's logits. The query term s_i
  is constant along each softmax row, so it cancels: the default "split" form adds the per-key bias -s_j
  ([B, 1, 1, N]) and never builds the 4-D tensor. "materialized" keeps the official tensor (forced to
  exist with an optimization barrier, as PyTorch allocates it) for memory comparisons.
- Padding mask. The official masked_fill uses padding[:, None, :, None]: it masks padding QUERY rows
  (which become uniform) and lets every real token attend to padding keys, so outputs depend on the
  padding length. `padding_mask="official"` reproduces that (needed for the released weights);
  "keys" masks padding keys, as was intended.
- Fourier features are computed in float32 whatever `dtype` is: their arguments reach 1e7 rad, and the
  official features are float32 values of fl32(fl32(2 pi) * m/z) * b, evaluated elementwise as here.
  The frequency table is a parameter (it is in the official state dict and parameter count) behind
  stop_gradient unless `fourier_trainable`; `frozen_params_mask` excludes it from an optimizer.
- Attention goes through `jax.nn.dot_product_attention` (the fused cuDNN kernel with
  `attention_backend="cudnn"` where it applies). It has no dropout on the attention probabilities, so a
  training step with `att_dropout > 0` and the explicit form `attention_impl="explicit"` (which also sows
  the probabilities for parity tests) use einsum + softmax.
- Layers run under `nn.scan` (parameters stacked on a leading layer axis) and `nn.remat` with the named
  policy of `vqax.models.remat`; compute in `dtype`, parameters in `param_dtype` (float32).
- Dense layers are `vqax.ops.Dense` / `DenseGeneral`: on XLA:CPU (`layer_forms`) each [B, N, C] @ W runs as
  one 2-D matmul, whose kernel gradient needs no transposed copy of the activations (a fifth of the
  full model's step at 2 x 101 tokens went to those copies); elsewhere XLA's own.
"""
import dataclasses
import functools
from math import ceil
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqax import ops
from vqax.errors import ConfigError
from vqax.models.remat import policy_for

Dtype = Any

GRAPHORMER_BIAS_FORMS = ("split", "materialized")
PADDING_MASKS = ("official", "keys")
ATTENTION_IMPLS = ("dot_product_attention", "explicit")

# PyTorch's default Linear init, U(+-1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)), for the MLPs the
# official code leaves at their defaults. Their biases start at zero here (PyTorch draws them too).
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def lin_float_int_frequencies(x_min: float = 1e-4, x_max: float = 1000.0) -> np.ndarray:
  """The official `lin_float_int` Fourier frequencies: 1/(x_min i) for even i < 1/x_min, then 1/i for
  2 <= i < x_max, built in float64 and rounded to float32 (5997 frequencies at the defaults)."""
  freqs = [1 / (x_min * i) for i in range(2, ceil(1 / x_min), 2)] + [1 / i for i in range(2, ceil(x_max))]
  return np.asarray(freqs, np.float64).astype(np.float32)


def num_mz_bins(max_mz: float, bin_size: float) -> int:
  """max_mz / bin_size, which must be a whole number (official `num_hot_classes`)."""
  n = max_mz / bin_size
  if n != int(n):
    raise ConfigError(f"max_mz / hot_mz_bin_size = {max_mz} / {bin_size} is not a whole number of bins")
  return int(n)


class FourierFeatures(nn.Module):
  """m/z [..., 1] -> [cos(2 pi m/z b), sin(2 pi m/z b)] [..., 2F], always in float32."""
  x_min: float = 1e-4
  x_max: float = 1000.0
  trainable: bool = False

  @nn.compact
  def __call__(self, mz: jax.Array) -> jax.Array:
    table = lin_float_int_frequencies(self.x_min, self.x_max)
    b = self.param("b", lambda _key, shape: jnp.asarray(table).reshape(shape), table.shape)
    if not self.trainable:
      b = jax.lax.stop_gradient(b)
    # fl32(fl32(2 pi) * x) * b elementwise, bitwise like torch's (2 * pi * x) @ b with K = 1, and never a
    # matmul that a GPU might run in reduced precision.
    arg = (mz.astype(jnp.float32) * np.float32(2 * np.pi)) * b.astype(jnp.float32)
    return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)


class FeedForward(nn.Module):
  """The official `FeedForward` MLP: (Linear -> Dropout -> ReLU) x (depth - 1) -> Linear [-> ReLU]."""
  hidden: int
  out: int
  depth: int
  act_last: bool = True
  use_bias: bool = True
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for layer in range(self.depth):
      last = layer == self.depth - 1
      x = ops.Dense(self.out if last else self.hidden, use_bias=self.use_bias, dtype=self.dtype,
                    param_dtype=self.param_dtype, kernel_init=TORCH_KERNEL_INIT, name=f"dense_{layer}")(x)
      if not last:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      if not last or self.act_last:
        x = nn.relu(x)
    return x


class SelfAttention(nn.Module):
  """Multi-head self-attention with an additive bias and a boolean keep-mask (both broadcast to
  [B, H, N, N]); heads split the channels contiguously, as the official packed weights do."""
  d_model: int
  n_heads: int
  use_bias: bool = False
  att_dropout: float = 0.0
  impl: str = "dot_product_attention"
  backend: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, bias, keep, train: bool = False):
    head_dim = self.d_model // self.n_heads
    # The official attention init: N(0, sqrt(2 / (5 d))) for all four projections, biases zero.
    init = nn.initializers.normal(np.sqrt(2 / (5 * self.d_model)))
    proj = functools.partial(ops.DenseGeneral, features=(self.n_heads, head_dim), use_bias=self.use_bias,
                             kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype)
    q, k, v = proj(name="query")(x), proj(name="key")(x), proj(name="value")(x)
    scale = head_dim ** -0.5
    explicit = self.impl == "explicit" or (train and self.att_dropout > 0)
    if explicit:
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * np.float32(scale)
      if bias is not None:
        logits = logits + bias
      logits = jnp.where(keep, logits, np.float32(-1e9))  # official masked_fill value: masked rows stay finite
      weights = jax.nn.softmax(logits, axis=-1)
      self.sow("intermediates", "attention_weights", weights)
      weights = nn.Dropout(self.att_dropout, deterministic=not train)(weights)
      out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    else:
      out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=keep, scale=scale,
                                         implementation=self.backend)
    return ops.DenseGeneral(self.d_model, axis=(-2, -1), use_bias=self.use_bias, kernel_init=init,
                            dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)


class EncoderLayer(nn.Module):
  """One official `TransformerEncoder` layer (pre-LN by default); returns (x, None) for `nn.scan`."""
  d_model: int
  n_heads: int
  transformer_bias: bool = False
  pre_norm: bool = True
  att_dropout: float = 0.0
  residual_dropout: float = 0.0
  ff_dropout: float = 0.0
  graphormer_bias: str = "split"
  attention_impl: str = "dot_product_attention"
  attention_backend: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _norm(self, name):
    # torch.nn.LayerNorm: eps 1e-5, biased variance.
    return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=self.dtype, param_dtype=self.param_dtype,
                        name=name)

  @nn.compact
  def __call__(self, x, graphormer, keep, train: bool = False):
    if self.graphormer_bias == "materialized" and graphormer is not None:
      bias = jnp.sum(graphormer, axis=-1)[:, None]  # [B, N, N, d] -> [B, 1, N, N], in every layer as officially
    else:
      bias = graphormer  # [B, 1, 1, N] per-key form (or None)
    residual_drop = nn.Dropout(self.residual_dropout, deterministic=not train)
    h = self._norm("attention_norm")(x) if self.pre_norm else x
    self.sow("intermediates", "attention_input", h)
    h = SelfAttention(self.d_model, self.n_heads, self.transformer_bias, self.att_dropout, self.attention_impl,
                      self.attention_backend, self.dtype, self.param_dtype, name="attention")(h, bias, keep, train)
    self.sow("intermediates", "attention_output", h)
    x = x + residual_drop(h)
    if not self.pre_norm:
      x = self._norm("attention_norm")(x)
    h = self._norm("ffn_norm")(x) if self.pre_norm else x
    # The official FFN init: N(0, sqrt(2 / (ff_dim + d))) = sqrt(2 / (5 d)) with ff_dim = 4 d; biases zero.
    init = nn.initializers.normal(np.sqrt(2 / (5 * self.d_model)))
    dense = functools.partial(ops.Dense, use_bias=self.transformer_bias, kernel_init=init, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    h = nn.relu(dense(4 * self.d_model, name="ffn_in")(h))
    h = nn.Dropout(self.ff_dropout, deterministic=not train)(h)
    h = dense(self.d_model, name="ffn_out")(h)
    self.sow("intermediates", "ffn_output", h)
    x = x + residual_drop(h)
    if not self.pre_norm:
      x = self._norm("ffn_norm")(x)
    self.sow("intermediates", "layer_output", x)
    return x, None


class DreaMS(nn.Module):
  """Spectra [B, N, 2] (or retention-order pairs [B, 2, N, 2]) -> (outputs, aux).

  Fields default to the official pre-training flags (`training/pre_train.sh`); names follow the
  official arguments. outputs: 'per_peak' [..., N, d_model] (after the final LayerNorm), 'embedding'
  [..., d_model] (precursor token); with the m/z head 'mz_logits' [..., K, num_mz_bins] at `mz_positions`
  [..., K] (every position when None); for pairs with the retention-order head 'ro_logit' [B] (the
  logit that spectrum 1 elutes before spectrum 2). aux: 'padding_mask' [..., N].
  """
  d_peak: int = 44
  d_fourier: int = 980
  n_layers: int = 7
  n_heads: int = 8
  ff_peak_depth: int = 1
  ff_fourier_depth: int = 5
  ff_fourier_d: int = 512
  ff_out_depth: int = 1
  ffs_bias: bool = True           # not --no_ffs_bias
  transformer_bias: bool = False  # --no_transformer_bias
  pre_norm: bool = True
  dropout: float = 0.1            # ff_peak / ff_fourier / ff_out hidden layers
  att_dropout: float = 0.1
  residual_dropout: float = 0.1
  ff_dropout: float = 0.1
  max_mz: float = 1000.0          # dformat A: m/z scale of ff_peak and top of the Fourier range
  fourier_x_min: float = 1e-4     # dformat A max_tbxic_stdev, the official x_min
  fourier_trainable: bool = False
  graphormer_mz_diffs: bool = True
  hot_mz_bin_size: float = 0.05
  mz_head: bool = True
  ro_head: bool = True
  # Not official arguments: how to run it.
  graphormer_bias: str = "split"
  padding_mask: str = "official"
  attention_impl: str = "dot_product_attention"
  attention_backend: str | None = None  # jax.nn.dot_product_attention implementation: None (xla) / "cudnn"
  remat_policy: str = "none"
  layer_forms: str = "auto"  # `vqax.ops.forms`: XLA's own matmuls or the XLA:CPU 2-D forms
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def d_model(self) -> int:
    return self.d_peak + self.d_fourier

  @property
  def num_mz_bins(self) -> int:
    return num_mz_bins(self.max_mz, self.hot_mz_bin_size)

  def setup(self):
    validate(self)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.fourier_enc = FourierFeatures(self.fourier_x_min, self.max_mz, self.fourier_trainable)
    self.ff_fourier = FeedForward(self.ff_fourier_d, self.d_fourier, self.ff_fourier_depth, True, self.ffs_bias,
                                  self.dropout, **kw)
    self.ff_peak = FeedForward(self.d_peak, self.d_peak, self.ff_peak_depth, True, self.ffs_bias, self.dropout,
                               **kw)
    layer = EncoderLayer
    if self.remat_policy != "none":
      # static_argnums counts self: (self, x, graphormer, keep, train) -> train is 4.
      layer = nn.remat(EncoderLayer, policy=policy_for(self.remat_policy), prevent_cse=False,
                       static_argnums=(4,))
    self.layers = nn.scan(layer, variable_axes={"params": 0, "intermediates": 0},
                          split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                          length=self.n_layers)(
        self.d_model, self.n_heads, self.transformer_bias, self.pre_norm, self.att_dropout,
        self.residual_dropout, self.ff_dropout, self.graphormer_bias, self.attention_impl,
        self.attention_backend, **kw)
    if self.pre_norm:
      self.final_norm = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, **kw)
    if self.mz_head:
      self.ff_out = FeedForward(self.d_model, self.num_mz_bins, self.ff_out_depth, False, True, self.dropout,
                                **kw)
    if self.ro_head:
      self.ro_out = nn.Dense(1, use_bias=False, kernel_init=TORCH_KERNEL_INIT, **kw)
    self.input_dropout = nn.Dropout(self.residual_dropout)

  def __call__(self, spec: jax.Array, mz_positions: jax.Array | None = None, *, train: bool = False):
    with ops.forms.use(self.layer_forms):
      return self._outputs(spec, mz_positions, train)

  def encode(self, spec: jax.Array, train: bool = False):
    """[B, N, 2] spectra -> (per-peak outputs [B, N, d_model], aux with 'padding_mask')."""
    with ops.forms.use(self.layer_forms):
      return self._encode(spec, train)

  def _outputs(self, spec, mz_positions, train):
    pairs = spec.ndim == 4
    lead = spec.shape[:-2]
    flat = spec.reshape(-1, *spec.shape[-2:])
    per_peak, aux = self._encode(flat, train)
    outputs = {"per_peak": per_peak, "embedding": per_peak[:, 0]}
    if self.mz_head:
      rows = per_peak
      if mz_positions is not None:
        positions = mz_positions.reshape(flat.shape[0], -1)
        rows = jnp.take_along_axis(per_peak, positions[..., None].astype(jnp.int32), axis=1)
      outputs["mz_logits"] = self.ff_out(rows, train)
    if pairs and self.ro_head:
      # concat(embedding of spectrum 1, embedding of spectrum 2) -> one logit.
      outputs["ro_logit"] = self.ro_out(per_peak[:, 0].reshape(lead[0], -1))[:, 0]
    unflat = lambda a: a.reshape(*lead, *a.shape[1:])
    outputs = {k: (v if k == "ro_logit" else unflat(v)) for k, v in outputs.items()}
    return outputs, {"padding_mask": unflat(aux["padding_mask"])}

  def _encode(self, spec, train):
    padding = spec[:, :, 0] == 0
    mz = spec[..., :1]
    peak_embs = self.ff_peak(spec / jnp.asarray([self.max_mz, 1.0], spec.dtype), train)
    fourier = self.ff_fourier(self.fourier_enc(mz), train)
    x = jnp.concatenate([peak_embs, fourier], axis=-1)
    x = self.input_dropout(x, deterministic=not train)
    x, _ = self.layers(x, self._graphormer_input(fourier), self._keep_mask(padding), train)
    if self.pre_norm:
      x = self.final_norm(x)
    return x, {"padding_mask": padding}

  def _graphormer_input(self, fourier):
    """What every layer needs for the m/z-difference bias: the per-key bias [B, 1, 1, N] ("split") or the
    official [B, N, N, d_fourier] differences ("materialized")."""
    if not self.graphormer_mz_diffs:
      return None
    fourier = fourier.astype(jnp.float32)
    if self.graphormer_bias == "materialized":
      dists = fourier[:, :, None, :] - fourier[:, None, :, :]
      # XLA would fuse the subtract into each layer's sum and never hold the tensor; the barrier keeps it,
      # as the official code does (its memory is what this form exists to measure).
      return jax.lax.optimization_barrier(dists)
    return -jnp.sum(fourier, axis=-1)[:, None, None, :]

  def _keep_mask(self, padding):
    """Boolean keep-mask broadcastable to [B, H, N, N]."""
    if self.padding_mask == "official":
      return ~padding[:, None, :, None]  # padding query rows masked (uniform); padding keys attended
    return ~padding[:, None, None, :]


def validate(model: DreaMS) -> None:
  """ConfigError naming the first field that does not make a DreaMS (sizes, forms, bins)."""
  if model.d_model % model.n_heads:
    raise ConfigError(f"d_peak + d_fourier = {model.d_model} is not divisible by n_heads = {model.n_heads}")
  for name, value, choices in (("graphormer_bias", model.graphormer_bias, GRAPHORMER_BIAS_FORMS),
                               ("padding_mask", model.padding_mask, PADDING_MASKS),
                               ("attention_impl", model.attention_impl, ATTENTION_IMPLS)):
    if value not in choices:
      raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
  if model.remat_policy != "none":
    policy_for(model.remat_policy)
  if model.layer_forms not in ops.forms.LAYER_FORMS:
    raise ConfigError(f"layer_forms={model.layer_forms!r} is not one of {', '.join(ops.forms.LAYER_FORMS)}")
  if min(model.d_peak, model.d_fourier) <= 0:
    raise ConfigError("d_peak and d_fourier must both be positive (the token is their concatenation)")
  num_mz_bins(model.max_mz, model.hot_mz_bin_size)


def example_pairs(model: DreaMS, batch_size: int = 1, max_peaks_n: int = 60):
  """Zero pairs [B, 2, max_peaks_n + 1, 2] and positions [B, 2, 1]: shapes for init and eval_shape."""
  spec = jnp.zeros((batch_size, 2, max_peaks_n + 1, 2), jnp.float32)
  return spec, jnp.zeros((batch_size, 2, 1), jnp.int32)


def init_variables(model: DreaMS, rng: jax.Array, max_peaks_n: int = 60) -> dict:
  """All variables, heads included (the parameters do not depend on max_peaks_n)."""
  return model.init(rng, *example_pairs(model, 1, max_peaks_n))


def count_params(model: DreaMS) -> int:
  """Number of parameters (the Fourier table counted once, as the official count does), no allocation."""
  shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), 4))
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))


def frozen_params_mask(params: dict, model: DreaMS) -> dict:
  """True for parameters an optimizer should update (for optax.masked): all but a frozen Fourier table."""
  flat = jax.tree_util.tree_map_with_path(
      lambda path, _: model.fourier_trainable or jax.tree_util.keystr(path) != "['fourier_enc']['b']", params)
  return flat


def dreams_tiny(**overrides) -> DreaMS:
  """A small DreaMS for tests and demos (the parity fixture's sizes, 4000 m/z bins)."""
  fields = dict(d_peak=16, d_fourier=48, n_layers=2, n_heads=4, ff_fourier_d=32, hot_mz_bin_size=0.25)
  fields.update(overrides)
  return DreaMS(**fields)


def model_fields(model: DreaMS) -> dict:
  """The module's dataclass fields (for saving with a converted checkpoint)."""
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
          if f.name not in ("parent", "name") and f.name not in ("dtype", "param_dtype")}
