"""DCASE2020 Task 2 layout: listing clips, loading their features, normalisation stats and patching.

Layout (read as is): `<root>/<machine_type>/train/normal_id_XX_NNNNNNNN.wav` and
`<root>/<machine_type>/test/{normal,anomaly}_id_XX_NNNNNNNN.wav`; the precomputed variant stores one
`.npy` log-mel array `[n_mels, T]` per clip under the same names.
"""
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import re
import threading

import numpy as np

from vqax.audio.features import LogMelConfig, log_mel
from vqax.audio.io import read_audio
from vqax.data.npy_files import load_npy
from vqax.errors import ConfigError, DataError
from vqax import stop_signals

log = logging.getLogger(__name__)

CLIP_NAME = re.compile(r"^(normal|anomaly)_id_(\d+)_(\d+)\.(wav|npy)$")
PATCH_FRAMES = 64


@dataclasses.dataclass(frozen=True)
class ClipRecord:
  path: str
  machine_type: str
  machine_id: str  # "00", "02", ... as in the file name
  label: int  # 0 normal, 1 anomaly
  split: str  # "train" or "test"

  @property
  def name(self) -> str:
    return pathlib.Path(self.path).name


def available_machine_types(data_root) -> list[str]:
  root = pathlib.Path(data_root)
  return sorted(p.name for p in root.iterdir() if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir()))


def resolve_machine_types(data_root, machine_type: str) -> list[str]:
  """`machine_type` ("fan", "fan,pump" or "all") -> existing machine folders, with clear errors."""
  root = pathlib.Path(data_root)
  if not root.is_dir():
    raise DataError(f"data_root {root}: folder not found (expected <root>/<machine_type>/{{train,test}}/)")
  available = available_machine_types(root)
  if not available:
    raise DataError(f"data_root {root}: no machine folders with train/ or test/ inside")
  if machine_type in ("all", "", None):
    return available
  wanted = [m.strip() for m in str(machine_type).split(",") if m.strip()]
  unknown = [m for m in wanted if m not in available]
  if unknown:
    raise ConfigError(f"machine_type {','.join(unknown)!r} not found under {root}; available: {', '.join(available)}")
  return wanted


def list_clips(data_root, machine_types, split: str, *, extension: str | None = None) -> list[ClipRecord]:
  """All clips of `split` for the machine types, sorted by path (deterministic)."""
  records = []
  for machine_type in machine_types:
    folder = pathlib.Path(data_root) / machine_type / split
    if not folder.is_dir():
      raise DataError(f"{folder}: folder not found (expected the DCASE layout <root>/{machine_type}/{split}/)")
    found = []
    for path in sorted(folder.iterdir()):
      match = CLIP_NAME.match(path.name)
      if not match or (extension and match.group(4) != extension):
        continue
      found.append(ClipRecord(str(path), machine_type, match.group(2), int(match.group(1) == "anomaly"), split))
    if extension is None:
      # A tree holding both the wav and a precomputed .npy of a clip: use the .npy.
      by_stem = {}
      for r in found:
        stem = pathlib.Path(r.path).stem
        if stem not in by_stem or r.path.endswith(".npy"):
          by_stem[stem] = r
      found = [by_stem[k] for k in sorted(by_stem)]
    if not found:
      raise DataError(f"{folder}: no clips named like normal_id_00_00000000.wav (or .npy)")
    records.extend(found)
  return records


def _cache_path(cache_dir, record: ClipRecord, cfg: LogMelConfig) -> pathlib.Path:
  key = hashlib.sha1(f"{pathlib.Path(record.path).resolve()}|{cfg}".encode()).hexdigest()[:16]
  return pathlib.Path(cache_dir) / record.machine_type / f"{pathlib.Path(record.path).stem}.{key}.npy"


def load_features(record: ClipRecord, cfg: LogMelConfig = LogMelConfig(), cache_dir=None,
                  min_frames: int = PATCH_FRAMES) -> np.ndarray:
  """Log-mel `[n_mels, T]` of a clip, from its wav (optionally cached as .npy) or its precomputed .npy."""
  stop_signals.check("data scan")  # the scan reads every clip once: a stop signal ends it between clips
  if record.path.endswith(".npy"):
    features = load_npy(record.path)
    problem = _feature_problem(features, cfg)
    if problem:
      raise DataError(f"{record.path}: {problem}")
    features = features.astype(np.float32)
  else:
    cached = _cache_path(cache_dir, record, cfg) if cache_dir else None
    features = _read_cache_entry(cached, cfg) if cached is not None and cached.exists() else None
    if features is None:
      min_samples = (min_frames - 1) * cfg.hop_length
      wave = read_audio(record.path, cfg.sample_rate, resample=cfg.resample, downmix=cfg.downmix,
                        min_samples=min_samples)
      features = log_mel(wave, cfg)
      if cached is not None:
        _write_cache_entry(cached, features)
  if features.shape[1] < min_frames:
    raise DataError(f"{record.path}: {features.shape[1]} frames, shorter than one {min_frames}-frame patch")
  return features


def _feature_problem(features: np.ndarray, cfg: LogMelConfig) -> str | None:
  if features.ndim != 2 or features.shape[0] != cfg.n_mels:
    return f"expected a log-mel array of shape [{cfg.n_mels}, T], got {list(features.shape)}"
  if not np.all(np.isfinite(features)):
    return "contains NaN or Inf values"
  return None


def _read_cache_entry(cached: pathlib.Path, cfg: LogMelConfig) -> np.ndarray | None:
  """A cache entry's features, or None (said once per entry) when it is unreadable: the caller recomputes
  it from the clip. A cache is never a reason to stop a run."""
  try:
    features = load_npy(cached)
    problem = _feature_problem(features, cfg)
  except DataError as e:
    problem = str(e).removeprefix(f"{cached}: ")
  except OSError as e:
    problem = e.strerror or type(e).__name__
  if problem is None:
    return features.astype(np.float32, copy=False)
  _note_bad_cache_entry(str(cached), problem)
  return None


@functools.lru_cache(maxsize=None)
def _note_bad_cache_entry(path: str, problem: str) -> None:
  log.warning("feature cache entry %s is unusable (%s); recomputing it from the clip", path, problem)


def _write_cache_entry(cached: pathlib.Path, features: np.ndarray) -> None:
  """Write atomically, under a name of this process and thread: loader workers computing the same clip at
  once never interleave, and a killed worker leaves at most a stray temporary file, never a half entry."""
  tmp = cached.with_name(f"{cached.stem}.tmp{os.getpid()}-{threading.get_ident()}.npy")
  try:
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.save(tmp, features)
    tmp.replace(cached)
  except OSError as e:  # a full or read-only cache folder: the features are in hand, carry on without it
    with contextlib.suppress(OSError):
      tmp.unlink(missing_ok=True)
    _note_cache_unwritable(str(cached.parent), e.strerror or type(e).__name__)


@functools.lru_cache(maxsize=None)
def _note_cache_unwritable(folder: str, problem: str) -> None:
  log.warning("feature cache %s is not writable (%s); features are computed without caching", folder, problem)


# --- normalisation -----------------------------------------------------------------------------------

def compute_norm_stats(features_by_type: dict[str, list[np.ndarray]]) -> dict[str, dict[str, list[float]]]:
  """Per machine type, per mel bin mean and std over all training frames (float64 accumulation)."""
  stats = {}
  for machine_type, arrays in features_by_type.items():
    stop_signals.check("normalisation statistics")
    total = sum(a.shape[1] for a in arrays)
    mean = sum(a.astype(np.float64).sum(axis=1) for a in arrays) / total
    var = sum(((a.astype(np.float64) - mean[:, None])**2).sum(axis=1) for a in arrays) / total
    stats[machine_type] = {"mean": mean.tolist(), "std": np.sqrt(np.maximum(var, 1e-12)).tolist(),
                           "frames": int(total), "clips": len(arrays)}
  return stats


def save_norm_stats(path, stats) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(stats, indent=1))
  tmp.replace(path)


def load_norm_stats(path, machine_types=None) -> dict[str, dict[str, np.ndarray]]:
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"norm_stats_path {path}: file not found")
  try:
    raw = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"norm_stats_path {path}: not valid JSON ({e})") from None
  missing = [m for m in (machine_types or []) if m not in raw]
  if missing:
    raise DataError(f"norm_stats_path {path}: no statistics for machine type(s) {', '.join(missing)}")
  return {m: {"mean": np.asarray(v["mean"], np.float32), "std": np.asarray(v["std"], np.float32)}
          for m, v in raw.items()}


def normalize(features: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
  return ((features - stats["mean"][:, None]) / stats["std"][:, None]).astype(np.float32)


# --- patching ------------------------------------------------------------------------------------------

def patch_starts(num_frames: int, stride: int, patch_frames: int = PATCH_FRAMES) -> np.ndarray:
  """Start frames of every whole patch: 0, stride, 2*stride, ... <= num_frames - patch_frames."""
  if stride <= 0:
    raise ConfigError(f"stride={stride}: expected a positive number of frames")
  if num_frames < patch_frames:
    raise DataError(f"clip has {num_frames} frames, shorter than one {patch_frames}-frame patch")
  return np.arange(0, num_frames - patch_frames + 1, stride)


def cut_patches(features: np.ndarray, starts: np.ndarray, patch_frames: int = PATCH_FRAMES) -> np.ndarray:
  """[n_mels, T] -> [len(starts), n_mels, patch_frames, 1] (channels-last for Flax convs)."""
  index = starts[:, None] + np.arange(patch_frames)[None, :]
  return np.ascontiguousarray(features[:, index].transpose(1, 0, 2)[..., None])


def sample_patch_starts(num_frames: int, stride: int, n_patches: int, rng: np.random.Generator,
                        patch_frames: int = PATCH_FRAMES) -> np.ndarray:
  """`n_patches` start frames for one training sample.

  More candidates than needed: a random subset without replacement (sorted). Fewer: every candidate once,
  then the rest drawn with replacement, so short clips repeat patches rather than fail.
  """
  starts = patch_starts(num_frames, stride, patch_frames)
  if len(starts) >= n_patches:
    return np.sort(rng.choice(starts, size=n_patches, replace=False))
  extra = rng.choice(starts, size=n_patches - len(starts), replace=True)
  return np.concatenate([starts, extra])
