"""Reference detectors (PCA, the DCASE2020 baseline autoencoder) and the VQ-VAE's scoring options."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqax.data import dcase
from vqax.data.synth_dcase import generate_dcase
from vqax.errors import ConfigError
from vqax.eval import aggregate, code_density, latent_density, metrics, references
from vqax.models.dcase_baseline import DcaseBaselineAE


def test_context_vectors_stack_frames_frame_major():
  features = np.arange(3 * 6, dtype=np.float32).reshape(3, 6)  # 3 mels, 6 frames
  vectors = references.context_vectors(features, frames=2)
  chex.assert_shape(vectors, (5, 6))
  # Row t is frame t's mels followed by frame t+1's mels, as the DCASE baseline stacks them.
  np.testing.assert_array_equal(vectors[1], np.concatenate([features[:, 1], features[:, 2]]))


def test_dcase_baseline_has_the_official_layer_sizes():
  model = DcaseBaselineAE(input_dim=320)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 320)), train=False)
  y = model.apply(variables, jnp.ones((2, 320)), train=False)
  chex.assert_shape(y, (2, 320))
  chex.assert_type(y, jnp.float32)
  sizes = [320, 128, 128, 128, 128, 8, 128, 128, 128, 128, 320]
  dense = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
  batchnorm = 2 * sum(sizes[1:-1])  # scale and bias of every hidden layer
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) == dense + batchnorm


def test_dcase_baseline_fit_is_deterministic_and_learns():
  rng = np.random.default_rng(0)
  basis = rng.standard_normal((4, 40))
  vectors = (rng.standard_normal((1024, 4)) @ basis).astype(np.float32)  # a 4-dimensional subspace
  fit = lambda: references.DcaseBaselineDetector(epochs=15, batch_size=128, seed=3).fit(vectors)  # noqa: E731
  first, second = fit(), fit()
  np.testing.assert_array_equal(first.vector_scores(vectors[:8]), second.vector_scores(vectors[:8]))
  off_subspace = rng.standard_normal((256, 40)).astype(np.float32) * vectors.std()
  assert first.score(off_subspace) > 2 * first.score(vectors[:256])


def test_pca_detector_scores_the_residual_outside_the_subspace():
  rng = np.random.default_rng(0)
  inside = rng.standard_normal((500, 3)) @ np.eye(3, 10)  # spans the first 3 axes
  detector = references.PCADetector(components=3).fit(inside)
  np.testing.assert_allclose(detector.vector_scores(inside), 0.0, atol=1e-20)
  off = np.zeros((1, 10))
  off[0, 7] = 2.0
  np.testing.assert_allclose(detector.vector_scores(off + inside.mean(0)), [4.0 / 10], rtol=1e-9)
  with pytest.raises(ConfigError, match="pca_components"):
    references.PCADetector(0)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
  """One machine type with clear faults: normalised features of train and test clips."""
  root = tmp_path_factory.mktemp("tiny")
  generate_dcase(root, seed=1, machine_types=("pump",), machine_ids=(0,), n_train=12, n_test_normal=8,
                 n_test_anomaly=8, seconds=3.0, min_severity=0.8)
  train = [dcase.load_features(r) for r in dcase.list_clips(root, ["pump"], "train")]
  stats = dcase.compute_norm_stats({"pump": train})["pump"]
  stats = {k: np.asarray(v, np.float32) for k, v in stats.items() if k in ("mean", "std")}
  test = dcase.list_clips(root, ["pump"], "test")
  norm = lambda f: dcase.normalize(f, stats)  # noqa: E731
  return [norm(f) for f in train], [norm(dcase.load_features(r)) for r in test], [r.label for r in test]


@pytest.mark.parametrize("detector", [lambda: references.PCADetector(8),
                                      lambda: references.DcaseBaselineDetector(epochs=8, batch_size=256)],
                         ids=["pca", "dcase_ae"])
def test_references_detect_anomalies_on_a_tiny_synthetic_set(tiny_set, detector):
  train, test, labels = tiny_set
  fitted = detector().fit(np.concatenate([references.context_vectors(f) for f in train]))
  scores = [fitted.score(references.context_vectors(f)) for f in test]
  auc, _ = metrics.auc_pauc(labels, scores)
  assert auc > 0.75, auc


def test_row_density_ignores_time_shifts_and_position_density_does_not():
  rng = np.random.default_rng(0)
  train = [rng.integers(0, 6, (20, 8, 8)) for _ in range(4)]
  train = [np.sort(c, axis=2) for c in train]  # codes rise along time: position matters
  clip = train[0][:3]
  shifted = np.roll(clip, 3, axis=2)
  row = code_density.RowDensity(8).fit(train)
  position = code_density.PositionDensity(8).fit(train)
  np.testing.assert_allclose(row.patch_scores(clip), row.patch_scores(shifted))
  assert np.all(position.patch_scores(shifted) > position.patch_scores(clip))


def test_bigram_density_penalises_unseen_transitions():
  train = [np.tile(np.array([0, 1] * 4), (10, 8, 1))]  # always 0 -> 1 -> 0 ...
  model = code_density.BigramDensity(4, smoothing=0.1).fit(train)
  usual = np.tile(np.array([0, 1] * 4), (1, 8, 1))
  unusual = np.tile(np.array([0, 0, 1, 1] * 2), (1, 8, 1))  # same unigram counts, new transitions
  assert model.patch_scores(unusual)[0] > model.patch_scores(usual)[0] + 1.0
  np.testing.assert_allclose(code_density.RowDensity(4, 0.1).fit(train).patch_scores(unusual),
                             code_density.RowDensity(4, 0.1).fit(train).patch_scores(usual))


def test_histogram_knn_is_zero_for_a_training_clip_and_two_for_disjoint_codes():
  train = [np.zeros((2, 8, 8), int), np.ones((2, 8, 8), int)]
  model = code_density.HistogramKNN(4, k=1).fit(train)
  assert model.clip_score(train[1]) == 0.0
  assert model.clip_score(np.full((3, 8, 8), 2)) == pytest.approx(2.0 * 8)  # L1 distance 2 per mel row


def test_latent_gaussian_distance_is_the_dimension_on_its_own_training_distribution():
  rng = np.random.default_rng(0)
  latents = rng.standard_normal((4000, 2, 8, 3))  # columns of 2 rows x 3 dims = 6 values
  model = latent_density.LatentGaussian(shrinkage=1e-6).fit([latents])
  assert model.patch_scores(latents).mean() == pytest.approx(6.0, rel=0.02)
  far = latents[:10] + 5.0
  assert np.all(model.patch_scores(far) > 50.0)


def test_aggregates():
  values = np.array([1.0, 2.0, 3.0, 10.0])
  assert aggregate.aggregate(values, "mean") == 4.0
  assert aggregate.aggregate(values, "max") == 10.0
  assert aggregate.aggregate(values, "topk", 0.5) == 6.5
  with pytest.raises(ConfigError, match="score.aggregate"):
    aggregate.aggregate(values, "median")
