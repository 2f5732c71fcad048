"""Speaker-labelled utterances: listing a corpus and the grain pipeline of fixed-length training crops.

Layouts (detected per speaker folder; the speaker label is always the first-level folder name):
  VoxCeleb              <root>/<speaker>/<video>/<utt>.wav
  LibriSpeech           <root>/<speaker>/<chapter>/<utt>.flac
  flat (e.g. shared/)   <root>/<speaker>/<utt>.flac
Files at the top level (README, SPEAKERS.TXT) and hidden entries are ignored. Batches carry waveforms only
({"wave": [B, samples] float32, "label": [B] int32}); the model computes log-mel features on the device.
"""
import concurrent.futures
import dataclasses
import functools
import logging
import pathlib

import grain
import numpy as np
import soundfile as sf

from vqax.audio.integrity import check_complete, scan_float_samples
from vqax.audio.io import check_is_file, first_line, read_audio
from vqax.data.pipeline import make_loader
from vqax.errors import DataError
from vqax import stop_signals

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
SAMPLE_RATE = 16000


@dataclasses.dataclass(frozen=True)
class Utterance:
  path: str  # absolute
  relpath: str  # relative to the corpus root, '/'-separated (the trial-list form)
  speaker: str
  label: int  # index of the speaker in the sorted speaker list


def _visible(path: pathlib.Path) -> bool:
  return not path.name.startswith(".")


def _speaker_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """Audio directly in the speaker folder (flat) and one level down (video / chapter folders).

  Anything named like audio is listed, folders included: a folder called `00001.wav` is a layout mistake
  that the file checks name (or skip and count), not something to pass over in silence.
  """
  files = []
  for entry in sorted(filter(_visible, folder.iterdir())):
    if entry.suffix.lower() in AUDIO_EXTENSIONS:
      files.append(entry)
    elif entry.is_dir():
      files += [f for f in sorted(filter(_visible, entry.iterdir())) if f.suffix.lower() in AUDIO_EXTENSIONS]
  return files


def list_utterances(root) -> tuple[list[Utterance], list[str]]:
  """(utterances sorted by path, sorted speaker names); labels index the speaker list.

  DataError for a missing root, a root without speaker folders, or a speaker folder without audio.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"data_root {root}: folder not found")
  folders = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
  if not folders:
    raise DataError(f"data_root {root}: no speaker folders (expected <root>/<speaker>/[<video or chapter>/]"
                    f"<utt>{'|'.join(AUDIO_EXTENSIONS)})")
  speakers = [p.name for p in folders]
  utterances = []
  for label, folder in enumerate(folders):
    files = _speaker_files(folder)
    if not files:
      raise DataError(f"{folder}: speaker folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)}) directly "
                      f"or one folder down")
    utterances += [Utterance(str(f.absolute()), f.relative_to(root).as_posix(), folder.name, label) for f in files]
  return utterances, speakers


def header_samples(path, *, resample: bool = False) -> int:
  """Length of `path` in 16 kHz samples, from a cheap look at the file (its header, whether the promised
  audio is all there, and for float files whether every sample is finite).

  DataError naming the file when it is not readable audio, truncated, empty, at another rate without
  `resample`, or a float file with NaN/Inf samples: the checks `read_audio` makes, moved before training
  so a bad file never stops a run half-way. Integer PCM is never decoded here (it cannot hold NaN);
  float files are read through once.
  """
  check_is_file(pathlib.Path(path))
  try:
    with sf.SoundFile(str(path)) as f:
      frames, rate = f.frames, f.samplerate
      check_complete(path, f)
      scan_float_samples(path, f)
  except DataError:
    raise
  except Exception as e:  # libsndfile reports corrupt/non-audio files with assorted messages
    raise DataError(f"{path}: not a readable audio file ({first_line(e)}); expected "
                    f"{'/'.join(x[1:] for x in AUDIO_EXTENSIONS)} audio at {SAMPLE_RATE} Hz") from None
  if frames <= 0:
    raise DataError(f"{path}: empty audio file (0 samples)")
  if rate != SAMPLE_RATE and not resample:
    raise DataError(f"{path}: expected sample rate {SAMPLE_RATE} Hz, got {rate} Hz (set resample=True to convert)")
  return -(-frames * SAMPLE_RATE // rate)  # ceil, as polyphase resampling gives


def check_utterances(utterances, *, min_samples: int = 1, resample: bool = False,
                     skip_bad_files: bool = False) -> tuple[list[Utterance], list[str], int]:
  """(usable utterances, one message per bad file, number shorter than `min_samples`), from headers only.

  A bad file (see `header_samples`) raises its DataError, the first in listing order, unless
  `skip_bad_files`: then it is logged once and left out. Files shorter than `min_samples` (min_seconds)
  are left out by design, not as errors. Headers are read from a thread pool: on a network file system
  a million-file corpus is bound by latency, not CPU.
  """
  def check(utterance):
    try:
      return header_samples(utterance.path, resample=resample), None
    except DataError as e:
      return 0, e

  kept, bad, short = [], [], 0
  pool = concurrent.futures.ThreadPoolExecutor()
  try:
    for utterance, (samples, error) in zip(utterances, pool.map(check, utterances)):
      stop_signals.check("data scan")
      if error is not None:
        if not skip_bad_files:
          raise error
        log.warning("skipping bad file: %s", error)
        bad.append(str(error))
      elif samples < min_samples:
        short += 1
      else:
        kept.append(utterance)
  finally:
    pool.shutdown(cancel_futures=True)  # an error stops the check at once
  return kept, bad, short


# ----------------------------------------------------------------------------------------------------------
# Training pipeline


def random_crop(wave: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
  """A random `length`-sample window; a shorter wave is first repeated (wrap-padded) to the length."""
  if wave.shape[0] < length:
    wave = np.pad(wave, (0, length - wave.shape[0]), mode="wrap")  # WeSpeaker's repeat padding
  start = int(rng.integers(0, wave.shape[0] - length + 1))
  return wave[start:start + length]


@dataclasses.dataclass
class ReadUtterance(grain.transforms.Map):
  """Utterance -> {"wave", "label"}. The wave comes out empty (and `KeepReadable` drops it) when the file is
  shorter than `min_samples` (rejected by design) or unreadable with `skip_bad_files` (else DataError).

  `check_utterances` already left out every file that fails here for a reason a cheap look can find
  (truncated, NaN in float files); this catches the rest (e.g. a corrupt FLAC frame mid-file) and files
  changed since. Under `skip_bad_files` each is said once per file and process, not once per epoch.
  """
  min_samples: int = 1
  resample: bool = False
  skip_bad_files: bool = False

  def map(self, utterance: Utterance):
    try:
      wave = read_audio(utterance.path, SAMPLE_RATE, resample=self.resample)
    except DataError as e:
      if not self.skip_bad_files:
        raise
      _note_skipped(str(e))
      wave = np.zeros((0,), np.float32)
    if wave.shape[0] < self.min_samples:
      wave = np.zeros((0,), np.float32)
    return {"wave": wave, "label": np.int32(utterance.label)}


@functools.lru_cache(maxsize=None)
def _note_skipped(message: str) -> None:
  log.warning("skipping bad file: %s", message)


class KeepReadable(grain.transforms.Filter):
  def filter(self, element) -> bool:
    return element["wave"].shape[0] > 0


@dataclasses.dataclass
class RandomCrop(grain.transforms.RandomMap):
  """{"wave"} -> a random fixed-length crop (`random_crop`)."""
  length: int

  def random_map(self, element, rng: np.random.Generator):
    return dict(element, wave=random_crop(element["wave"], self.length, rng).astype(np.float32))


def train_loader(utterances, *, batch_size: int, segment_samples: int, seed: int, min_samples: int = 1,
                 resample: bool = False, skip_bad_files: bool = False, worker_count: int = 0):
  """Infinite, shuffled loader of {"wave": [batch_size, segment_samples], "label": [batch_size]} batches."""
  ops = [ReadUtterance(min_samples, resample, skip_bad_files), KeepReadable(), RandomCrop(segment_samples)]
  return make_loader(utterances, ops, batch_size=batch_size, seed=seed, shuffle=True, num_epochs=None,
                     worker_count=worker_count)
