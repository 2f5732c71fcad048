"""Augmentation evaluation: accuracy intervals, Frechet distance, condition faithfulness, PNGs, Griffin-Lim."""
import numpy as np
import pytest
import soundfile as sf

from vqax.audio.features import LogMelConfig, log_mel
from vqax.audio.mel import mel_filterbank
from vqax.eval import augmentation as aug


def test_accuracy_interval_is_the_student_t_interval():
  s = aug.accuracy_interval([0.8, 0.9, 1.0])
  # mean 0.9, sample std 0.1, t_{0.975, 2} = 4.3027: half width 4.3027 * 0.1 / sqrt(3) = 0.24842
  assert s["n"] == 3 and s["mean"] == pytest.approx(0.9) and s["std"] == pytest.approx(0.1)
  assert s["high"] - s["mean"] == pytest.approx(0.24842, abs=1e-4)
  assert aug.accuracy_interval([0.7])["low"] == 0.7
  table = aug.augmentation_table({"real only": [0.8, 0.9, 1.0], "real + 10/class": [0.9, 0.9, 0.9]})
  assert "| real only | 0.900 | [0.652, 1.148] | 3 |" in table
  assert "| real + 10/class | 0.900 | [0.900, 0.900] | 3 |" in table


def test_frechet_distance_zero_for_identical_sets_and_closed_form_for_gaussians():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((200, 5))
  assert aug.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
  # Diagonal covariances: d = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
  expected = 1.0 + 0.0 + 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0
  assert aug.frechet_distance_from_statistics(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)
  # A rotation of both sets leaves it unchanged (non-diagonal covariances).
  q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
  rotated = aug.frechet_distance_from_statistics(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
  assert rotated == pytest.approx(expected, rel=1e-6)
  # Samples: the estimate approaches the closed form.
  s1 = rng.standard_normal((20000, 3)) * np.sqrt(a) + mu1
  s2 = rng.standard_normal((20000, 3)) * np.sqrt(b) + mu2
  assert aug.frechet_distance(s1, s2) == pytest.approx(expected, rel=0.05)


def test_embed_batches_a_fixed_function():
  x = np.arange(10 * 4, dtype=np.float32).reshape(10, 2, 2)
  out = aug.embed(lambda batch: batch.reshape(len(batch), -1)[:, :2], x, batch_size=3)
  np.testing.assert_array_equal(out, x.reshape(10, -1)[:, :2])


def test_condition_faithfulness_by_requested_class():
  requested = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
  predicted = np.array([0, 0, 0, 1, 1, 0, 0, 1, 2, 2])
  out = aug.condition_faithfulness(predicted, requested, num_classes=4)
  assert out["accuracy"] == pytest.approx(0.7)
  assert out["per_class"][:3] == [0.75, 0.5, 1.0] and np.isnan(out["per_class"][3])


def test_pngs_are_written(tmp_path):
  rng = np.random.default_rng(0)
  real, fake = rng.standard_normal((6, 8, 20)), rng.standard_normal((6, 8, 20))
  labels = np.array([0, 0, 0, 1, 1, 1])
  grid = aug.spectrogram_grid_png(real, labels, fake, labels, ["a", "b"], tmp_path / "grid.png", per_class=2)
  curves = aug.training_curves_png({"d_loss": [(0, 1.0), (1, 0.5)], "g_loss": [(0, 0.2), (1, 0.4)]},
                                   tmp_path / "curves.png")
  for path in (grid, curves):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_librosa_mel_filters_are_ours():
  """Griffin-Lim inverts with librosa's filters: they must be the front end's (Slaney scale and norm)."""
  import librosa
  cfg = LogMelConfig()
  ours = mel_filterbank(cfg.n_fft // 2 + 1, 0.0, cfg.sample_rate / 2, cfg.n_mels, cfg.sample_rate, htk=False,
                        slaney_norm=True)
  theirs = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, htk=False, norm="slaney")
  np.testing.assert_allclose(ours.T, theirs, rtol=1e-4, atol=1e-7)


def test_griffin_lim_preview_recovers_a_tone(tmp_path):
  cfg = LogMelConfig(n_fft=512, hop_length=128, n_mels=64)
  t = np.arange(16000) / 16000
  spec = log_mel((0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), cfg)
  path = aug.write_wav_preview(spec, tmp_path / "tone.wav", cfg, n_iter=16)
  audio, rate = sf.read(path)
  assert rate == 16000 and abs(len(audio) - 16000) <= cfg.hop_length
  peak_hz = np.argmax(np.abs(np.fft.rfft(audio))) * rate / len(audio)
  assert abs(peak_hz - 1000) < 40
  # Its log-mel is the original's where the energy is (a preview, phase aside).
  again = log_mel(aug.mel_to_audio(spec, cfg, n_iter=16), cfg)
  frames = min(again.shape[1], spec.shape[1])
  band = spec[:, :frames].mean(axis=1) > spec.mean() + 20
  assert np.abs(again[band, 2:frames - 2] - spec[band, 2:frames - 2]).mean() < 3.0
