"""Density models over a VQ-VAE's code indices, fitted on the codes of training normals.

Codes of a patch form an 8x8 grid [mel row, time column]. Patches are cut at arbitrary time offsets, so a
time column carries no meaning of its own, while a mel row does (it is a frequency band). The models:

  - "position": a categorical per (row, column) position (the original model; it splits the training
    codes 64 ways and treats shifted copies of the same sound as different events);
  - "row": a categorical per mel row, pooled over time columns and patches (8x the data per distribution);
  - "bigram": per mel row, P(code | previous code in time) interpolated with the row categorical, so a
    code sequence that never occurs in normal sound is unlikely even when each code is common;
  - "knn": a clip's histogram of (row, code) compared with the training clips' histograms (mean L1
    distance to the `knn_k` nearest), a clip-level score with no probability model at all.

The first three give per-patch scores (mean negative log-likelihood of its codes, in nats) that
`vqax.eval.aggregate` turns into a clip score; "knn" scores whole clips.
"""
import numpy as np

from vqax.errors import ConfigError

DENSITY_MODELS = ("position", "row", "bigram", "knn")


def _as_grids(code_arrays):
  return [np.asarray(c).reshape(c.shape[0], c.shape[1], -1) for c in code_arrays]


def _categorical_log_probs(counts: np.ndarray, smoothing: float) -> np.ndarray:
  k = counts.shape[-1]
  return np.log((counts + smoothing) / (counts.sum(axis=-1, keepdims=True) + smoothing * k))


class PositionDensity:
  """A categorical over codes at each (row, column) position, with additive smoothing."""

  def __init__(self, num_embeddings: int, smoothing: float = 1.0):
    self.num_embeddings, self.smoothing = int(num_embeddings), float(smoothing)

  def fit(self, code_arrays) -> "PositionDensity":
    grids = _as_grids(code_arrays)
    rows, cols = grids[0].shape[1:]
    counts = np.zeros((rows, cols, self.num_embeddings), np.float64)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    for codes in grids:
      np.add.at(counts, (np.broadcast_to(r, codes.shape), np.broadcast_to(c, codes.shape), codes), 1.0)
    self.log_probs = _categorical_log_probs(counts, self.smoothing)
    return self

  def patch_scores(self, codes: np.ndarray) -> np.ndarray:
    grid = _as_grids([codes])[0]
    rows, cols = grid.shape[1:]
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return -np.mean(self.log_probs[r[None], c[None], grid], axis=(1, 2))


class RowDensity:
  """A categorical over codes per mel row, pooled over time columns (shift-invariant)."""

  def __init__(self, num_embeddings: int, smoothing: float = 1.0):
    self.num_embeddings, self.smoothing = int(num_embeddings), float(smoothing)

  def _row_counts(self, grids) -> np.ndarray:
    rows = grids[0].shape[1]
    counts = np.zeros((rows, self.num_embeddings), np.float64)
    for codes in grids:
      np.add.at(counts, (np.broadcast_to(np.arange(rows)[None, :, None], codes.shape), codes), 1.0)
    return counts

  def fit(self, code_arrays) -> "RowDensity":
    self.log_probs = _categorical_log_probs(self._row_counts(_as_grids(code_arrays)), self.smoothing)
    return self

  def patch_scores(self, codes: np.ndarray) -> np.ndarray:
    grid = _as_grids([codes])[0]
    return -np.mean(self.log_probs[np.arange(grid.shape[1])[None, :, None], grid], axis=(1, 2))


class BigramDensity(RowDensity):
  """Per mel row: P(code_t | code_{t-1}) = (n(prev, code) + a K p_row(code)) / (n(prev) + a K)."""

  def fit(self, code_arrays) -> "BigramDensity":
    grids = _as_grids(code_arrays)
    k, rows = self.num_embeddings, grids[0].shape[1]
    unigram = np.exp(_categorical_log_probs(self._row_counts(grids), self.smoothing))
    pairs = np.zeros((rows, k, k), np.float64)
    for codes in grids:
      prev, cur = codes[:, :, :-1], codes[:, :, 1:]
      np.add.at(pairs, (np.broadcast_to(np.arange(rows)[None, :, None], prev.shape), prev, cur), 1.0)
    prior = self.smoothing * k
    self.log_probs_first = np.log(unigram)
    self.log_probs = np.log((pairs + prior * unigram[:, None, :]) / (pairs.sum(-1, keepdims=True) + prior))
    return self

  def patch_scores(self, codes: np.ndarray) -> np.ndarray:
    grid = _as_grids([codes])[0]
    rows = np.arange(grid.shape[1])[None, :, None]
    first = self.log_probs_first[rows[..., 0], grid[:, :, 0]]
    rest = self.log_probs[rows, grid[:, :, :-1], grid[:, :, 1:]]
    return -(first.sum(axis=1) + rest.sum(axis=(1, 2))) / (grid.shape[1] * grid.shape[2])


class HistogramKNN:
  """Mean L1 distance of a clip's per-row code histogram to its `k` nearest training clips."""

  def __init__(self, num_embeddings: int, k: int = 1):
    if int(k) < 1:
      raise ConfigError(f"score.knn_k={k}: expected a positive integer")
    self.num_embeddings, self.k = int(num_embeddings), int(k)

  def histogram(self, codes: np.ndarray) -> np.ndarray:
    grid = _as_grids([codes])[0]
    rows = grid.shape[1]
    counts = np.zeros((rows, self.num_embeddings), np.float64)
    np.add.at(counts, (np.broadcast_to(np.arange(rows)[None, :, None], grid.shape), grid), 1.0)
    return (counts / counts.sum(axis=1, keepdims=True)).ravel()

  def fit(self, code_arrays) -> "HistogramKNN":
    self.bank = np.stack([self.histogram(c) for c in code_arrays])
    return self

  def clip_score(self, codes: np.ndarray) -> float:
    distances = np.abs(self.bank - self.histogram(codes)[None]).sum(axis=1)
    return float(np.mean(np.sort(distances)[:min(self.k, len(distances))]))


def build_density(name: str, num_embeddings: int, smoothing: float = 1.0, knn_k: int = 1):
  if name == "position":
    return PositionDensity(num_embeddings, smoothing)
  if name == "row":
    return RowDensity(num_embeddings, smoothing)
  if name == "bigram":
    return BigramDensity(num_embeddings, smoothing)
  if name == "knn":
    return HistogramKNN(num_embeddings, knn_k)
  raise ConfigError(f"score.density_model={name!r}: expected one of {', '.join(DENSITY_MODELS)}")


__all__ = ["DENSITY_MODELS", "BigramDensity", "HistogramKNN", "PositionDensity", "RowDensity", "build_density"]
