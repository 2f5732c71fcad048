"""Anomaly scores of a trained VQ-VAE: code-index density and reconstruction error, per clip.

Density model: for each machine type (and ID when `density_per_id`), a categorical distribution over
code indices at each of the 8x8 latent positions, fitted on the training normals with additive
smoothing. A clip's score is the mean negative log-likelihood of its codes over all its patches and
positions; the reconstruction score is the mean squared error of all its patches.
"""
import csv
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from vqax.data import dcase
from vqax.errors import DataError
from vqax.eval import metrics, plots
from vqax.tasks.vqvae.task import build_model, feature_config as feature_config_of
from vqax.train.checkpointing import restore_trained

SCORE_METHODS = {"density": ("density",), "recon": ("recon",), "both": ("density", "recon")}


def load_trained(workdir):
  """(config, model, params, step) of the newest checkpoint in `workdir`."""
  config, state, step = restore_trained(workdir, "vqvae", "score")
  return config, build_model(config), state["params"], step


class PatchEncoder:
  """Runs the model over patches in fixed-size chunks (one compile), returning codes and errors."""

  def __init__(self, model, params, chunk: int = 256):
    self.chunk = chunk
    self.params = params

    @jax.jit
    def run(params, x):
      reconstruction, aux = model.apply({"params": params}, x)
      errors = jnp.mean((reconstruction - x) ** 2, axis=(1, 2, 3))
      return aux["codes"], errors, reconstruction
    self._run = run

  def __call__(self, patches: np.ndarray):
    n = patches.shape[0]
    codes, errors, recons = [], [], []
    for start in range(0, n, self.chunk):
      part = patches[start:start + self.chunk]
      padded = np.zeros((self.chunk,) + part.shape[1:], np.float32)
      padded[:len(part)] = part
      c, e, r = jax.device_get(self._run(self.params, padded))
      codes.append(c[:len(part)])
      errors.append(e[:len(part)])
      recons.append(r[:len(part)])
    return np.concatenate(codes), np.concatenate(errors), np.concatenate(recons)


def encode_clips(encoder: PatchEncoder, records, norm_stats, stride: int, feature_config, cache_dir=None):
  """Per clip: codes [P, 8, 8] and reconstruction errors [P] (all stride-spaced patches)."""
  outputs = []
  batch_records, batch_patches = [], []

  def flush():
    if not batch_patches:
      return
    counts = [len(p) for p in batch_patches]
    codes, errors, _ = encoder(np.concatenate(batch_patches))
    offsets = np.cumsum([0] + counts)
    for i, record in enumerate(batch_records):
      outputs.append((record, codes[offsets[i]:offsets[i + 1]], errors[offsets[i]:offsets[i + 1]]))
    batch_records.clear()
    batch_patches.clear()

  for record in records:
    features = dcase.normalize(dcase.load_features(record, feature_config, cache_dir), norm_stats[record.machine_type])
    batch_records.append(record)
    batch_patches.append(dcase.cut_patches(features, dcase.patch_starts(features.shape[1], stride)))
    if sum(len(p) for p in batch_patches) >= encoder.chunk:
      flush()
  flush()
  return outputs


class CodeDensity:
  """Per-position categorical over code indices with additive smoothing."""

  def __init__(self, num_embeddings: int, smoothing: float = 1.0):
    self.num_embeddings = num_embeddings
    self.smoothing = smoothing
    self.counts = None

  def fit(self, code_arrays) -> "CodeDensity":
    flat = [c.reshape(c.shape[0], -1) for c in code_arrays]
    positions = flat[0].shape[1]
    counts = np.zeros((positions, self.num_embeddings), np.float64)
    for codes in flat:
      np.add.at(counts, (np.broadcast_to(np.arange(positions), codes.shape), codes), 1.0)
    self.counts = counts
    total = counts.sum(axis=1, keepdims=True)
    self.log_probs = np.log((counts + self.smoothing) / (total + self.smoothing * self.num_embeddings))
    return self

  def score(self, codes: np.ndarray) -> float:
    """Mean negative log-likelihood of a clip's codes [P, H, W]."""
    flat = codes.reshape(codes.shape[0], -1)
    return float(-np.mean(self.log_probs[np.arange(flat.shape[1])[None, :], flat]))


def score_workdir(workdir, *, data_root=None, out_dir=None, method=None, verbose: bool = True) -> dict:
  """Score every test clip of the trained model in `workdir`; write JSON, DCASE CSVs and ROC PNGs."""
  workdir = pathlib.Path(workdir)
  config, model, params, step = load_trained(workdir)
  method = method or config.score.method
  if method not in SCORE_METHODS:
    raise DataError(f"--method {method!r}: expected density, recon or both")
  data_root = data_root or config.data_root
  out_dir = pathlib.Path(out_dir or workdir / "scores")
  machine_types = dcase.resolve_machine_types(data_root, config.machine_type)
  stats_path = config.norm_stats_path or workdir / "norm_stats.json"
  norm_stats = dcase.load_norm_stats(stats_path, machine_types)
  feature_config = feature_config_of(config)
  cache_dir = config.feature_cache_dir or None
  encoder = PatchEncoder(model, params)
  stride = int(config.score.stride)

  rows = {m: [] for m in SCORE_METHODS[method]}
  per_clip = []
  for machine_type in machine_types:
    train = encode_clips(encoder, dcase.list_clips(data_root, [machine_type], "train"), norm_stats, stride,
                         feature_config, cache_dir)
    test = encode_clips(encoder, dcase.list_clips(data_root, [machine_type], "test"), norm_stats, stride,
                        feature_config, cache_dir)
    densities = {}
    key = (lambda r: r.machine_id) if config.score.density_per_id else (lambda r: "all")
    for group in sorted({key(r) for r, _, _ in train}):
      densities[group] = CodeDensity(int(config.model.num_embeddings), float(config.score.density_smoothing)).fit(
          [codes for r, codes, _ in train if key(r) == group])
    for record, codes, errors in test:
      density = densities.get(key(record))
      if density is None:
        raise DataError(f"{record.path}: machine ID {record.machine_id} has no training clips to fit a density")
      scores = {"density": density.score(codes), "recon": float(np.mean(errors))}
      per_clip.append({"file": record.name, "machine_type": machine_type, "machine_id": record.machine_id,
                       "label": record.label, **scores})
      for m in rows:
        rows[m].append({"machine_type": machine_type, "machine_id": record.machine_id, "label": record.label,
                        "score": scores[m]})

  reports = {m: metrics.anomaly_report(r, max_fpr=float(config.score.max_fpr)) for m, r in rows.items()}
  _write_outputs(out_dir, per_clip, reports, SCORE_METHODS[method])
  result = {"workdir": str(workdir), "checkpoint_step": step, "method": method, "reports": reports,
            "out_dir": str(out_dir)}
  (out_dir / "results.json").write_text(json.dumps(result, indent=1))
  if verbose:
    for m, report in reports.items():
      print(f"\nAnomaly detection by {m} score (AUC / pAUC at max FPR {config.score.max_fpr}), step {step}:")
      print(metrics.format_anomaly_table(report))
    print(f"\nwrote {out_dir}/results.json, DCASE CSVs and ROC PNGs")
  return result


def _write_outputs(out_dir: pathlib.Path, per_clip, reports, methods):
  out_dir.mkdir(parents=True, exist_ok=True)
  primary = methods[0]
  # DCASE submission CSVs: anomaly_score_<machine_type>_id_<XX>.csv with "file name,score" rows.
  groups = {}
  for clip in per_clip:
    groups.setdefault((clip["machine_type"], clip["machine_id"]), []).append(clip)
  for (machine_type, machine_id), clips in groups.items():
    for m in methods:
      folder = out_dir if m == primary else out_dir / m
      folder.mkdir(parents=True, exist_ok=True)
      with open(folder / f"anomaly_score_{machine_type}_id_{machine_id}.csv", "w", newline="") as f:
        csv.writer(f).writerows([(c["file"], f"{c[m]:.6f}") for c in clips])
  for machine_type in sorted({c["machine_type"] for c in per_clip}):
    clips = [c for c in per_clip if c["machine_type"] == machine_type]
    curves = {}
    for m in methods:
      for machine_id in sorted({c["machine_id"] for c in clips}):
        group = [c for c in clips if c["machine_id"] == machine_id]
        if len({c["label"] for c in group}) == 2:
          curves[f"{m} id_{machine_id}"] = ([c["label"] for c in group], [c[m] for c in group])
    if curves:
      plots.plot_roc(curves, out_dir / f"roc_{machine_type}.png", title=f"{machine_type}: ROC per machine ID")
