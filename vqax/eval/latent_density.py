"""A Gaussian over the VQ-VAE encoder's latent columns: the continuous counterpart of the code density.

The encoder maps a 64x64 patch to an 8x8 grid of `latent_dim` vectors [mel row, time column]. A time
column (all 8 mel rows at one time step, 8 * latent_dim values) describes the whole spectrum over 8
frames, and is shift-invariant in the same way a clip is. `LatentGaussian` fits one mean and covariance
to the training normals' columns and scores a patch by the mean Mahalanobis distance of its columns.
Measured on the demo set (docs/anomaly_study.md), this separates anomalies far better than the 128-way
code indices: quantisation throws away exactly the small spectral deviations a fault adds.

The covariance is shrunk towards a scaled identity (`shrinkage` x mean variance added to the diagonal),
since a few thousand training columns estimate a 512-dimensional covariance poorly.
"""
import numpy as np

from vqax.errors import ConfigError


def latent_columns(latents: np.ndarray) -> np.ndarray:
  """[P, rows, cols, D] -> [P, cols, rows * D]: one vector per patch and time column."""
  p, rows, cols, d = latents.shape
  return np.asarray(latents, np.float64).transpose(0, 2, 1, 3).reshape(p, cols, rows * d)


class LatentGaussian:
  """Mahalanobis distance of latent columns to a Gaussian fitted on training normals."""

  def __init__(self, shrinkage: float = 1e-3):
    if not float(shrinkage) > 0.0:
      raise ConfigError(f"score.latent_shrinkage={shrinkage}: expected a positive number")
    self.shrinkage = float(shrinkage)

  def fit(self, latent_arrays) -> "LatentGaussian":
    columns = np.concatenate([latent_columns(a).reshape(-1, a.shape[1] * a.shape[3]) for a in latent_arrays])
    self.mean = columns.mean(axis=0)
    covariance = np.cov(columns, rowvar=False)
    covariance += self.shrinkage * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    self.precision = np.linalg.inv(covariance)
    return self

  def patch_scores(self, latents: np.ndarray) -> np.ndarray:
    """Mean squared Mahalanobis distance of each patch's columns [P]."""
    centred = latent_columns(latents) - self.mean
    return np.einsum("pcd,de,pce->pc", centred, self.precision, centred).mean(axis=1)


__all__ = ["LatentGaussian", "latent_columns"]
