"""DreaMS pre-training objectives: peak masking, masked m/z focal loss, retention order; pure functions.

Official recipe (dreams/utils/data.py MaskedSpectraDataset.get_spec, dreams.py step, FocalLoss):
- masking candidates are peaks with 0 < intensity < 1: never padding, never the precursor token (1.1),
  and (an official quirk kept here) never the base peak (1.0); n_masks = max(2, round(0.3 n_candidates))
  with Python's half-to-even round; all candidates when there are no more than n_masks; otherwise
  n_masks peaks drawn without replacement with probability proportional to intensity. Masked peaks get
  m/z = -1 (the model still sees their intensity).
- masked m/z: classes clamp(round(m/z / bin), max=C-1) over C = 1000 / 0.05 bins; focal loss
  (1 - p_t)^gamma * CE with gamma 5, averaged over the masked peaks of each side of the pairs;
- retention order: BCE of sigmoid(ro_logit) against RT_1 < RT_2;
- total = (1 - w) * (mask_1 + mask_2) / 2 + w * ro with w = 0.2.

Masking is a jax function of an rng, so it runs inside the jitted step (one draw per step, no host work).
Draws without replacement use the Gumbel-top-k trick, which has the same distribution as numpy's
sequential `choice(replace=False, p=...)` but not its numbers.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

MASK_VAL = -1.0


def max_masks(max_peaks_n: int, frac_masks: float = 0.3, min_n_masks: int = 2) -> int:
  """Static number K of mask slots per spectrum (the most any spectrum of max_peaks_n peaks gets)."""
  return int(max(_n_masks_table(max_peaks_n, frac_masks, min_n_masks)))


def _n_masks_table(max_peaks_n: int, frac_masks: float, min_n_masks: int) -> np.ndarray:
  # Python float64 products and round (half to even), exactly as the official code; a float32 product
  # would round 15 * 0.3 = 4.5000002 up to 5 where the official gives 4.
  return np.asarray([max(min_n_masks, round(n * frac_masks)) for n in range(max_peaks_n + 2)], np.int32)


def mz_classes(mz: jax.Array, max_mz: float = 1000.0, bin_size: float = 0.05) -> jax.Array:
  """Official `to_classes`: clamp(round(m/z / bin_size), max=C-1), round half to even."""
  num = int(round(max_mz / bin_size))
  return jnp.minimum(jnp.round(mz / bin_size), num - 1).astype(jnp.int32)


def mask_spectrum(rng: jax.Array, spec: jax.Array, *, frac_masks: float = 0.3, min_n_masks: int = 2,
                  max_mz: float = 1000.0, bin_size: float = 0.05) -> dict:
  """One preprocessed spectrum [N, 2] (precursor token first) -> its masked version.

  Returns 'spec' [N, 2] (masked m/z set to -1), 'mask' [N] bool, and K = max_masks(N - 1) slots:
  'mz_positions' [K] int32, 'mz_targets' [K] int32 (true m/z classes), 'mz_valid' [K] bool.
  """
  n = spec.shape[0]
  k = max_masks(n - 1, frac_masks, min_n_masks)
  intensity = spec[:, 1]
  candidates = (intensity > 0) & (intensity < 1)
  n_candidates = jnp.sum(candidates)
  n_masks = jnp.asarray(_n_masks_table(n - 1, frac_masks, min_n_masks))[n_candidates]
  # Gumbel-top-k: the order of log(w) + Gumbel is a draw without replacement proportional to w.
  gumbel = jax.random.gumbel(rng, (n,), jnp.float32)
  keys = jnp.where(candidates, jnp.log(jnp.where(candidates, intensity, 1.0)) + gumbel, -jnp.inf)
  _, order = jax.lax.top_k(keys, k)
  valid = (jnp.arange(k) < jnp.minimum(n_masks, n_candidates)) & candidates[order]
  mask = jnp.zeros((n,), bool).at[order].max(valid)
  masked = spec.at[:, 0].set(jnp.where(mask, MASK_VAL, spec[:, 0]))
  positions = jnp.where(valid, order, 0).astype(jnp.int32)
  return {"spec": masked, "mask": mask, "mz_positions": positions,
          "mz_targets": mz_classes(spec[positions, 0], max_mz, bin_size), "mz_valid": valid}


def mask_spectra(rng: jax.Array, spec: jax.Array, **kwargs) -> dict:
  """`mask_spectrum` over any leading dims of spec [..., N, 2], one independent draw each."""
  lead = spec.shape[:-2]
  flat = spec.reshape(-1, *spec.shape[-2:])
  out = jax.vmap(lambda r, s: mask_spectrum(r, s, **kwargs))(jax.random.split(rng, flat.shape[0]), flat)
  return {key: value.reshape(*lead, *value.shape[1:]) for key, value in out.items()}


def focal_loss(logits: jax.Array, targets: jax.Array, gamma: float = 5.0) -> jax.Array:
  """Unreduced focal loss (1 - p_t)^gamma * -log p_t for integer targets, in float32.

  The official code takes log(softmax) (which is -inf where p underflows); log_softmax is used here
  (equal elsewhere to float32 rounding).
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  log_p_t = jnp.take_along_axis(log_p, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return (1 - jnp.exp(log_p_t)) ** gamma * -log_p_t


def masked_mz_loss(logits, targets, valid, gamma: float = 5.0):
  """Mean focal loss over the valid mask slots (the official loss.sum() / numel over masked peaks)."""
  losses = focal_loss(logits, targets, gamma)
  return jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def retention_order_loss(logit: jax.Array, label: jax.Array) -> jax.Array:
  """Mean BCE of sigmoid(logit) against label (1.0 when spectrum 1 elutes first), in log space."""
  logit = logit.astype(jnp.float32)
  return jnp.mean(-(label * jax.nn.log_sigmoid(logit) + (1 - label) * jax.nn.log_sigmoid(-logit)))


def pretraining_loss(outputs: dict, masked: dict, ro_label: jax.Array | None, *, gamma: float = 5.0,
                     ro_weight: float = 0.2) -> tuple[jax.Array, dict]:
  """Total loss and metrics from the model's pair outputs and the masking of the pairs [B, 2, ...]."""
  logits = outputs["mz_logits"]  # [B, 2, K, C]
  targets, valid = masked["mz_targets"], masked["mz_valid"]
  mask_losses = [masked_mz_loss(logits[:, side], targets[:, side], valid[:, side], gamma) for side in (0, 1)]
  mask_loss = (mask_losses[0] + mask_losses[1]) / 2
  n_valid = jnp.maximum(jnp.sum(valid), 1)
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  metrics = {
      "mask_loss": mask_loss,
      "mz_top1_accuracy": jnp.sum((jnp.argmax(logits, -1) == targets) & valid) / n_valid,
      "mz_top5_accuracy": jnp.sum(jnp.any(top5 == targets[..., None], -1) & valid) / n_valid,
  }
  if ro_label is None or "ro_logit" not in outputs or ro_weight == 0:
    return mask_loss, metrics
  ro_loss = retention_order_loss(outputs["ro_logit"], ro_label)
  metrics["ro_loss"] = ro_loss
  metrics["ro_accuracy"] = jnp.mean((outputs["ro_logit"] > 0) == (ro_label > 0.5))
  return (1 - ro_weight) * mask_loss + ro_weight * ro_loss, metrics


def dreams_pretraining_loss(model, params: dict, batch: dict, rng: jax.Array, *, train: bool = True,
                            frac_masks: float = 0.3, min_n_masks: int = 2, gamma: float = 5.0,
                            ro_weight: float = 0.2) -> tuple[jax.Array, dict]:
  """One pre-training loss: mask batch['spec'] [B, 2, N, 2] pairs, run the model, combine the losses.

  batch: 'spec' float32 [B, 2, N, 2] (preprocessed, unmasked), 'ro_label' float32 [B]. rng is split
  into the masking draw and dropout.
  """
  mask_rng, dropout_rng = jax.random.split(rng)
  masked = mask_spectra(mask_rng, batch["spec"], frac_masks=frac_masks, min_n_masks=min_n_masks,
                        max_mz=model.max_mz, bin_size=model.hot_mz_bin_size)
  outputs, _ = model.apply({"params": params}, masked["spec"], masked["mz_positions"], train=train,
                           rngs={"dropout": dropout_rng})
  return pretraining_loss(outputs, masked, batch.get("ro_label"), gamma=gamma, ro_weight=ro_weight)


def chance_levels(num_mz_bins: int) -> dict:
  """What a model that learned nothing scores: m/z top-1/top-5 uniform over bins, order a coin flip."""
  return {"mz_top1_accuracy": 1 / num_mz_bins, "mz_top5_accuracy": min(1.0, 5 / num_mz_bins),
          "ro_accuracy": 0.5, "mask_loss_uniform": (1 - 1 / num_mz_bins) ** 5 * math.log(num_mz_bins)}
