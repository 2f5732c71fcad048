"""Anomaly scores of a trained VQ-VAE side by side with reference detectors, per clip.

VQ-VAE scores (`score.method`), each fitted on the training normals (per machine ID when `density_per_id`):
"latent", the Mahalanobis distance of the encoder's latent columns to a Gaussian (`vqax.eval.latent_density`);
"density", the negative log-likelihood of a clip's code indices (`vqax.eval.code_density`); "recon", the
reconstruction error of its patches. Patch scores become a clip score by `score.aggregate`
(`vqax.eval.aggregate`). References (`score.references`, `vqax.eval.references`): a
PCA detector and the DCASE2020 baseline autoencoder on 5-frame context vectors of the same normalised
features, fitted on the same training clips in the same run. Every scorer gets AUC/pAUC per machine type
and ID; `vqax score` prints them in one table and draws their ROC curves in one PNG per machine type.
"""
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqax.data import dcase
from vqax.errors import ConfigError, DataError
from vqax.eval import aggregate as aggregation
from vqax.eval import anomaly_outputs, code_density, compare, latent_density, references
from vqax.tasks.vqvae.task import build_model, feature_config as feature_config_of
from vqax.train.checkpointing import restore_trained

SCORE_METHODS = {"density": ("density",), "recon": ("recon",), "latent": ("latent",), "both": ("density", "recon"),
                 "all": ("latent", "density", "recon")}
REFERENCES = ("pca", "dcase_ae")

# Scoring settings a workdir trained before they existed falls back to (configs/vqvae_dcase.py sets them).
SCORE_DEFAULTS = {
    "density_model": "position", "aggregate": "mean", "topk_fraction": 0.25, "knn_k": 1,
    "references": "pca,dcase_ae",
    "context_frames": 5, "pca_components": 16, "baseline_epochs": 20, "baseline_batch_size": 512,
    "baseline_learning_rate": 1e-3, "primary": "", "latent_shrinkage": 1e-3,
}


def score_settings(config, overrides=()) -> ml_collections.ConfigDict:
  """The config's `score` group with defaults for fields it predates, then `--config.score.*` overrides."""
  from vqax import config_loading
  settings = ml_collections.ConfigDict(config.score.to_dict())
  for key, value in SCORE_DEFAULTS.items():
    if key not in settings:
      settings[key] = value
  overrides = list(overrides)
  for arg in overrides:
    if arg.startswith("--") and not arg.startswith("--config.score."):
      raise ConfigError(f"vqax score: {arg.split('=')[0]!r} is not a scoring option "
                        "(expected --config.score.<field>=...)")
  wrapped = ml_collections.ConfigDict({"score": settings})
  return config_loading.apply_overrides(wrapped, overrides).score


def reference_names(settings) -> list[str]:
  names = [n.strip() for n in str(settings.references).split(",") if n.strip()]
  unknown = [n for n in names if n not in REFERENCES]
  if unknown:
    raise ConfigError(f"score.references={settings.references!r}: unknown {', '.join(unknown)} "
                      f"(expected a comma list of {', '.join(REFERENCES)}, or empty)")
  return names


def load_trained(workdir):
  """(config, model, params, step) of the newest checkpoint in `workdir`."""
  config, state, step = restore_trained(workdir, "vqvae", "score")
  return config, build_model(config), state["params"], step


class PatchEncoder:
  """Runs the model over patches in fixed-size chunks (one compile): codes [N, 8, 8], errors [N], latents."""

  def __init__(self, model, params, chunk: int = 256):
    self.chunk = chunk
    self.params = params

    @jax.jit
    def run(params, x):
      reconstruction, aux = model.apply({"params": params}, x)
      errors = jnp.mean((reconstruction - x) ** 2, axis=(1, 2, 3))
      latents = aux["latents"].reshape(aux["codes"].shape + (-1,))  # encoder outputs before quantisation
      return aux["codes"], errors, latents
    self._run = run

  def __call__(self, patches: np.ndarray):
    n = patches.shape[0]
    outputs = []
    for start in range(0, n, self.chunk):
      part = patches[start:start + self.chunk]
      padded = np.zeros((self.chunk,) + part.shape[1:], np.float32)
      padded[:len(part)] = part
      outputs.append([a[:len(part)] for a in jax.device_get(self._run(self.params, padded))])
    return tuple(np.concatenate(parts) for parts in zip(*outputs))


@dataclasses.dataclass
class Clip:
  """One clip's normalised features and, once encoded, its patches' codes [P, 8, 8], reconstruction errors
  [P] and encoder latents [P, 8, 8, D]."""
  record: dcase.ClipRecord
  features: np.ndarray
  codes: np.ndarray | None = None
  errors: np.ndarray | None = None
  latents: np.ndarray | None = None


def load_clips(records, norm_stats, feature_config, cache_dir=None) -> list[Clip]:
  return [Clip(r, dcase.normalize(dcase.load_features(r, feature_config, cache_dir), norm_stats[r.machine_type]))
          for r in records]


def encode_clips(encoder: PatchEncoder, clips: list[Clip], stride: int) -> list[Clip]:
  """Fills each clip's codes, errors and latents from all its `stride`-spaced patches (batched across clips)."""
  pending = []

  def flush():
    if not pending:
      return
    patches = [dcase.cut_patches(c.features, dcase.patch_starts(c.features.shape[1], stride)) for c in pending]
    codes, errors, latents = encoder(np.concatenate(patches))
    offsets = np.cumsum([0] + [len(p) for p in patches])
    for i, clip in enumerate(pending):
      part = slice(offsets[i], offsets[i + 1])
      clip.codes, clip.errors, clip.latents = codes[part], errors[part], latents[part]
    pending.clear()

  for clip in clips:
    pending.append(clip)
    if sum(len(dcase.patch_starts(c.features.shape[1], stride)) for c in pending) >= encoder.chunk:
      flush()
  flush()
  return clips


def _groups(clips, per_id: bool) -> dict[str, list[Clip]]:
  groups = {}
  for clip in clips:
    groups.setdefault(clip.record.machine_id if per_id else "all", []).append(clip)
  return groups


def _fitted_per_group(train: list[Clip], test: list[Clip], per_id: bool, fit, what: str):
  """{group: fit(training clips of the group)}, checking every test clip's group has training clips."""
  fitted = {group: fit(clips) for group, clips in _groups(train, per_id).items()}
  for clip in test:
    if (clip.record.machine_id if per_id else "all") not in fitted:
      raise DataError(f"{clip.record.path}: machine ID {clip.record.machine_id} has no training clips to fit "
                      f"the {what}")
  return lambda clip: fitted[clip.record.machine_id if per_id else "all"]


def vqvae_scores(train: list[Clip], test: list[Clip], settings, num_embeddings: int) -> dict[str, list[float]]:
  """{"latent": [...], "density": [...], "recon": [...]}: one score per test clip (clips must be encoded)."""
  aggregation.check_aggregate(settings.aggregate, settings.topk_fraction)
  clip_score = lambda units: aggregation.aggregate(units, settings.aggregate, settings.topk_fraction)  # noqa: E731
  density_of = _fitted_per_group(
      train, test, bool(settings.density_per_id),
      lambda clips: code_density.build_density(settings.density_model, num_embeddings,
                                               float(settings.density_smoothing), int(settings.knn_k))
      .fit([c.codes for c in clips]), "code density")
  density = []
  for clip in test:
    model = density_of(clip)
    density.append(model.clip_score(clip.codes) if hasattr(model, "clip_score")
                   else clip_score(model.patch_scores(clip.codes)))
  gaussian_of = _fitted_per_group(
      train, test, bool(settings.density_per_id),
      lambda clips: latent_density.LatentGaussian(settings.latent_shrinkage).fit([c.latents for c in clips]),
      "latent Gaussian")
  return {"latent": [clip_score(gaussian_of(c).patch_scores(c.latents)) for c in test], "density": density,
          "recon": [clip_score(c.errors) for c in test]}


def reference_scores(train: list[Clip], test: list[Clip], settings, names, seed: int = 0) -> dict[str, list[float]]:
  """{reference name: one score per test clip}, each detector fitted on the training clips' context vectors.

  PCA follows `density_per_id` (one subspace per machine ID or per type); the baseline autoencoder is
  trained per machine type on all its IDs, as the official baseline was.
  """
  frames = int(settings.context_frames)
  vectors = lambda clips: np.concatenate([references.context_vectors(c.features, frames) for c in clips])  # noqa: E731
  out = {}
  for name in names:
    if name == "pca":
      detector_of = _fitted_per_group(train, test, bool(settings.density_per_id),
                                      lambda clips: references.PCADetector(settings.pca_components).fit(vectors(clips)),
                                      "PCA reference")
    else:
      detector = references.DcaseBaselineDetector(
          epochs=settings.baseline_epochs, batch_size=settings.baseline_batch_size,
          learning_rate=settings.baseline_learning_rate, seed=seed).fit(vectors(train))
      detector_of = lambda clip, d=detector: d  # noqa: E731
    out[name] = [detector_of(c).score(references.context_vectors(c.features, frames)) for c in test]
  return out


def score_workdir(workdir, *, data_root=None, out_dir=None, method=None, overrides=(), verbose: bool = True) -> dict:
  """Score every test clip of the trained model in `workdir` and of the references fitted on its training
  clips; write results.json, DCASE CSVs and one ROC PNG per machine type with every scorer."""
  workdir = pathlib.Path(workdir)
  config, model, params, step = load_trained(workdir)
  settings = score_settings(config, overrides)
  method = method or settings.method
  if method not in SCORE_METHODS:
    raise DataError(f"--method {method!r}: expected one of {', '.join(SCORE_METHODS)}")
  ref_names = reference_names(settings)
  scorers = [*SCORE_METHODS[method], *ref_names]
  primary = settings.primary or scorers[0]
  if primary not in scorers:
    raise ConfigError(f"score.primary={primary!r}: not among this run's scorers ({', '.join(scorers)})")
  data_root = data_root or config.data_root
  out_dir = pathlib.Path(out_dir or workdir / "scores")
  machine_types = dcase.resolve_machine_types(data_root, config.machine_type)
  norm_stats = dcase.load_norm_stats(config.norm_stats_path or workdir / "norm_stats.json", machine_types)
  feature_config = feature_config_of(config)
  cache_dir = config.feature_cache_dir or None
  encoder = PatchEncoder(model, params)

  per_clip = []
  for machine_type in machine_types:
    train = load_clips(dcase.list_clips(data_root, [machine_type], "train"), norm_stats, feature_config, cache_dir)
    test = load_clips(dcase.list_clips(data_root, [machine_type], "test"), norm_stats, feature_config, cache_dir)
    encode_clips(encoder, train + test, int(settings.stride))
    scores = vqvae_scores(train, test, settings, int(config.model.num_embeddings))
    scores.update(reference_scores(train, test, settings, ref_names, seed=int(config.seed)))
    for i, clip in enumerate(test):
      per_clip.append({"file": clip.record.name, "machine_type": machine_type, "machine_id": clip.record.machine_id,
                       "label": clip.record.label, **{s: float(scores[s][i]) for s in scorers}})

  max_fpr = float(settings.max_fpr)
  reports = anomaly_outputs.anomaly_reports(per_clip, scorers, max_fpr)
  anomaly_outputs.write_outputs(out_dir, per_clip, scorers, primary, max_fpr)
  best = max(scorers, key=lambda s: reports[s]["mean"]["auc"])
  result = {"workdir": str(workdir), "checkpoint_step": step, "method": method, "scorers": scorers,
            "primary": primary, "best": best, "score_settings": settings.to_dict(), "reports": reports,
            "clips": per_clip, "out_dir": str(out_dir)}
  (out_dir / "results.json").write_text(json.dumps(result, indent=1))
  if verbose:
    print(f"\nAnomaly detection, AUC / pAUC % at max FPR {max_fpr:g} (VQ-VAE step {step}; "
          f"aggregate={settings.aggregate}, density_model={settings.density_model}):")
    print(compare.format_comparison_table(reports))
    print(f"\nbest mean AUC: {best}; DCASE CSVs from {primary}; wrote {out_dir}/results.json and ROC PNGs")
  return result
