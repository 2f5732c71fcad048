"""Mel filterbanks in numpy (host side; also baked into jitted front ends as constants).

Written here rather than imported because the ReDimNet parity target is torchaudio's
`melscale_fbanks` (HTK scale, no normalisation), which must match bit for bit; the same function serves
the DCASE features so both models share one definition.
"""
import numpy as np


def hz_to_mel(freq, htk: bool = True):
  freq = np.asarray(freq, dtype=np.float64)
  if htk:
    return 2595.0 * np.log10(1.0 + freq / 700.0)
  # Slaney: linear below 1 kHz, logarithmic above.
  f_sp = 200.0 / 3
  mels = freq / f_sp
  min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
  return np.where(freq >= min_log_hz, min_log_mel + np.log(np.maximum(freq, 1e-10) / min_log_hz) / logstep, mels)


def mel_to_hz(mels, htk: bool = True):
  mels = np.asarray(mels, dtype=np.float64)
  if htk:
    return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
  f_sp = 200.0 / 3
  freqs = f_sp * mels
  min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
  return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int,
                   htk: bool = True, slaney_norm: bool = False) -> np.ndarray:
  """Triangular mel filters, shape [n_freqs, n_mels] (same convention as torchaudio.melscale_fbanks).

  `n_freqs` is n_fft // 2 + 1. Returns float64; callers cast.
  """
  all_freqs = np.linspace(0, sample_rate // 2, n_freqs)
  m_pts = np.linspace(hz_to_mel(f_min, htk), hz_to_mel(f_max, htk), n_mels + 2)
  f_pts = mel_to_hz(m_pts, htk)
  f_diff = f_pts[1:] - f_pts[:-1]
  slopes = f_pts[None, :] - all_freqs[:, None]  # [n_freqs, n_mels + 2]
  down = -slopes[:, :-2] / f_diff[:-1]
  up = slopes[:, 2:] / f_diff[1:]
  fb = np.maximum(0.0, np.minimum(down, up))
  if slaney_norm:
    fb *= (2.0 / (f_pts[2:n_mels + 2] - f_pts[:n_mels]))[None, :]
  return fb
