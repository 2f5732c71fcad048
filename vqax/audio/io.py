"""Reading audio files with clear errors (soundfile/libsndfile: wav, flac, ogg)."""
import functools
import logging
import pathlib

import numpy as np
import soundfile as sf

from vqax.audio.integrity import check_complete, check_decoded_length, explain_failed_decode
from vqax.errors import DataError

log = logging.getLogger(__name__)


def read_audio(path, sample_rate: int, *, resample: bool = False, downmix: bool = True,
               min_samples: int = 1) -> np.ndarray:
  """Mono float32 waveform of `path` at `sample_rate`.

  Raises DataError naming the file when it is missing (or a folder), not audio, truncated (shorter than its
  header promises), empty, at another rate (unless `resample`), multi-channel (unless `downmix`), shorter
  than `min_samples`, or holds NaN/Inf samples.
  """
  path = pathlib.Path(path)
  check_is_file(path)
  try:
    with sf.SoundFile(str(path)) as sound_file:
      check_complete(path, sound_file, decode_tail=False)  # libsndfile reads a truncated wav as a shorter one
      rate = sound_file.samplerate
      wave = sound_file.read(dtype="float32", always_2d=True)
      check_decoded_length(path, sound_file, wave.shape[0])
  except DataError:
    raise
  except Exception as e:  # libsndfile reports corrupt/non-audio files with assorted messages
    explain_failed_decode(path)  # a truncated FLAC fails mid-decode: say that it is truncated
    raise DataError(f"{path}: not a readable audio file ({first_line(e)})") from None
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


def check_is_file(path: pathlib.Path, kind: str = "audio file") -> None:
  """DataError for a missing path, or a folder where a file is expected (said as such: a folder named like
  a clip is a layout mistake, not a missing file)."""
  if path.is_dir():
    raise DataError(f"{path}: is a folder, not a file (expected {'an' if kind[0] in 'aeiou' else 'a'} {kind})")
  if not path.is_file():
    raise DataError(f"{path}: {kind} not found")


def first_line(error: Exception) -> str:
  """The first line of an exception's message (its type when the message is empty)."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


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
