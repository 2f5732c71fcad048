"""What every task on DCASE2020 Task 2 style data does the same way before training: its front end, the
scan of the training clips, and the per-machine-type normalisation statistics (computed on the training
split and written to the workdir, or read from `norm_stats_path`), so that the tasks' features agree.
"""
import dataclasses
import logging
import pathlib

import jax

from vqax.audio.features import LogMelConfig
from vqax.data import dcase
from vqax.errors import DataError
from vqax.train import distributed

log = logging.getLogger(__name__)


def feature_config(config) -> LogMelConfig:
  """The log-mel front end and file-reading rules the config asks for (training and scoring alike)."""
  return LogMelConfig(resample=bool(config.get("resample", False)),
                      downmix=config.get("stereo", "downmix") == "downmix")


def load_train_features(records, feature_config, cache_dir, skip_bad_files):
  """Features of every training clip (also validates every file up front). Returns (kept, features, bad)."""
  kept, features, bad = [], [], []
  for record in records:
    try:
      features.append(dcase.load_features(record, feature_config, cache_dir or None))
      kept.append(record)
    except DataError as e:
      if not skip_bad_files:
        raise
      log.warning("skipping bad file: %s", e)
      bad.append(str(e))
  return kept, features, bad


def training_norm_stats(config, workdir, records, features, machine_types):
  """(norm stats per machine type, the path they were read from): `norm_stats_path` when it names a file,
  else computed from the training clips' features and written to <workdir>/norm_stats.json (or there)."""
  stats_path = pathlib.Path(config.norm_stats_path or pathlib.Path(workdir) / "norm_stats.json")
  if config.norm_stats_path and stats_path.is_file():
    return dcase.load_norm_stats(stats_path, machine_types), stats_path
  by_type = {}
  for record, feats in zip(records, features):
    by_type.setdefault(record.machine_type, []).append(feats)
  stats = dcase.compute_norm_stats(by_type)
  if jax.process_index() == 0:  # every process computes the same; one writes, the others wait for it
    dcase.save_norm_stats(stats_path, stats)
  distributed.barrier("norm stats written")
  return dcase.load_norm_stats(stats_path, machine_types), stats_path


@dataclasses.dataclass
class TrainingClips:
  """The training split as a task starts from it: usable clips, their features, what was skipped, the stats."""
  machine_types: list
  records: list
  features: list  # log-mel [64, T] per clip, before normalisation
  bad_files: list[str]
  norm_stats: dict
  norm_stats_path: pathlib.Path

  def summary(self) -> dict:
    return {"machine_types": self.machine_types, "train_clips": len(self.records), "bad_files": self.bad_files,
            "norm_stats_path": str(self.norm_stats_path)}


def training_clips(config, workdir, feature_config) -> TrainingClips:
  """Scan `config.data_root`'s training clips (every file read once, bad ones skipped under skip_bad_files)
  and get their normalisation statistics; DataError when no usable clip is left."""
  machine_types = dcase.resolve_machine_types(config.data_root, config.machine_type)
  records = dcase.list_clips(config.data_root, machine_types, "train")
  records, features, bad = load_train_features(records, feature_config, config.feature_cache_dir,
                                               config.skip_bad_files)
  if not records:
    raise DataError(f"data_root {config.data_root}: no usable training clips")
  norm_stats, stats_path = training_norm_stats(config, workdir, records, features, machine_types)
  return TrainingClips(machine_types, records, features, bad, norm_stats, stats_path)
