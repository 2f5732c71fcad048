"""Reading audio files with clear errors (soundfile/libsndfile: wav, flac, ogg)."""
import functools
import logging
import pathlib

import numpy as np
import soundfile as sf

from vqax.errors import DataError

log = logging.getLogger(__name__)


def read_audio(path, sample_rate: int, *, resample: bool = False, downmix: bool = True,
               min_samples: int = 1) -> np.ndarray:
  """Mono float32 waveform of `path` at `sample_rate`.

  Raises DataError naming the file when it is missing, not audio, empty, at another rate (unless
  `resample`), multi-channel (unless `downmix`) or shorter than `min_samples`.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"{path}: audio file not found")
  try:
    wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
  except Exception as e:  # libsndfile reports corrupt/non-audio files with assorted messages
    raise DataError(f"{path}: not a readable audio file ({str(e).strip().splitlines()[0]})") from None
  if wave.shape[0] == 0:
    raise DataError(f"{path}: empty audio file (0 samples)")
  if wave.shape[1] > 1:
    if not downmix:
      raise DataError(f"{path}: expected mono audio, got {wave.shape[1]} channels (stereo=downmix averages them)")
    _note_downmix(str(path), wave.shape[1])
    wave = wave.mean(axis=1, keepdims=True)
  wave = wave[:, 0]
  if rate != sample_rate:
    if not resample:
      raise DataError(f"{path}: expected sample rate {sample_rate} Hz, got {rate} Hz (set resample=True to convert)")
    wave = resample_poly(wave, rate, sample_rate)
  if wave.shape[0] < min_samples:
    raise DataError(f"{path}: {wave.shape[0]} samples, need at least {min_samples}")
  if not np.all(np.isfinite(wave)):
    raise DataError(f"{path}: audio contains NaN or Inf samples")
  return wave


@functools.lru_cache(maxsize=None)
def _note_downmix(path: str, channels: int) -> None:
  """The downmix note, once per file and process: loaders re-read every clip each epoch."""
  log.warning("%s: averaged %d channels to mono", path, channels)


def resample_poly(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
  """Band-limited polyphase resampling (scipy), float32 in and out."""
  from math import gcd

  from scipy.signal import resample_poly as _resample_poly
  g = gcd(rate_in, rate_out)
  return _resample_poly(wave, rate_out // g, rate_in // g).astype(np.float32)
