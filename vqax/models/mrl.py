"""Matryoshka (nested-dimension) speaker embeddings trained with AAM-softmax (shared/SPEC.md section 3).

A backbone embedding (ReDimNet: 192-d) goes through BatchNorm + Linear to a `projection_dim` vector z whose
prefixes z[:m] for m in `mrl_dims` are each a usable speaker embedding. Every prefix gets its own
AAM-softmax (ArcFace) classifier, all of them slices W[:, :m] of one class-weight matrix, so a short
embedding is literally the beginning of the long one (Kusupati et al., Matryoshka Representation Learning).

The modules here hold parameters only; the margin logits and the loss are pure functions the task calls.
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Dtype = Any
CLASS_WEIGHTS = "class_weights"  # the head's parameter name, read by the loss


class MatryoshkaHead(nn.Module):
  """Embedding [B, D] -> z [B, projection_dim] (BatchNorm + Linear), plus the class weights W [K, dim].

  W is created here so it lives with the head's parameters (and freezes/trains with them); the loss reads
  it from params[...]["class_weights"]. num_classes 0 makes a head for embedding only.
  """
  projection_dim: int = 256
  num_classes: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.num_classes:
      # Xavier-uniform as WeSpeaker's ArcMarginProduct; only directions matter (rows are L2-normalised).
      self.param(CLASS_WEIGHTS, nn.initializers.xavier_uniform(), (self.num_classes, self.projection_dim),
                 self.param_dtype)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                     dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)
    return nn.Dense(self.projection_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="projection")(x)


class MatryoshkaSpeakerModel(nn.Module):
  """Waveform -> (z [B, projection_dim], aux with the backbone's 'embedding' and its own aux).

  `backbone` is any module mapping (wave, train) to (embedding, aux), e.g. `ReDimNet`. With
  `freeze_backbone` the backbone runs in inference mode (BatchNorm statistics untouched) and no gradient
  flows into it: stage-1 training, where only the head learns.
  """
  backbone: nn.Module
  head: MatryoshkaHead

  def __call__(self, wave: jax.Array, train: bool = False, freeze_backbone: bool = False):
    embedding, aux = self.backbone(wave, train and not freeze_backbone)
    if freeze_backbone:
      embedding = jax.lax.stop_gradient(embedding)
    z = self.head(embedding, train)
    return z, dict(aux, embedding=embedding)


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  # As torch.nn.functional.normalize: x / max(||x||, eps).
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def cosine_logits(z: jax.Array, class_weights: jax.Array, dim: int) -> jax.Array:
  """cos θ [B, K] between L2-normalised z[:, :dim] and L2-normalised rows of W[:, :dim], in float32."""
  z = _l2_normalize(z[:, :dim].astype(jnp.float32))
  w = _l2_normalize(class_weights[:, :dim].astype(jnp.float32))
  return jnp.matmul(z, w.T, precision=jax.lax.Precision.HIGHEST)


def additive_angular_margin(cosine: jax.Array, labels: jax.Array, margin, scale: float) -> jax.Array:
  """AAM-softmax logits s·cos(θ + m) for the target class and s·cos θ for the others.

  No "easy margin": where θ + m would pass π (cos θ <= cos(π − m)) the target logit continues linearly as
  cos θ − (1 + cos(π − m)), which meets cos(θ + m) = −1 at the boundary and keeps the target logit
  monotonic in θ (WeSpeaker's ArcMarginProduct). `margin` may be a traced scalar (a ramp).
  """
  margin = jnp.asarray(margin, jnp.float32)
  # Clipping keeps sin θ > 0, so the gradient of sqrt(1 − cos²) stays finite at θ = 0 or π.
  cos_t = jnp.clip(jnp.take_along_axis(cosine, labels[:, None], axis=1)[:, 0], -1.0 + 1e-7, 1.0 - 1e-7)
  sin_t = jnp.sqrt(1.0 - cos_t**2)
  phi = cos_t * jnp.cos(margin) - sin_t * jnp.sin(margin)
  threshold = jnp.cos(math.pi - margin)
  phi = jnp.where(cos_t > threshold, phi, cos_t - (1.0 + threshold))
  target = jax.nn.one_hot(labels, cosine.shape[1], dtype=jnp.bool_)
  return scale * jnp.where(target, phi[:, None], cosine)


def aam_logits(z: jax.Array, class_weights: jax.Array, labels: jax.Array, dim: int, margin, scale: float):
  """AAM-softmax logits [B, K] of the prefix z[:, :dim] against W[:, :dim]."""
  return additive_angular_margin(cosine_logits(z, class_weights, dim), labels, margin, scale)


def matryoshka_aam_loss(z: jax.Array, class_weights: jax.Array, labels: jax.Array, dims: Sequence[int],
                        dim_weights: Sequence[float] | None = None, *, margin=0.2,
                        scale: float = 30.0) -> tuple[jax.Array, dict]:
  """Σ c_m·CE_m / Σ c_m over the nested dims, and per-dim metrics {'loss_m', 'accuracy_m'}.

  CE_m is the batch-mean cross-entropy of the AAM logits of prefix m; accuracy_m is top-1 of the plain
  cosines (no margin), i.e. how often the prefix alone already names the right speaker.
  """
  dim_weights = (1.0,) * len(dims) if dim_weights is None else tuple(dim_weights)
  if len(dim_weights) != len(dims):
    raise ValueError(f"{len(dim_weights)} dim weights for {len(dims)} dims")
  metrics, total = {}, 0.0
  for dim, weight in zip(dims, dim_weights):
    cosine = cosine_logits(z, class_weights, dim)
    logits = additive_angular_margin(cosine, labels, margin, scale)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    metrics[f"loss_{dim}"] = loss
    metrics[f"accuracy_{dim}"] = jnp.mean((jnp.argmax(cosine, axis=1) == labels).astype(jnp.float32))
    total = total + weight * loss
  return total / sum(dim_weights), metrics


def margin_schedule(step, *, margin: float, steps_per_epoch: int, ramp_start_epoch: int = 0,
                    ramp_end_epoch: int = 0, initial_margin: float = 0.0) -> jax.Array:
  """WeSpeaker's exponential margin ramp, in steps: `initial_margin` before epoch `ramp_start_epoch`,
  then initial + (margin − initial)·(1 − 10^(−3·t/T)) over the T steps up to epoch `ramp_end_epoch`, and
  `margin` from there on. Epochs count from 0 (WeSpeaker's increase_start_epoch 20 is ramp_start_epoch 19).
  ramp_end_epoch <= ramp_start_epoch means no ramp: the full margin from step 0.
  """
  step = jnp.asarray(step, jnp.float32)
  start, end = ramp_start_epoch * steps_per_epoch, ramp_end_epoch * steps_per_epoch
  if end <= start:
    return jnp.full((), margin, jnp.float32)
  progress = (step - start) / (end - start)
  ratio = 1.0 - jnp.exp(progress * math.log(1e-3 / (1.0 + 1e-6)))  # 0 -> 0.999 across the ramp
  ramped = initial_margin + (margin - initial_margin) * ratio
  return jnp.where(step < start, initial_margin, jnp.where(step >= end, margin, ramped)).astype(jnp.float32)

