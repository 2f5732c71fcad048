"""Synthetic multi-speaker corpus in the VoxCeleb layout, `<out>/idNNNNN/vidNN/NNNNN.wav` (16 kHz mono 16-bit).

Lets the speaker-embedding pipeline, its tests and demos run without VoxCeleb. Utterances are source-filter
speech: a Rosenberg glottal pulse train (jitter, shimmer, aspiration) with an intonation contour, shaped by
formant resonances that move between vowel targets syllable by syllable, with fricative and stop noise and
pauses. A speaker is a pitch range, a vocal-tract length, vowel formants, spectral tilt, breathiness and a
speaking rate; each video adds its own channel (EQ, band limits, noise floor), so verification is not trivial.

Every utterance is seeded from (seed, speaker, video, utterance) alone, so it is bit-identical no matter
which others are generated; the manifest and skip/overwrite rules are those of `synth_dcase`.
"""
import pathlib
import re

import numpy as np
import scipy.fft
from scipy.ndimage import uniform_filter1d

from vqax.data.synth_dcase import (check_count, check_sample_rate, check_seed, clip_rng, prepare_output,
                                   write_manifest, write_wav)
from vqax.errors import ConfigError

FILE_RE = re.compile(r"^id\d{5}/vid\d{2}/\d{5}\.wav$")
_GENERATOR = "vqax.data.synth_speakers"
_VERSION = 1
_GOLDEN = 0.6180339887498949

# Adult male vowel formants F1-F4 (Hz, after Peterson & Barney): a, ae, uh, e, i, ih, o, u.
_VOWELS = np.array([
    [730, 1090, 2440, 3400], [660, 1720, 2410, 3400], [640, 1190, 2390, 3300], [530, 1840, 2480, 3500],
    [270, 2290, 3010, 3700], [390, 1990, 2550, 3600], [570, 840, 2410, 3300], [300, 870, 2240, 3300],
], dtype=np.float64)
_BANDWIDTHS = np.array([80.0, 100.0, 140.0, 200.0, 260.0])
# Fricative noise bands (centre Hz for a male tract, width in octaves): s, sh, f, h.
_FRICATIVES = np.array([[5500.0, 0.5], [3000.0, 0.6], [4500.0, 1.6], [1500.0, 1.3]])


def speaker_params(seed: int, speaker: int) -> dict:
  """One speaker's voice. Pitch is spread by a golden-ratio sequence so any first k speakers differ in F0."""
  rng = clip_rng(seed, "speakers", "speaker", speaker)
  u = (clip_rng(seed, "speakers", "offset").uniform() + speaker * _GOLDEN) % 1.0
  sq = rng.uniform(1.5, 3.0)
  oq = rng.uniform(0.45, 0.7)
  return {
      "f0_hz": 85.0 * 3.0 ** u,  # 85-255 Hz
      "f0_range_st": rng.uniform(1.5, 4.0),
      # Higher voices tend to have shorter vocal tracts (higher formants), with individual spread.
      "formant_scale": 0.9 + 0.28 * (0.75 * u + 0.25 * rng.uniform()),
      "vowels": _VOWELS * (1.0 + 0.04 * rng.standard_normal(_VOWELS.shape)),
      "tilt_db_oct": rng.uniform(-3.0, 1.0),
      "breathiness": rng.uniform(0.02, 0.25),
      "jitter": rng.uniform(0.004, 0.015),
      "shimmer": rng.uniform(0.03, 0.08),
      "rise": oq * sq / (1.0 + sq),  # Rosenberg pulse: opening and closing phase, fractions of a period
      "fall": oq / (1.0 + sq),
      "syllable_rate": rng.uniform(3.0, 6.0),
      "pause_prob": rng.uniform(0.05, 0.2),
  }


def _channel(seed: int, speaker: int, video: int, freqs: np.ndarray) -> tuple[np.ndarray, float, float]:
  """A video's recording chain: EQ magnitude per frequency, level (dBFS) and SNR (dB)."""
  rng = clip_rng(seed, "speakers", "video", speaker, video)
  f = np.maximum(freqs, 1.0)
  eq = (f / 1000.0) ** (rng.uniform(-1.5, 1.5) / 6.02)
  for _ in range(2):
    gain_db, centre = rng.uniform(-5.0, 5.0), rng.uniform(300.0, 5000.0)
    eq *= 10.0 ** (gain_db / 20.0 * np.exp(-0.5 * (np.log2(f / centre) / 0.5) ** 2))
  hp = (f / rng.uniform(60.0, 200.0)) ** 2
  lp = (f / rng.uniform(4500.0, 9000.0)) ** 8
  eq *= np.sqrt(hp / (1.0 + hp)) / np.sqrt(1.0 + lp)
  return eq, rng.uniform(-30.0, -22.0), rng.uniform(15.0, 35.0)


def _rosenberg(p: np.ndarray, rise: float, fall: float) -> np.ndarray:
  """Glottal flow over one period, p in [0, 1): raised-cosine opening, quarter-cosine closing, then closed."""
  opening = 0.5 * (1.0 - np.cos(np.pi * p / rise))
  closing = np.cos(0.5 * np.pi * (p - rise) / fall)
  return np.where(p < rise, opening, np.where(p < rise + fall, closing, 0.0))


def _stft(x: np.ndarray, n_fft: int, hop: int, window: np.ndarray) -> np.ndarray:
  pad = np.pad(x, (n_fft // 2, n_fft // 2 + hop))
  frames = np.lib.stride_tricks.sliding_window_view(pad, n_fft)[::hop]
  return scipy.fft.rfft(frames * window, axis=1)


def _istft(spec: np.ndarray, n_fft: int, hop: int, window: np.ndarray, n: int) -> np.ndarray:
  """Overlap-add inverse of `_stft` (one loop step per hop within a frame, not per sample)."""
  frames = scipy.fft.irfft(spec, n_fft, axis=1) * window
  n_frames = frames.shape[0]
  out = np.zeros(n_frames * hop + n_fft)
  for j in range(n_fft // hop):
    out[j * hop:j * hop + n_frames * hop] += frames[:, j * hop:(j + 1) * hop].reshape(-1)
  return out[n_fft // 2:n_fft // 2 + n] / (np.sum(window ** 2) / hop)


def _syllables(rng: np.random.Generator, sp: dict, dur: float, tf: np.ndarray, sr: int, hop: int):
  """Per-frame plan of an utterance: voicing and noise amplitude, formant tracks, fricative kind, syllable."""
  rate = sp["syllable_rate"] * (1.0 + 0.08 * rng.standard_normal())
  m = int(dur * rate * 2) + 4
  syl = np.exp(np.log(1.0 / rate) + 0.25 * rng.standard_normal(m))
  pause = np.where(rng.uniform(size=m) < sp["pause_prob"], rng.uniform(0.12, 0.35, m), 0.0)
  lead, tail = rng.uniform(0.05, 0.2, 2) * min(1.0, dur)
  starts = lead + np.concatenate([[0.0], np.cumsum(syl + pause)[:-1]])
  keep = max(1, int(np.sum(starts + syl <= dur - tail)))
  syl[:keep] *= min(1.0, (dur - tail - lead) / (starts[keep - 1] + syl[keep - 1] - lead))  # fit at least one
  starts = lead + np.concatenate([[0.0], np.cumsum(syl + pause)[:-1]])
  onset_kind = rng.choice(3, m, p=[0.35, 0.4, 0.25])  # none, fricative, stop
  onset = np.select([onset_kind == 1, onset_kind == 2], [rng.uniform(0.05, 0.12, m), rng.uniform(0.03, 0.06, m)])
  onset = np.minimum(onset, 0.45 * syl)
  vowel = rng.integers(0, len(_VOWELS), m)
  fric = rng.integers(0, len(_FRICATIVES), m)
  stress = rng.uniform(0.6, 1.0, m)

  k = np.clip(np.searchsorted(starts, tf, "right") - 1, 0, m - 1)
  rel = tf - starts[k]
  inside = (tf >= starts[0]) & (rel < syl[k]) & (k < keep)
  nucleus = inside & (rel >= onset[k])
  shape = np.sin(np.pi * np.clip((rel - onset[k]) / (syl[k] - onset[k]), 0.0, 1.0)) ** 0.6
  voice_amp = uniform_filter1d(np.where(nucleus, shape * stress[k], 0.0), 3)
  in_onset = inside & ~nucleus
  hiss = 0.35 * np.sin(np.pi * rel / np.maximum(onset[k], 1e-3))
  noise_amp = np.where(in_onset & (onset_kind[k] == 1), hiss, 0.0)
  burst = in_onset & (onset_kind[k] == 2) & (onset[k] - rel < 0.015)  # stop release after a silent closure
  noise_amp = uniform_filter1d(np.where(burst, 0.6, noise_amp) * stress[k], 2)
  # Formants glide between vowel targets (coarticulation) over ~50 ms; F5 stays put.
  formants = uniform_filter1d(sp["vowels"][vowel[k]] * sp["formant_scale"], max(1, int(0.05 * sr / hop)), axis=0)
  formants = np.concatenate([formants, np.full((tf.size, 1), 4500.0 * sp["formant_scale"])], axis=1)
  return voice_amp, noise_amp, formants, fric[k], k, m


def _glottal_source(rng: np.random.Generator, sp: dict, f0: np.ndarray, sr: int) -> np.ndarray:
  """Rosenberg pulses at f0 with jitter (one draw per nominal period) and shimmer, plus aspiration noise."""
  n = f0.size
  per_period = rng.standard_normal(int(n / sr * sp["f0_hz"] * 1.5) + 2)
  period_index = np.floor(np.arange(n) / sr * sp["f0_hz"]).astype(np.int64)
  cycles = np.cumsum(f0 * (1.0 + sp["jitter"] * per_period[period_index])) / sr + rng.uniform()
  index = np.floor(cycles).astype(np.int64)
  flow = _rosenberg(cycles - index, sp["rise"], sp["fall"])
  flow *= 1.0 + sp["shimmer"] * rng.standard_normal(index[-1] + 1)[index]
  source = np.diff(flow, prepend=0.0)  # flow derivative, with lip radiation
  source /= np.sqrt(np.mean(source ** 2)) + 1e-12
  return source + sp["breathiness"] * 3.0 * rng.standard_normal(n) * (0.3 + flow)


def _tract(sp: dict, formants: np.ndarray, freqs: np.ndarray) -> np.ndarray:
  """|H| per frame and frequency of a cascade of two-pole formant resonances, times the speaker's tilt."""
  f2 = (freqs ** 2).astype(np.float32)[None, :, None]
  fc2 = (formants ** 2).astype(np.float32)[:, None, :]
  bw2 = ((_BANDWIDTHS * (0.8 + 0.4 * sp["formant_scale"])) ** 2).astype(np.float32)
  tilt = (np.maximum(freqs, 50.0) / 1000.0) ** (sp["tilt_db_oct"] / 6.02)
  return np.prod(fc2 / np.sqrt((fc2 - f2) ** 2 + bw2 * f2), axis=2) * tilt


def synth_utterance(speaker: int, video: int, utt: int, *, seed: int = 0, seconds=(2.0, 4.0),
                    sample_rate: int = 16000) -> np.ndarray:
  """One utterance, float64 in [-1, 1]; `seconds` is a length or a (min, max) range."""
  sp = speaker_params(seed, speaker)
  rng = clip_rng(seed, "speakers", "utt", speaker, video, utt)
  sr = sample_rate
  lo, hi = (seconds, seconds) if np.isscalar(seconds) else seconds
  dur = rng.uniform(lo, hi) if hi > lo else lo
  n = int(round(dur * sr))
  n_fft = 2 ** int(round(np.log2(0.032 * sr)))
  hop = n_fft // 4
  window = np.hanning(n_fft + 1)[:-1]
  n_frames = (n + hop) // hop + 1
  tf = np.arange(n_frames) * hop / sr  # frame centres, seconds
  freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
  voice_amp, noise_amp, formants, fric, syllable, m = _syllables(rng, sp, dur, tf, sr, hop)

  # Intonation: declination over the utterance, a pitch accent per syllable, a small per-utterance offset.
  semitones = np.linspace(0.5, -0.5, n_frames) * rng.uniform(1.0, 3.0)
  accents = 0.35 * sp["f0_range_st"] * rng.standard_normal(m)[syllable]
  semitones += uniform_filter1d(accents, max(1, int(0.08 * sr / hop)))
  semitones += 0.3 * rng.standard_normal()
  f0 = np.interp(np.arange(n) / sr, tf, sp["f0_hz"] * 2.0 ** (semitones / 12.0))
  source = _glottal_source(rng, sp, f0, sr) * np.interp(np.arange(n) / sr, tf, voice_amp)

  # Voiced part through the tract; fricative and burst noise shaped by its own band, both through the channel.
  centres = _FRICATIVES[:, 0:1] * sp["formant_scale"]
  fric_shape = np.exp(-0.5 * (np.log2(np.maximum(freqs, 1.0)[None, :] / centres) / _FRICATIVES[:, 1:2]) ** 2)
  white = rng.standard_normal((n_frames, 2 * freqs.size), dtype=np.float32).view(np.complex64)
  voiced = _stft(source, n_fft, hop, window)[:n_frames] * _tract(sp, formants, freqs)
  voiced /= np.sqrt(np.mean(np.abs(voiced) ** 2)) + 1e-12
  unvoiced = white * fric_shape[fric] * noise_amp[:, None] * 8.0
  eq, level_db, snr_db = _channel(seed, speaker, video, freqs)
  y = _istft((voiced + unvoiced) * eq, n_fft, hop, window, n)
  y *= 10.0 ** ((level_db + 0.7 * rng.standard_normal()) / 20.0) / (np.sqrt(np.mean(y ** 2)) + 1e-12)
  y += rng.standard_normal(n) * np.sqrt(np.mean(y ** 2)) * 10.0 ** (-snr_db / 20.0)
  return np.clip(y, -1.0, 1.0)


def _check(seed, n_speakers, n_videos, utts_per_video, seconds, sample_rate) -> dict:
  if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
    seconds = (seconds, seconds)
  ok = (isinstance(seconds, (tuple, list)) and len(seconds) == 2
        and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in seconds))
  if not ok or not 0.2 <= seconds[0] <= seconds[1] <= 60.0:
    raise ConfigError(f"seconds={seconds!r}: expected a length or a (min, max) pair with 0.2 <= min <= max <= 60")
  params = {
      "seed": check_seed(seed), "n_speakers": check_count("n_speakers", n_speakers, 1),
      "n_videos": check_count("n_videos", n_videos, 1),
      "utts_per_video": check_count("utts_per_video", utts_per_video, 1),
      "seconds": [float(seconds[0]), float(seconds[1])], "sample_rate": check_sample_rate(sample_rate),
  }
  for name, top in (("n_speakers", 100000), ("n_videos", 100), ("utts_per_video", 100000)):
    if params[name] >= top:
      raise ConfigError(f"{name}={params[name]}: expected fewer than {top} (the layout's digits)")
  return params


def _owned(out: pathlib.Path) -> list[pathlib.Path]:
  return sorted(f for f in out.glob("id*/vid*/*.wav") if FILE_RE.match(f.relative_to(out).as_posix()))


def generate_speakers(out_dir, *, seed: int = 0, n_speakers: int = 50, n_videos: int = 2, utts_per_video: int = 4,
                      seconds=(2.0, 4.0), sample_rate: int = 16000, overwrite: bool = False) -> dict:
  """Writes the corpus and returns its manifest (also `<out>/synth_manifest.json`).

  Same skip/overwrite rules as `generate_dcase`. The manifest holds the settings, `n_files` and
  `speakers[idNNNNN]` = {f0_hz, formant_scale, syllable_rate} for inspection.
  """
  params = _check(seed, n_speakers, n_videos, utts_per_video, seconds, sample_rate)
  out = pathlib.Path(out_dir)
  header = {"generator": _GENERATOR, "version": _VERSION, "params": params}
  done = prepare_output(out, header, overwrite, lambda old: _owned(out))
  if done is not None:
    return {**done, "skipped": True}
  speakers, total = {}, 0
  for s in range(params["n_speakers"]):
    sp = speaker_params(params["seed"], s)
    speakers[f"id{s:05d}"] = {k: round(float(sp[k]), 4) for k in ("f0_hz", "formant_scale", "syllable_rate")}
    for v in range(params["n_videos"]):
      folder = out / f"id{s:05d}" / f"vid{v:02d}"
      folder.mkdir(parents=True, exist_ok=True)
      for u in range(params["utts_per_video"]):
        audio = synth_utterance(s, v, u, seed=params["seed"], seconds=tuple(params["seconds"]),
                                sample_rate=params["sample_rate"])
        write_wav(folder / f"{u:05d}.wav", audio, params["sample_rate"])
        total += 1
  manifest = {**header, "complete": True, "n_files": total, "speakers": speakers}
  write_manifest(out, manifest)
  return {**manifest, "skipped": False}
