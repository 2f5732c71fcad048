"""Evaluating GAN augmentation for a spectrogram classifier (Ravuri & Vinyals, 2019 style).

- `accuracy_interval`: a classifier's accuracy over several seeds as mean and Student-t confidence interval;
  comparing real-only with real + N synthetic per class is the naive augmentation score.
- `frechet_distance`: Frechet distance between Gaussians fitted to real and generated embeddings, the
  embedding being a fixed function (the real-only classifier's penultimate layer, `embed`).
- `condition_faithfulness`: that classifier's accuracy on generated samples, by the class that was asked for.
- `spectrogram_grid_png`: real vs generated spectrograms per class; `training_curves_png`: loss curves.
- `write_wav_preview`: a log-mel spectrogram back to audio by Griffin-Lim (librosa's mel inversion), using
  the same Slaney mel filters as `vqax.audio.features`.
Everything here runs on the host with numpy, except `embed`, which calls the given (jitted) function.
"""
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
import scipy.linalg
import scipy.stats

from vqax.audio.features import LogMelConfig
from vqax.errors import DataError


def accuracy_interval(accuracies: Sequence[float], confidence: float = 0.95) -> dict:
  """{mean, std, low, high, n}: the t-interval of the mean over seeds (std with ddof=1; width 0 for n=1)."""
  values = np.asarray(accuracies, np.float64)
  if values.size == 0:
    raise ValueError("accuracy_interval needs at least one accuracy")
  mean = float(values.mean())
  if values.size == 1:
    return {"mean": mean, "std": 0.0, "low": mean, "high": mean, "n": 1}
  std = float(values.std(ddof=1))
  half = float(scipy.stats.t.ppf(0.5 + confidence / 2, values.size - 1)) * std / np.sqrt(values.size)
  return {"mean": mean, "std": std, "low": mean - half, "high": mean + half, "n": int(values.size)}


def augmentation_table(results: dict[str, Sequence[float]], confidence: float = 0.95) -> str:
  """Markdown table, one row per setting ("real only", "real + 50/class", ...) with mean and interval."""
  lines = [f"| training set | accuracy (mean over seeds) | {int(confidence * 100)} % interval | seeds |",
           "|---|---|---|---|"]
  for name, accuracies in results.items():
    s = accuracy_interval(accuracies, confidence)
    lines.append(f"| {name} | {s['mean']:.3f} | [{s['low']:.3f}, {s['high']:.3f}] | {s['n']} |")
  return "\n".join(lines)


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], covariance [D, D]) of features [N, D] (float64, ddof=1 as in FID)."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"expected features [N >= 2, D], got shape {features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)); a singular product is regularised by eps * I
  (as pytorch-fid does), and the numerically imaginary part of the square root is dropped."""
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  covmean = np.real(covmean)
  diff = mu1 - mu2
  return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean), 0.0))


def frechet_distance(real_features: np.ndarray, fake_features: np.ndarray) -> float:
  """Frechet distance between Gaussians fitted to two sets of embeddings [N, D]."""
  return frechet_distance_from_statistics(*gaussian_statistics(real_features), *gaussian_statistics(fake_features))


def embed(embedding_fn: Callable[[np.ndarray], np.ndarray], spectrograms: np.ndarray,
          batch_size: int = 64) -> np.ndarray:
  """Embeddings [N, D] of spectrograms [N, ...] by a fixed function, in host-sized batches.

  For a ViT: `embedding_fn = jax.jit(lambda x: model.apply(variables, x)[1]["features"])`.
  """
  return np.concatenate([np.asarray(embedding_fn(spectrograms[i:i + batch_size]), np.float64)
                         for i in range(0, len(spectrograms), batch_size)])


def condition_faithfulness(predicted: np.ndarray, requested: np.ndarray, num_classes: int) -> dict:
  """How often a classifier recognises the class a generated sample was asked for.

  {"accuracy": over all samples, "per_class": [accuracy for each requested class, NaN if none asked]}.
  """
  predicted, requested = np.asarray(predicted), np.asarray(requested)
  per_class = [float(np.mean(predicted[requested == c] == c)) if np.any(requested == c) else float("nan")
               for c in range(num_classes)]
  return {"accuracy": float(np.mean(predicted == requested)), "per_class": per_class}


# ----------------------------------------------------------------------------------------------------------
# Pictures and sound


def spectrogram_grid_png(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray,
                         class_names: Sequence[str], path, per_class: int = 3) -> pathlib.Path:
  """One row per class: `per_class` real spectrograms, then `per_class` generated ones ([N, n_mels, frames])."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  path = pathlib.Path(path)
  n = len(class_names)
  fig, axes = plt.subplots(n, 2 * per_class, figsize=(2.0 * 2 * per_class, 1.6 * n + 0.6), squeeze=False)
  lo, hi = np.percentile(np.concatenate([real.ravel(), fake.ravel()]), [1, 99])
  for c, name in enumerate(class_names):
    for side, (specs, labels, tag) in enumerate(((real, real_labels, "real"), (fake, fake_labels, "generated"))):
      chosen = specs[np.asarray(labels) == c][:per_class]
      for j in range(per_class):
        ax = axes[c, side * per_class + j]
        ax.set_xticks([])
        ax.set_yticks([])
        if j < len(chosen):
          ax.imshow(chosen[j], origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma")
        if c == 0:
          ax.set_title(tag, fontsize=8)
        if side == 0 and j == 0:
          ax.set_ylabel(name, fontsize=8)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def training_curves_png(curves: dict[str, Sequence[tuple[int, float]]], path, title: str = "") -> pathlib.Path:
  """Line plot of named curves, each a sequence of (step, value)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  path = pathlib.Path(path)
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for name, points in curves.items():
    if len(points):
      steps, values = zip(*points)
      ax.plot(steps, values, label=name)
  ax.set_xlabel("step")
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def mel_to_audio(log_mel_db: np.ndarray, cfg: LogMelConfig = LogMelConfig(), n_iter: int = 32,
                 seed: int = 0) -> np.ndarray:
  """A log-mel spectrogram in `vqax.audio.features.log_mel`'s units (10 log10 of power + eps, [n_mels,
  frames]) -> waveform, by librosa's mel pseudo-inverse and Griffin-Lim (same Slaney filters, periodic Hann,
  centred frames). Phase is estimated, so this is a listening preview, not a reconstruction."""
  import librosa
  spec = np.asarray(log_mel_db, np.float64)
  if spec.ndim != 2 or spec.shape[0] != cfg.n_mels:
    raise DataError(f"expected a log-mel spectrogram [{cfg.n_mels}, frames], got shape {spec.shape}")
  mel_power = np.maximum(10.0 ** (spec / 10.0) - cfg.eps, 0.0)
  magnitude = librosa.feature.inverse.mel_to_stft(
      mel_power, sr=cfg.sample_rate, n_fft=cfg.n_fft, power=cfg.power, fmin=cfg.f_min, fmax=cfg.f_max,
      htk=False, norm="slaney")
  return librosa.griffinlim(magnitude, n_iter=n_iter, hop_length=cfg.hop_length, window="hann", center=True,
                            random_state=seed).astype(np.float32)


def write_wav_preview(log_mel_db: np.ndarray, path, cfg: LogMelConfig = LogMelConfig(), n_iter: int = 32,
                      peak: float = 0.9) -> pathlib.Path:
  """Griffin-Lim audio of a spectrogram (see `mel_to_audio`), peak-normalised, written as 16-bit WAV."""
  import soundfile as sf
  audio = mel_to_audio(log_mel_db, cfg, n_iter)
  audio = audio * (peak / max(float(np.abs(audio).max()), 1e-9))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(str(path), audio, cfg.sample_rate, subtype="PCM_16")
  return path
