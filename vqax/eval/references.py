"""Reference anomaly detectors on the same features as the VQ-VAE, fitted on the same training normals.

Both work on context vectors: `context_frames` consecutive log-mel frames stacked into one vector (the
DCASE2020 Task 2 baseline's input, here from the project's normalised 64-mel front end), and score a clip
by the mean over its context vectors of a per-vector reconstruction error:
  - `PCADetector`: squared residual after projection onto the leading principal components of the
    training vectors (a linear autoencoder, fitted in closed form);
  - `DcaseBaselineDetector`: the official baseline's dense autoencoder (`vqax.models.dcase_baseline`),
    trained with Adam for a fixed number of epochs from a seed (`fit_dcase_baseline`).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqax.errors import ConfigError, DataError
from vqax.models.dcase_baseline import DcaseBaselineAE


def context_vectors(features: np.ndarray, frames: int = 5) -> np.ndarray:
  """Log-mel [n_mels, T] -> [T - frames + 1, frames * n_mels], frame-major as in the DCASE baseline."""
  num_frames = features.shape[1]
  if num_frames < frames:
    raise DataError(f"clip has {num_frames} frames, fewer than one {frames}-frame context vector")
  count = num_frames - frames + 1
  return np.concatenate([features[:, t:t + count].T for t in range(frames)], axis=1).astype(np.float32)


class PCADetector:
  """Residual of a rank-`components` principal subspace fitted on training vectors."""

  def __init__(self, components: int = 16):
    if int(components) < 1:
      raise ConfigError(f"score.pca_components={components}: expected a positive integer")
    self.components = int(components)

  def fit(self, vectors: np.ndarray) -> "PCADetector":
    x = np.asarray(vectors, np.float64)
    self.mean = x.mean(axis=0)
    centred = x - self.mean
    covariance = centred.T @ centred / max(len(x) - 1, 1)
    _, eigenvectors = np.linalg.eigh(covariance)  # ascending eigenvalues
    self.basis = eigenvectors[:, ::-1][:, :min(self.components, x.shape[1])]
    return self

  def vector_scores(self, vectors: np.ndarray) -> np.ndarray:
    """Mean squared residual of each vector outside the principal subspace."""
    centred = np.asarray(vectors, np.float64) - self.mean
    residual = centred - (centred @ self.basis) @ self.basis.T
    return np.mean(residual ** 2, axis=1)

  def score(self, vectors: np.ndarray) -> float:
    return float(np.mean(self.vector_scores(vectors)))


def fit_dcase_baseline(vectors: np.ndarray, *, epochs: int = 20, batch_size: int = 512,
                       learning_rate: float = 1e-3, seed: int = 0, model: DcaseBaselineAE | None = None):
  """Train the baseline autoencoder on `vectors` [N, D] with MSE and Adam. Returns (model, variables).

  Deterministic from `seed` (initialisation and shuffling); the last partial batch of an epoch is dropped
  so one compiled step serves every batch (the official baseline's batch size is 512).
  """
  vectors = np.asarray(vectors, np.float32)
  if vectors.ndim != 2 or len(vectors) == 0:
    raise DataError(f"fit_dcase_baseline: expected training vectors [N, D], got shape {vectors.shape}")
  model = model or DcaseBaselineAE(input_dim=vectors.shape[1])
  batch_size = min(int(batch_size), len(vectors))
  init_key, _ = jax.random.split(jax.random.PRNGKey(int(seed)))
  variables = model.init(init_key, jnp.zeros((batch_size, vectors.shape[1]), jnp.float32), train=False)
  params, batch_stats = variables["params"], variables["batch_stats"]
  optimizer = optax.adam(learning_rate)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, batch_stats, opt_state, x):
    def loss_fn(p):
      y, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
      return jnp.mean((y - x) ** 2), updates["batch_stats"]
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  rng = np.random.default_rng(int(seed))
  for _ in range(int(epochs)):
    order = rng.permutation(len(vectors))
    for start in range(0, len(vectors) - batch_size + 1, batch_size):
      params, batch_stats, opt_state, _ = step(params, batch_stats, opt_state, vectors[order[start:start + batch_size]])
  return model, {"params": params, "batch_stats": batch_stats}


class DcaseBaselineDetector:
  """The DCASE2020 baseline autoencoder as a detector: fit on training vectors, score by mean MSE."""

  def __init__(self, epochs: int = 20, batch_size: int = 512, learning_rate: float = 1e-3, seed: int = 0):
    if int(epochs) < 1:
      raise ConfigError(f"score.baseline_epochs={epochs}: expected a positive integer")
    self.settings = dict(epochs=int(epochs), batch_size=int(batch_size), learning_rate=float(learning_rate),
                         seed=int(seed))

  def fit(self, vectors: np.ndarray) -> "DcaseBaselineDetector":
    return self._use(*fit_dcase_baseline(vectors, **self.settings))

  @classmethod
  def trained(cls, model: DcaseBaselineAE, variables) -> "DcaseBaselineDetector":
    """A detector from an autoencoder trained elsewhere (the `dcase_baseline` task's checkpoint)."""
    return cls()._use(model, variables)

  def _use(self, model, variables) -> "DcaseBaselineDetector":
    self.model, self.variables = model, variables

    @jax.jit
    def errors(variables, x):
      return jnp.mean((model.apply(variables, x, train=False) - x) ** 2, axis=1)
    self._errors = errors
    return self

  def vector_scores(self, vectors: np.ndarray, chunk: int = 4096) -> np.ndarray:
    out = []
    for start in range(0, len(vectors), chunk):
      part = np.asarray(vectors[start:start + chunk], np.float32)
      padded = np.zeros((chunk, part.shape[1]), np.float32)  # one compiled shape
      padded[:len(part)] = part
      out.append(np.asarray(self._errors(self.variables, padded))[:len(part)])
    return np.concatenate(out)

  def score(self, vectors: np.ndarray) -> float:
    return float(np.mean(self.vector_scores(vectors)))


__all__ = ["DcaseBaselineDetector", "PCADetector", "context_vectors", "fit_dcase_baseline"]
