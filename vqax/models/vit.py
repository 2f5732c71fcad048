"""Vision Transformer classifier (Dosovitskiy et al., 2021) in Flax Linen, laid out like Hugging Face's
`ViTForImageClassification` so its checkpoints convert one to one (`vit_convert`).

  input adapter -> patch embedding (conv, kernel = stride = patch) -> [CLS] + patches + position embedding
  -> pre-LN encoder layers (scanned, optionally rematerialised) -> final LayerNorm -> head on the CLS token.

Choices that matter for parity (shared/fixtures/vit_tiny_parity.json, `port_gotchas`): every LayerNorm has
epsilon 1e-12 (HF), the MLP uses the exact erf GELU, q/k/v/o projections carry biases, attention logits
are scaled by head_dim**-0.5 after the matmul with the softmax in float32, and the classifier reads the CLS
token after the final LayerNorm (no pooler).

The encoder layers run under `nn.scan` (one compiled layer, parameters stacked on a leading layer axis) and
`nn.remat` with a named policy (big_vision's layout). Layer `i` is row `i` of every leaf under
`params['encoder']['layers']`; `vit_unfreeze` partitions that axis for staged fine-tuning.

Input adapters (explicit, `input_adapter`):
  "pixels"     [B, H, W, C] images as given (the HF path; pixel range [-1, 1] after ViTImageProcessor).
  "resize_rgb" [B, n_mels, frames] spectrograms resized (bilinear) to `image_size` and repeated over the
               `num_channels` channels -- what the seed notebook fed `google/vit-base-patch16-224`.
  "native"     [B, n_mels, frames] spectrograms as one channel at their own, possibly non-square, size.
Whenever the patch grid differs from the one `image_size` gives, the position embeddings are interpolated
(bicubic over the grid, the CLS row kept) -- HF's `interpolate_pos_encoding`, extended to non-square grids.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqax.errors import ConfigError
from vqax.models.remat import policy_for

Dtype = Any
INPUT_ADAPTERS = ("pixels", "resize_rgb", "native")
# HF initialisation (for training from scratch): weights N(0, 0.02), biases 0, CLS / positions N(0, 0.02).
_INIT = nn.initializers.normal(0.02)


def exact_gelu(x):
  return jax.nn.gelu(x, approximate=False)


class Attention(nn.Module):
  """Multi-head self-attention with separate biased q/k/v/o projections; heads split contiguously."""
  hidden_size: int
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, d = x.shape
    head_dim = d // self.num_heads
    dense = lambda name: nn.Dense(self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                                  kernel_init=_INIT, name=name)
    split = lambda t: t.reshape(b, n, self.num_heads, head_dim)
    q, k, v = (split(dense(name)(x)) for name in ("q_proj", "k_proj", "v_proj"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim ** -0.5
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, d)
    return dense("o_proj")(out)


class EncoderLayer(nn.Module):
  """Pre-LN block: x + o_proj(Attn(LN(x))), then x + fc2(gelu(fc1(LN(x)))).

  Called as a scan body: (carry, _) -> (carry, None).
  """
  hidden_size: int
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-12
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, _=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, **kw, name=name)
    h = norm("layernorm_before")(x)
    self.sow("intermediates", "attention_input", h)
    h = Attention(self.hidden_size, self.num_heads, **kw, name="attention")(h)
    self.sow("intermediates", "attention_output", h)
    x = x + h
    h = nn.Dense(self.mlp_dim, kernel_init=_INIT, **kw, name="fc1")(norm("layernorm_after")(x))
    self.sow("intermediates", "fc1_output", h)
    h = nn.Dense(self.hidden_size, kernel_init=_INIT, **kw, name="fc2")(exact_gelu(h))
    x = x + h
    self.sow("intermediates", "output", x)
    return x, None


class Encoder(nn.Module):
  """`num_layers` EncoderLayers through nn.scan (parameters stacked on axis 0), each under nn.remat."""
  num_layers: int
  hidden_size: int
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-12
  remat_policy: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    layer = EncoderLayer
    if self.remat_policy not in (None, "none"):
      layer = nn.remat(layer, policy=policy_for(self.remat_policy), prevent_cse=False)
    scanned = nn.scan(layer, variable_axes={"params": 0, "intermediates": 0}, split_rngs={"params": True},
                      length=self.num_layers)
    x, _ = scanned(self.hidden_size, self.num_heads, self.mlp_dim, self.layer_norm_eps, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="layers")(x, None)
    return x


def interpolate_positions(table: jax.Array, source_grid: tuple[int, int], target_grid: tuple[int, int]):
  """[1, 1 + Hs*Ws, D] position table -> [1, 1 + Ht*Wt, D]: CLS row kept, the grid resized bicubically."""
  if tuple(source_grid) == tuple(target_grid):
    return table
  cls, grid = table[:, :1], table[:, 1:]
  d = table.shape[-1]
  grid = grid.reshape(source_grid[0], source_grid[1], d)
  grid = jax.image.resize(grid, (*target_grid, d), method="bicubic")
  return jnp.concatenate([cls, grid.reshape(1, -1, d).astype(table.dtype)], axis=1)


class Embeddings(nn.Module):
  """Patch embedding, CLS token prepended, learned absolute positions (interpolated to the input's grid)."""
  hidden_size: int
  patch_size: int
  image_size: tuple[int, int]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID", kernel_init=_INIT,
                dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embeddings")(x)
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)  # row-major over the patch grid, as HF's flatten(2).transpose(1, 2)
    self.sow("intermediates", "patch_tokens", x)
    source_grid = (self.image_size[0] // p, self.image_size[1] // p)
    cls = self.param("cls_token", _INIT, (1, 1, d), self.param_dtype)
    table = self.param("position_embeddings", _INIT, (1, 1 + source_grid[0] * source_grid[1], d),
                       self.param_dtype)
    table = interpolate_positions(table, source_grid, (gh, gw))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], axis=1)
    x = x + table.astype(x.dtype)
    self.sow("intermediates", "tokens", x)
    return x


class ViT(nn.Module):
  """ViT classifier: `apply(variables, x) -> (logits [B, num_classes] float32, {"features": CLS [B, D]})`.

  `features` is the final-LayerNorm CLS token, the classifier's input (the embedding for Frechet distances).
  """
  num_classes: int = 1000
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  patch_size: int = 16
  image_size: tuple[int, int] = (224, 224)  # the grid the position embeddings are stored for
  num_channels: int = 3
  layer_norm_eps: float = 1e-12
  input_adapter: str = "pixels"
  remat_policy: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def adapt(self, x: jax.Array) -> jax.Array:
    """Batch as given -> NHWC image for the patch embedding (see the module docstring)."""
    if self.input_adapter == "pixels":
      if x.ndim != 4 or x.shape[-1] != self.num_channels:
        raise ConfigError(f"ViT input_adapter='pixels' expects [B, H, W, {self.num_channels}] images, "
                          f"got shape {tuple(x.shape)}")
      return x
    if x.ndim == 4 and x.shape[-1] == 1:
      x = x[..., 0]
    if x.ndim != 3:
      raise ConfigError(f"ViT input_adapter={self.input_adapter!r} expects [B, n_mels, frames] spectrograms, "
                        f"got shape {tuple(x.shape)}")
    if self.input_adapter == "native":
      return x[..., None]
    # resize_rgb: bilinear, antialiased when shrinking (1292 frames -> 224 columns would alias otherwise).
    x = jax.image.resize(x.astype(jnp.float32), (x.shape[0], *self.image_size), method="bilinear")
    return jnp.repeat(x[..., None], self.num_channels, axis=-1)

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embeddings = Embeddings(self.hidden_size, self.patch_size, tuple(self.image_size), **kw)
    self.encoder = encoder_stack(self, self.num_layers)
    self.final_norm = nn.LayerNorm(epsilon=self.layer_norm_eps, **kw)
    self.head = nn.Dense(self.num_classes, kernel_init=_INIT, **kw)

  def __call__(self, x):
    return self.classify(self.encoder(self.embed(x)))

  def embed(self, x):
    """Batch -> tokens [B, 1 + patches, D] (adapter, patch embedding, CLS, positions)."""
    return self.embeddings(self.adapt(x).astype(self.dtype))

  def classify(self, tokens):
    """Encoder output -> (logits float32, {"features": final-LN CLS token})."""
    x = self.final_norm(tokens)
    self.sow("intermediates", "last_hidden_state", x)
    features = x[:, 0]
    return self.head(features).astype(jnp.float32), {"features": features}


def encoder_stack(model: "ViT", num_layers: int) -> Encoder:
  """`model`'s scanned encoder for `num_layers` layers: params {'layers': leaves stacked [n, ...]}.

  Any slice of the stored layer stack is a valid parameter set for it (staged fine-tuning runs the
  encoder segment by segment, see `vit_unfreeze`). Created inside `ViT.setup` it is the model's own
  submodule; created outside, a standalone module.
  """
  return Encoder(num_layers, model.hidden_size, model.num_heads, model.mlp_dim, model.layer_norm_eps,
                 model.remat_policy, dtype=model.dtype, param_dtype=model.param_dtype)


# Named sizes (data, not code). B/16 is google/vit-base-patch16-224; "tiny" is the parity fixture's config;
# "micro" is a CPU-test size for 1-channel spectrograms.
VARIANTS: dict[str, dict] = {
    "B/16": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, patch_size=16, image_size=(224, 224)),
    "S/16": dict(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536, patch_size=16, image_size=(224, 224)),
    "Ti/16": dict(hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768, patch_size=16, image_size=(224, 224)),
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, mlp_dim=128, patch_size=8, image_size=(32, 32)),
    "micro": dict(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, patch_size=4, image_size=(16, 16),
                  num_channels=1, input_adapter="native"),
}
DEFAULT_VARIANT = "B/16"


def validate(model: ViT) -> ViT:
  """ConfigError for settings the module cannot run with; returns the model."""
  if model.input_adapter not in INPUT_ADAPTERS:
    raise ConfigError(f"ViT input_adapter={model.input_adapter!r}: expected one of {', '.join(INPUT_ADAPTERS)}")
  if model.input_adapter == "native" and model.num_channels != 1:
    raise ConfigError(f"ViT input_adapter='native' feeds 1-channel spectrograms: num_channels must be 1, "
                      f"got {model.num_channels}")
  if model.hidden_size % model.num_heads:
    raise ConfigError(f"ViT hidden_size={model.hidden_size} does not split into num_heads={model.num_heads}")
  for side in model.image_size:
    if side < model.patch_size:
      raise ConfigError(f"ViT image_size={tuple(model.image_size)} is smaller than one patch "
                        f"({model.patch_size})")
  if model.num_classes < 1:
    raise ConfigError(f"ViT num_classes={model.num_classes}: expected at least 1")
  if model.remat_policy not in (None, "none"):
    policy_for(model.remat_policy)
  return model


def vit(variant: str = DEFAULT_VARIANT, **overrides) -> ViT:
  """A named size (`VARIANTS`) with field overrides, e.g. `vit("B/16", num_classes=2, dtype=jnp.bfloat16)`."""
  if variant not in VARIANTS:
    raise ConfigError(f"unknown ViT variant {variant!r}; expected one of {', '.join(VARIANTS)}")
  fields = {f.name for f in dataclasses.fields(ViT)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ConfigError(f"unknown ViT settings {unknown}; expected some of {sorted(fields - {'parent', 'name'})}")
  settings = {**VARIANTS[variant], **overrides}
  if "image_size" in settings:
    size = settings["image_size"]
    settings["image_size"] = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
  return validate(ViT(**settings))


def abstract_variables(model: ViT, input_shape: tuple[int, ...] | None = None):
  """Shapes/dtypes of `model.init` via jax.eval_shape: nothing is allocated (cheap for ViT-B/16)."""
  if input_shape is None:
    input_shape = example_input_shape(model)
  return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(input_shape, jnp.float32))


def example_input_shape(model: ViT, batch: int = 1) -> tuple[int, ...]:
  """A batch shape the adapter accepts at the stored grid size."""
  if model.input_adapter == "pixels":
    return (batch, *model.image_size, model.num_channels)
  return (batch, *model.image_size)


def count_params(model: ViT) -> int:
  params = abstract_variables(model)["params"]
  return sum(int(leaf.size) for leaf in jax.tree.leaves(params))
