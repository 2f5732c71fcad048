"""Host-side log-mel features for the anomalous-sound detector (numpy; runs in loader workers).

Defaults follow the DCASE2020 Task 2 baseline front end at 64 mels: n_fft 1024, hop 512, power 2,
Hann window, centred frames (reflect padding), Slaney-scale mel filters, then 10*log10(mel + eps) (dB).
"""
import dataclasses
import functools

import numpy as np

from vqax.audio.mel import mel_filterbank


@dataclasses.dataclass(frozen=True)
class LogMelConfig:
  sample_rate: int = 16000
  n_fft: int = 1024
  hop_length: int = 512
  n_mels: int = 64
  power: float = 2.0
  f_min: float = 0.0
  f_max: float | None = None
  eps: float = 1e-10
  # How files become waveforms: resample other rates (else reject), average stereo channels (else reject).
  resample: bool = False
  downmix: bool = True


@functools.lru_cache(maxsize=8)
def _filters(cfg: LogMelConfig) -> np.ndarray:
  f_max = cfg.f_max or cfg.sample_rate / 2
  fb = mel_filterbank(cfg.n_fft // 2 + 1, cfg.f_min, f_max, cfg.n_mels, cfg.sample_rate, htk=False,
                      slaney_norm=True)
  return fb.astype(np.float32)


def num_frames(num_samples: int, cfg: LogMelConfig = LogMelConfig()) -> int:
  return 1 + num_samples // cfg.hop_length


def log_mel(wave: np.ndarray, cfg: LogMelConfig = LogMelConfig()) -> np.ndarray:
  """float32 waveform [samples] -> float32 log-mel [n_mels, frames]."""
  pad = cfg.n_fft // 2
  mode = "reflect" if wave.shape[0] > pad else "constant"
  padded = np.pad(wave.astype(np.float32), pad, mode=mode)
  frames = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)[::cfg.hop_length]
  window = np.hanning(cfg.n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
  spectrum = np.abs(np.fft.rfft(frames * window, axis=1)) ** cfg.power
  mel = spectrum.astype(np.float32) @ _filters(cfg)
  return (10.0 * np.log10(mel + cfg.eps)).T.astype(np.float32)
