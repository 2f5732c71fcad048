"""grain transforms and loaders for the VQ-VAE: clip -> normalised log-mel -> n_patches patches."""
import dataclasses

import grain
import numpy as np

from vqax.audio.features import LogMelConfig
from vqax.data import dcase
from vqax.data.pipeline import make_loader


@dataclasses.dataclass
class LoadNormalizedFeatures(grain.transforms.Map):
  """ClipRecord -> {"features": [n_mels, T] normalised with its machine type's statistics}."""
  norm_stats: dict
  feature_config: LogMelConfig
  cache_dir: str | None = None

  def map(self, record):
    features = dcase.load_features(record, self.feature_config, self.cache_dir)
    return {"features": dcase.normalize(features, self.norm_stats[record.machine_type])}


@dataclasses.dataclass
class SamplePatches(grain.transforms.RandomMap):
  """{"features"} -> {"patches": [n_patches, 64, 64, 1]}: a random subset of stride-spaced patches."""
  n_patches: int
  stride: int

  def random_map(self, element, rng: np.random.Generator):
    features = element["features"]
    starts = dcase.sample_patch_starts(features.shape[1], self.stride, self.n_patches, rng)
    return {"patches": dcase.cut_patches(features, starts)}


def train_loader(records, norm_stats, *, batch_size: int, n_patches: int, stride: int, seed: int,
                 worker_count: int = 0, cache_dir=None, feature_config=LogMelConfig()):
  """Infinite, shuffled loader of {"patches": [batch_size, n_patches, 64, 64, 1]} batches."""
  ops = [LoadNormalizedFeatures(norm_stats, feature_config, cache_dir), SamplePatches(n_patches, stride)]
  return make_loader(records, ops, batch_size=batch_size, seed=seed, shuffle=True, num_epochs=None,
                     worker_count=worker_count)
