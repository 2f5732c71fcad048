"""DreaMS masking and losses: the official counts (half-to-even round), candidates, intensity-weighted
draws, focal loss against its definition, and the 0.8 / 0.2 total."""
import jax
import jax.numpy as jnp
import numpy as np

from conftest import shared_path
from vqax.models.dreams_objectives import (focal_loss, mask_spectra, mask_spectrum, max_masks, mz_classes,
                                           pretraining_loss)


def test_mask_counts_and_candidates_match_the_official_rule():
  z = np.load(shared_path("fixtures", "dreams_tiny_parity.npz"))
  spec = jnp.asarray(z["input/spec"])  # 15 and 8 candidates: round(4.5) = 4 (half to even), round(2.4) = 2
  masked = mask_spectra(jax.random.key(0), spec)
  np.testing.assert_array_equal(masked["mask"].sum(1), z["input/mask"].sum(1))
  intensity = np.asarray(spec[..., 1])
  assert not np.any(np.asarray(masked["mask"]) & ((intensity <= 0) | (intensity >= 1)))
  np.testing.assert_array_equal(masked["spec"][..., 0], np.where(masked["mask"], -1.0, spec[..., 0]))
  np.testing.assert_array_equal(masked["spec"][..., 1], spec[..., 1])
  k = max_masks(16)
  assert masked["mz_positions"].shape == (2, k)
  for i in range(2):
    valid = np.asarray(masked["mz_valid"][i])
    positions = np.asarray(masked["mz_positions"][i])[valid]
    assert sorted(positions) == list(np.nonzero(masked["mask"][i])[0])
    np.testing.assert_array_equal(masked["mz_targets"][i][valid], mz_classes(spec[i, positions, 0]))
  again = mask_spectra(jax.random.key(0), spec)
  np.testing.assert_array_equal(again["mask"], masked["mask"])


def test_few_candidates_are_all_masked_and_draws_follow_intensity():
  spec = jnp.asarray([[300.0, 1.1], [100.0, 0.9], [150.0, 1.0], [200.0, 0.1], [0, 0], [0, 0]])
  # 2 candidates <= min 2 masks: both masked, the base peak never.
  out = mask_spectrum(jax.random.key(1), spec)
  np.testing.assert_array_equal(out["mask"], [False, True, False, True, False, False])
  # 7 candidates -> 2 masks drawn by intensity: the 0.9 peak far more often than a 0.05 one.
  intensity = jnp.asarray([0.9, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05])
  spec = jnp.concatenate([jnp.asarray([[500.0, 1.1], [120.0, 1.0]]),
                          jnp.stack([jnp.arange(7) * 10.0 + 200, intensity], -1)])
  draws = jax.vmap(lambda r: mask_spectrum(r, spec)["mask"])(jax.random.split(jax.random.key(2), 2000))
  assert np.all(np.asarray(draws).sum(1) == 2)
  rate = np.asarray(draws).mean(0)
  assert rate[2] > 0.85 and np.all(rate[3:] < 0.3), rate


def test_focal_loss_definition_and_total_weights():
  logits = jnp.asarray([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
  targets = jnp.asarray([0, 2])
  p = np.asarray(jax.nn.softmax(logits))[[0, 1], [0, 2]]
  np.testing.assert_allclose(focal_loss(logits, targets, 5.0), (1 - p) ** 5 * -np.log(p), rtol=1e-6)
  np.testing.assert_allclose(focal_loss(logits, targets, 0.0), -np.log(p), rtol=1e-6)
  outputs = {"mz_logits": jnp.broadcast_to(logits, (2, 2, 2, 3)), "ro_logit": jnp.asarray([0.3, -2.0])}
  masked = {"mz_targets": jnp.broadcast_to(targets, (2, 2, 2)),
            "mz_valid": jnp.asarray([[[True, False]] * 2, [[True, True]] * 2])}
  loss, metrics = pretraining_loss(outputs, masked, jnp.asarray([1.0, 1.0]))
  ro = np.mean([np.log1p(np.exp(-0.3)), np.log1p(np.exp(2.0))])
  fl = np.asarray(focal_loss(logits, targets, 5.0))
  mask = (fl[0] + fl[0] + fl[1]) / 3  # each side: the three valid slots of the batch
  np.testing.assert_allclose(loss, 0.8 * mask + 0.2 * ro, rtol=1e-6)
  assert float(metrics["ro_accuracy"]) == 0.5
