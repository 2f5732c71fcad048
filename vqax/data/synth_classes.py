"""Synthetic labelled audio in the class-folder layout, `<out>/<class>/<class>_NNNN.wav` (mono 16-bit).

For the spectrogram classifier and the conditional GAN without a real data set. Each class differs from
the others in something a log-mel spectrogram shows: pitch, pitch movement, a noise band, impulses, or the
rate of amplitude modulation. Two pairs are deliberately hard: `tone_low` vs `tone_semitone` (one semitone
apart, each jittered by +-3 %, so their pitch ranges touch) and `am_slow` vs `am_fast` (the same noise band
modulated at 3 vs 5 Hz: only the temporal pattern separates them). Every clip adds its own gain, onset and
background noise (10-30 dB SNR).

A clip is seeded from (seed, class, index) alone, so it is bit-identical however many others are made;
the manifest and skip/overwrite rules are those of `synth_dcase`.
"""
import pathlib
import re

import numpy as np

from vqax.data.synth_dcase import (check_count, check_sample_rate, check_seed, clip_rng, prepare_output,
                                   write_manifest, write_wav)
from vqax.errors import ConfigError

_GENERATOR = "vqax.data.synth_classes"
_VERSION = 1
FILE_RE = re.compile(r"^([a-z_]+)/\1_\d{4}\.wav$")


def _harmonic(t, f0, n_harmonics=5, rolloff=0.6):
  return sum(rolloff ** k * np.sin(2 * np.pi * (k + 1) * f0 * t) for k in range(n_harmonics))


def _sweep(t, f_start, f_end, seconds):
  """Exponential sweep from f_start to f_end over `seconds` (phase = integral of the frequency)."""
  k = np.log(f_end / f_start) / seconds
  return np.sin(2 * np.pi * f_start * (np.exp(k * t) - 1.0) / k)


def _band_noise(rng, n, sr, low, high):
  spectrum = np.fft.rfft(rng.standard_normal(n))
  freqs = np.fft.rfftfreq(n, 1.0 / sr)
  spectrum[(freqs < low) | (freqs > high)] = 0.0
  out = np.fft.irfft(spectrum, n)
  return out / (np.std(out) + 1e-12)


def _clicks(rng, n, sr, rate_hz):
  out = np.zeros(n)
  times = np.arange(rng.uniform(0, 1.0 / rate_hz), n / sr, 1.0 / rate_hz)
  decay = np.exp(-np.arange(int(0.004 * sr)) / (0.001 * sr))
  for t in times:
    i = int(t * sr)
    burst = rng.standard_normal(decay.size) * decay
    out[i:i + burst.size] += burst[:n - i]
  return out


def _am(rng, t, n, sr, rate_hz):
  carrier = _band_noise(rng, n, sr, 800.0, 1600.0)
  return carrier * (0.55 + 0.45 * np.sin(2 * np.pi * rate_hz * t + rng.uniform(0, 2 * np.pi)))


# class -> signal(rng, t, n, sr, seconds); frequencies jittered per clip.
CLASSES = {
    "tone_low": lambda rng, t, n, sr, s: _harmonic(t, 220.0 * rng.uniform(0.97, 1.03)),
    "tone_semitone": lambda rng, t, n, sr, s: _harmonic(t, 233.1 * rng.uniform(0.97, 1.03)),
    "tone_high": lambda rng, t, n, sr, s: _harmonic(t, 1200.0 * rng.uniform(0.97, 1.03), 3),
    "chirp_up": lambda rng, t, n, sr, s: _sweep(t, 300.0 * rng.uniform(0.9, 1.1), 3000.0 * rng.uniform(0.9, 1.1), s),
    "chirp_down": lambda rng, t, n, sr, s: _sweep(t, 3000.0 * rng.uniform(0.9, 1.1), 300.0 * rng.uniform(0.9, 1.1), s),
    "noise_band": lambda rng, t, n, sr, s: _band_noise(rng, n, sr, 2000.0 * rng.uniform(0.9, 1.1), 4000.0),
    "clicks": lambda rng, t, n, sr, s: _clicks(rng, n, sr, 4.0 * rng.uniform(0.9, 1.1)),
    "am_slow": lambda rng, t, n, sr, s: _am(rng, t, n, sr, 3.0 * rng.uniform(0.95, 1.05)),
    "am_fast": lambda rng, t, n, sr, s: _am(rng, t, n, sr, 5.0 * rng.uniform(0.95, 1.05)),
}
HARD_PAIRS = (("tone_low", "tone_semitone"), ("am_slow", "am_fast"))


def synth_clip(class_name: str, index: int, *, seed: int = 0, seconds: float = 2.0,
               sample_rate: int = 16000) -> np.ndarray:
  """One clip of `class_name`, float64 in [-1, 1], from (seed, class, index) alone."""
  rng = clip_rng(seed, "classes", class_name, index)
  n = round(seconds * sample_rate)
  t = np.arange(n) / sample_rate
  signal = CLASSES[class_name](rng, t, n, sample_rate, seconds)
  signal = signal / (np.std(signal) + 1e-12)
  # A random onset: the sound starts within the first 10 % of the clip, fading in over 20 ms.
  onset = int(rng.uniform(0.0, 0.1) * n)
  ramp = np.clip((np.arange(n) - onset) / (0.02 * sample_rate), 0.0, 1.0)
  signal = signal * ramp
  snr_db = rng.uniform(10.0, 30.0)
  background = _band_noise(rng, n, sample_rate, 50.0, sample_rate / 2) * 10.0 ** (-snr_db / 20.0)
  y = (signal + background) * 10.0 ** (rng.uniform(-26.0, -18.0) / 20.0)
  return np.clip(y, -1.0, 1.0)


def _check(seed, classes, clips_per_class, seconds, sample_rate) -> dict:
  classes = list(classes)
  unknown = [c for c in classes if c not in CLASSES]
  if unknown:
    raise ConfigError(f"synthetic class {unknown[0]!r} is not one of {', '.join(CLASSES)}")
  if len(set(classes)) < 2 or len(set(classes)) != len(classes):
    raise ConfigError(f"classes={classes}: expected at least two distinct class names")
  if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0.1 <= seconds <= 60.0:
    raise ConfigError(f"seconds={seconds!r}: expected a clip length in [0.1, 60]")
  count = check_count("clips_per_class", clips_per_class, 1)
  if count >= 10000:
    raise ConfigError(f"clips_per_class={count}: expected fewer than 10000 (the file names' digits)")
  return {"seed": check_seed(seed), "classes": classes, "clips_per_class": count, "seconds": float(seconds),
          "sample_rate": check_sample_rate(sample_rate)}


def _owned(out: pathlib.Path) -> list[pathlib.Path]:
  return sorted(f for f in out.glob("*/*.wav") if FILE_RE.match(f.relative_to(out).as_posix()))


def generate_classes(out_dir, *, seed: int = 0, classes=tuple(CLASSES), clips_per_class: int = 20,
                     seconds: float = 2.0, sample_rate: int = 16000, overwrite: bool = False) -> dict:
  """Writes the class folders and returns the manifest (also `<out>/synth_manifest.json`)."""
  params = _check(seed, classes, clips_per_class, seconds, sample_rate)
  out = pathlib.Path(out_dir)
  header = {"generator": _GENERATOR, "version": _VERSION, "params": params}
  done = prepare_output(out, header, overwrite, lambda old: _owned(out))
  if done is not None:
    return {**done, "skipped": True}
  total = 0
  for name in params["classes"]:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(params["clips_per_class"]):
      audio = synth_clip(name, i, seed=params["seed"], seconds=params["seconds"], sample_rate=params["sample_rate"])
      write_wav(folder / f"{name}_{i:04d}.wav", audio, params["sample_rate"])
      total += 1
  manifest = {**header, "complete": True, "n_files": total,
              "hard_pairs": [list(p) for p in HARD_PAIRS if set(p) <= set(params["classes"])]}
  write_manifest(out, manifest)
  return {**manifest, "skipped": False}
