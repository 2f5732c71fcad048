"""A labelled folder of audio, one folder per class, as fixed-size log-mel spectrograms for classifiers and
conditional GANs.

Layout: `<root>/<class>/<clip>.{wav,flac,ogg}` (audio one folder further down, e.g. LibriSpeech chapters,
also counts). Classes are the sorted folder names; hidden entries and top-level files are ignored.

Every file gives clips of `clip_seconds` (the first at its start, then every `clip_hop_seconds` while a
whole clip fits; None: only the first), each a [n_mels, frames] log-mel spectrogram from the project's
shared front end (`vqax.audio.features.log_mel`, its STFT hop `features.hop_length`), with
frames = 1 + clip_samples // hop_length -- the seed's 30 s at 22.05 kHz and hop 512 give 1292. Clip
boundaries come from file headers, so listing decodes nothing. Spectrograms are standardised with one
mean/std over the training clips (`fit_normalization`), so the GAN works in the same units.

The data stays on the host: grain workers decode and transform, and the trainer moves one batch per step.
Batches are {"spectrogram": [B, n_mels, frames] float32, "label": [B] int32}.
"""
import dataclasses
import pathlib

import grain
import numpy as np
import soundfile as sf

from vqax.audio.features import LogMelConfig, log_mel
from vqax.audio.io import read_audio
from vqax.data.pipeline import make_loader
from vqax.errors import ConfigError, DataError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """How files become spectrograms: the front end, the clip length and the hop between clips in a file."""
  features: LogMelConfig = LogMelConfig()
  clip_seconds: float = 30.0
  clip_hop_seconds: float | None = None

  @property
  def clip_samples(self) -> int:
    return round(self.clip_seconds * self.features.sample_rate)

  @property
  def frames(self) -> int:
    return 1 + self.clip_samples // self.features.hop_length

  @property
  def shape(self) -> tuple[int, int]:
    return (self.features.n_mels, self.frames)

  def check(self) -> "ClipConfig":
    if not self.clip_seconds > 0:
      raise ConfigError(f"clip_seconds={self.clip_seconds!r}: expected a positive length")
    if self.clip_hop_seconds is not None and not self.clip_hop_seconds > 0:
      raise ConfigError(f"clip_hop_seconds={self.clip_hop_seconds!r}: expected a positive hop or None")
    if self.clip_samples < self.features.n_fft // 2 + 1:
      raise ConfigError(f"clip_seconds={self.clip_seconds} is shorter than half an FFT window "
                        f"({self.features.n_fft} samples)")
    return self


@dataclasses.dataclass(frozen=True)
class ClipRecord:
  path: str
  label: int
  class_name: str
  start: int  # first sample of the clip, at the config's sample rate


def _visible(path: pathlib.Path) -> bool:
  return not path.name.startswith(".")


def _audio_files(folder: pathlib.Path) -> list[pathlib.Path]:
  files = []
  for entry in sorted(filter(_visible, folder.iterdir())):
    if entry.is_dir():
      files += [f for f in sorted(filter(_visible, entry.iterdir()))
                if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS]
    elif entry.suffix.lower() in AUDIO_EXTENSIONS:
      files.append(entry)
  return files


def _length_at_rate(path: pathlib.Path, cfg: LogMelConfig) -> int:
  """Samples of `path` at cfg.sample_rate, from the header. DataError for unreadable or other-rate files."""
  try:
    info = sf.info(str(path))
  except Exception as e:  # libsndfile reports corrupt/non-audio files with assorted messages
    raise DataError(f"{path}: not a readable audio file ({str(e).strip().splitlines()[0]})") from None
  if info.samplerate != cfg.sample_rate and not cfg.resample:
    raise DataError(f"{path}: expected sample rate {cfg.sample_rate} Hz, got {info.samplerate} Hz "
                    "(set features.resample=True to convert)")
  return info.frames * cfg.sample_rate // info.samplerate


def clip_starts(num_samples: int, cfg: ClipConfig) -> list[int]:
  """First samples of the whole clips that fit in `num_samples`."""
  if num_samples < cfg.clip_samples:
    return []
  if cfg.clip_hop_seconds is None:
    return [0]
  hop = max(1, round(cfg.clip_hop_seconds * cfg.features.sample_rate))
  return list(range(0, num_samples - cfg.clip_samples + 1, hop))


def list_clips(root, cfg: ClipConfig, *, skip_short: bool = False) -> tuple[list[ClipRecord], list[str]]:
  """(clip records in path order, sorted class names) for `<root>/<class>/...`.

  DataError (one, naming the folder or file) for: a missing root; fewer than two class folders; a class
  folder without audio; a file shorter than one clip (unless `skip_short`: then it is left out, and a
  class left without clips is the error); an unreadable file or one at another sample rate.
  """
  cfg.check()
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"data_root {root}: folder not found")
  folders = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
  if len(folders) < 2:
    found = f"only {folders[0].name!r}" if folders else "none"
    raise DataError(f"data_root {root}: a classifier needs at least two class folders "
                    f"(<root>/<class>/<clip>{'|'.join(AUDIO_EXTENSIONS)}), found {found}")
  records: list[ClipRecord] = []
  for label, folder in enumerate(folders):
    files = _audio_files(folder)
    if not files:
      raise DataError(f"{folder}: class folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    clips = []
    for path in files:
      starts = clip_starts(_length_at_rate(path, cfg.features), cfg)
      if not starts and not skip_short:
        raise DataError(f"{path}: shorter than one spectrogram clip ({cfg.clip_seconds:g} s = "
                        f"{cfg.clip_samples} samples); lower clip_seconds or set skip_short")
      clips += [ClipRecord(str(path.absolute()), label, folder.name, s) for s in starts]
    if not clips:
      raise DataError(f"{folder}: no usable clips (every file is shorter than {cfg.clip_seconds:g} s)")
    records += clips
  return records, [f.name for f in folders]


def clip_spectrogram(record: ClipRecord, cfg: ClipConfig) -> np.ndarray:
  """The clip's log-mel [n_mels, frames] float32 (decodes the file)."""
  f = cfg.features
  wave = read_audio(record.path, f.sample_rate, resample=f.resample, downmix=f.downmix,
                    min_samples=record.start + cfg.clip_samples)
  spec = log_mel(wave[record.start:record.start + cfg.clip_samples], f)
  if spec.shape != cfg.shape:  # guards the frame arithmetic in ClipConfig.frames
    raise DataError(f"{record.path}: spectrogram shape {spec.shape}, expected {cfg.shape}")
  return spec


@dataclasses.dataclass(frozen=True)
class Normalization:
  """Standardisation of log-mel values with one mean and std over the training clips."""
  mean: float
  std: float

  def apply(self, spec: np.ndarray) -> np.ndarray:
    return ((spec - self.mean) / self.std).astype(np.float32)

  def invert(self, spec: np.ndarray) -> np.ndarray:
    return (np.asarray(spec) * self.std + self.mean).astype(np.float32)


def fit_normalization(records, cfg: ClipConfig, max_clips: int = 512) -> Normalization:
  """Mean/std over (up to `max_clips` evenly spaced) training clips."""
  step = max(1, len(records) // max_clips)
  values = np.stack([clip_spectrogram(r, cfg) for r in records[::step]])
  return Normalization(float(values.mean()), float(max(values.std(), 1e-6)))


@dataclasses.dataclass
class LoadSpectrogram(grain.transforms.Map):
  """ClipRecord -> {"spectrogram": [n_mels, frames] float32 (normalised), "label": int32}."""
  cfg: ClipConfig
  normalization: Normalization | None = None

  def map(self, record: ClipRecord):
    spec = clip_spectrogram(record, self.cfg)
    if self.normalization is not None:
      spec = self.normalization.apply(spec)
    return {"spectrogram": spec, "label": np.int32(record.label)}


def class_loader(records, cfg: ClipConfig, *, batch_size: int, seed: int, normalization: Normalization | None,
                 shuffle: bool = True, num_epochs: int | None = None, drop_remainder: bool = True,
                 worker_count: int = 0) -> grain.DataLoader:
  """grain loader of {"spectrogram": [B, n_mels, frames], "label": [B]} batches (host memory only).

  Training: shuffle, num_epochs=None (infinite). Evaluation: shuffle=False, num_epochs=1,
  drop_remainder=False, and shard_by_process stays on (each process reads its part).
  """
  if not records:
    raise DataError("no clips to load")
  return make_loader(records, [LoadSpectrogram(cfg, normalization)], batch_size=batch_size, seed=seed,
                     shuffle=shuffle, num_epochs=num_epochs, worker_count=worker_count,
                     drop_remainder=drop_remainder)


def load_arrays(records, cfg: ClipConfig, normalization: Normalization | None = None):
  """(spectrograms [N, n_mels, frames], labels [N]) on the host: for small evaluation sets only."""
  op = LoadSpectrogram(cfg, normalization)
  items = [op.map(r) for r in records]
  return np.stack([i["spectrogram"] for i in items]), np.array([i["label"] for i in items], np.int32)


def split_by_file(records, test_fraction: float, seed: int) -> tuple[list[ClipRecord], list[ClipRecord]]:
  """(train, test), stratified by class and split by file, so clips of one file never straddle the split.

  Each class keeps at least one file on each side when it has two or more.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ConfigError(f"test_fraction={test_fraction!r}: expected a fraction in (0, 1)")
  rng = np.random.default_rng(seed)
  by_class: dict[int, list[str]] = {}
  for r in records:
    files = by_class.setdefault(r.label, [])
    if r.path not in files:
      files.append(r.path)
  test_files = set()
  for label in sorted(by_class):
    files = sorted(by_class[label])
    if len(files) < 2:
      raise DataError(f"class {label} has a single file ({files[0]}); a train/test split needs two or more")
    n_test = min(len(files) - 1, max(1, round(test_fraction * len(files))))
    test_files |= set(rng.permutation(files)[:n_test].tolist())
  train = [r for r in records if r.path not in test_files]
  test = [r for r in records if r.path in test_files]
  return train, test
