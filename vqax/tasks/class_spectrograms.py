"""Class-folder spectrograms as the GAN and the ViT classifier tasks read them (one place, so both see the
same clips, the same train/test split and the same units).

Config fields (set by `add_data_fields`): `data_root` (`<root>/<class>/<clip>`), `features` (the shared
log-mel front end), `clip_seconds` / `clip_hop_seconds` (0: one clip per file), `skip_short`, and the split
(`test_fraction`, `split_seed`: by file and stratified, fixed whatever the training seed). A run writes
`classes.json` into its workdir: class names, the standardisation fitted on its training clips and the
clip settings, which evaluation and generation read back.
"""
import dataclasses
import json
import pathlib

import jax
import ml_collections

from vqax.audio.features import LogMelConfig
from vqax.data import class_folders as cf
from vqax.errors import CheckpointError, ConfigError, DataError
from vqax.train import distributed

CLASSES_FILE = "classes.json"


def add_data_fields(c: ml_collections.ConfigDict) -> None:
  """The seed's data settings: 30 s clips at 22.05 kHz, hop 512 and 128 mels (128 x 1292 spectrograms)."""
  c.data_root = "data/synth_classes"
  c.features = ml_collections.ConfigDict(dict(sample_rate=22050, n_fft=2048, hop_length=512, n_mels=128,
                                              resample=False))
  c.clip_seconds = 30.0
  c.clip_hop_seconds = 0.0  # 0: one clip per file (its start); else further clips every hop while they fit
  c.skip_short = False  # leave out files shorter than one clip instead of refusing them
  c.test_fraction = 0.2  # files held out per class for evaluation (never trained on)
  c.split_seed = 0


def use_synthetic_class_sizes(c: ml_collections.ConfigDict, variant: str) -> None:
  """The `vqax synth classes` set's data settings for the demo and smoke variants. The GAN and the classifier
  share them, so that the augmentation loop feeds the classifier spectrograms of the shape the GAN makes."""
  c.data_root = "data/synth_classes"
  if variant == "demo":  # 2 s files at 16 kHz, three 1 s clips each: 32 mels x 63 frames
    c.features.update(dict(sample_rate=16000, n_fft=512, hop_length=256, n_mels=32))
    c.clip_seconds, c.clip_hop_seconds = 1.0, 0.5
  elif variant == "smoke":  # seconds, for tests: 16 mels x 32 frames
    c.features.update(dict(sample_rate=16000, n_fft=256, hop_length=256, n_mels=16))
    c.clip_seconds, c.test_fraction = 0.5, 0.25
  else:
    raise ValueError(f"no synthetic-class sizes for variant {variant!r}")


def clip_config(config) -> cf.ClipConfig:
  f = config.features
  features = LogMelConfig(sample_rate=int(f.sample_rate), n_fft=int(f.n_fft), hop_length=int(f.hop_length),
                          n_mels=int(f.n_mels), resample=bool(f.resample))
  hop = float(config.clip_hop_seconds)
  return cf.ClipConfig(features, float(config.clip_seconds), hop if hop > 0 else None).check()


def validate_data_fields(config) -> None:
  f = config.features
  for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
    if int(f[name]) <= 0:
      raise ConfigError(f"features.{name}={f[name]}: expected a positive integer")
  if not 0.0 < float(config.test_fraction) < 1.0:
    raise ConfigError(f"test_fraction={config.test_fraction}: expected a fraction in (0, 1)")
  if float(config.clip_hop_seconds) < 0:
    raise ConfigError(f"clip_hop_seconds={config.clip_hop_seconds}: expected 0 (one clip per file) or a hop > 0")
  clip_config(config)


@dataclasses.dataclass(frozen=True)
class ClassData:
  """The listed clips of a run, split, with the standardisation fitted on the training side."""
  train: list
  test: list
  classes: list[str]
  clip: cf.ClipConfig
  normalization: cf.Normalization


def list_split(config) -> tuple[list, list, list[str], cf.ClipConfig]:
  """(train records, test records, class names, clip config); DataError naming the folder or file."""
  clip = clip_config(config)
  records, classes = cf.list_clips(config.data_root, clip, skip_short=bool(config.skip_short))
  train, test = cf.split_by_file(records, float(config.test_fraction), int(config.split_seed))
  return train, test, classes, clip


def check_num_classes(config, classes) -> int:
  """The class count the model is built for: model.num_classes, or the folders' count when it is 0."""
  wanted = int(config.model.num_classes)
  if wanted and wanted != len(classes):
    raise DataError(f"model.num_classes={wanted} (the condition / head size) does not match the {len(classes)} "
                    f"class folders under data_root {config.data_root} ({', '.join(classes)}); set it to "
                    f"{len(classes)} or 0")
  return len(classes)


def prepare(config, workdir) -> ClassData:
  """List and split the clips, fit the standardisation on the training clips and write classes.json."""
  train, test, classes, clip = list_split(config)
  check_num_classes(config, classes)
  normalization = cf.fit_normalization(train, clip)
  if jax.process_index() == 0:
    write_classes(workdir, classes, clip, normalization)
  distributed.barrier("classes.json written")
  return ClassData(train, test, classes, clip, normalization)


def write_classes(workdir, classes, clip: cf.ClipConfig, normalization: cf.Normalization) -> None:
  info = {"classes": list(classes), "normalization": dataclasses.asdict(normalization),
          "shape": list(clip.shape), "features": dataclasses.asdict(clip.features)}
  (pathlib.Path(workdir) / CLASSES_FILE).write_text(json.dumps(info, indent=1))


def read_classes(workdir) -> tuple[list[str], cf.Normalization, LogMelConfig, tuple[int, int]]:
  """(class names, standardisation, front end, spectrogram shape) a run was trained with."""
  path = pathlib.Path(workdir) / CLASSES_FILE
  if not path.is_file():
    raise CheckpointError(f"--workdir {workdir}: no {CLASSES_FILE} (train a class-folder task there first)")
  info = json.loads(path.read_text())
  return (info["classes"], cf.Normalization(**info["normalization"]), LogMelConfig(**info["features"]),
          tuple(info["shape"]))
