"""`vqax score` for a trained baseline autoencoder: a test clip's score is the mean squared reconstruction
error over its context vectors (the official baseline's score). The outputs are the VQ-VAE's
(`vqax.eval.anomaly_outputs`), with the scorer named "dcase_ae" as in the VQ-VAE's reference column.
"""
import json
import pathlib

import ml_collections

from vqax.data import dcase
from vqax.errors import ConfigError
from vqax.eval import anomaly_outputs, compare, references
from vqax.tasks.dcase_baseline.task import build_model
from vqax.tasks.dcase_clips import feature_config as feature_config_of
from vqax.train.checkpointing import restore_trained

SCORER = "dcase_ae"


def score_settings(config, overrides=()) -> ml_collections.ConfigDict:
  """The config's `score` group with `--config.score.<field>=...` overrides (no other options)."""
  from vqax import config_loading
  overrides = list(overrides)
  for arg in overrides:
    if arg.startswith("--") and not arg.startswith("--config.score."):
      raise ConfigError(f"vqax score: {arg.split('=')[0]!r} is not a scoring option "
                        "(expected --config.score.<field>=...)")
  wrapped = ml_collections.ConfigDict({"score": config.score.to_dict()})
  return config_loading.apply_overrides(wrapped, overrides).score


def load_detector(workdir):
  """(config, detector, step) from the newest checkpoint of a dcase_baseline workdir."""
  config, state, step = restore_trained(workdir, "dcase_baseline", "score")
  variables = {"params": state["params"], **state["model_state"]}
  return config, references.DcaseBaselineDetector.trained(build_model(config), variables), step


def score_workdir(workdir, *, data_root=None, out_dir=None, overrides=(), verbose: bool = True) -> dict:
  """Score every test clip with the autoencoder trained in `workdir`; write results.json, DCASE CSVs and
  one ROC PNG per machine type (under <workdir>/scores unless `out_dir`)."""
  workdir = pathlib.Path(workdir)
  config, detector, step = load_detector(workdir)
  settings = score_settings(config, overrides)
  data_root = data_root or config.data_root
  out_dir = pathlib.Path(out_dir or workdir / "scores")
  machine_types = dcase.resolve_machine_types(data_root, config.machine_type)
  norm_stats = dcase.load_norm_stats(config.norm_stats_path or workdir / "norm_stats.json", machine_types)
  feature_config = feature_config_of(config)
  frames = int(config.model.context_frames)

  per_clip = []
  for record in dcase.list_clips(data_root, machine_types, "test"):
    features = dcase.normalize(dcase.load_features(record, feature_config, config.feature_cache_dir or None),
                               norm_stats[record.machine_type])
    per_clip.append({"file": record.name, "machine_type": record.machine_type, "machine_id": record.machine_id,
                     "label": record.label, SCORER: detector.score(references.context_vectors(features, frames))})

  max_fpr = float(settings.max_fpr)
  reports = anomaly_outputs.anomaly_reports(per_clip, [SCORER], max_fpr)
  anomaly_outputs.write_outputs(out_dir, per_clip, [SCORER], SCORER, max_fpr)
  result = {"workdir": str(workdir), "checkpoint_step": step, "scorers": [SCORER], "primary": SCORER,
            "best": SCORER, "score_settings": settings.to_dict(), "reports": reports, "clips": per_clip,
            "out_dir": str(out_dir)}
  (out_dir / "results.json").write_text(json.dumps(result, indent=1))
  if verbose:
    print(f"\nAnomaly detection, AUC / pAUC % at max FPR {max_fpr:g} (DCASE2020 baseline autoencoder, step {step}):")
    print(compare.format_comparison_table(reports))
    print(f"\nwrote {out_dir}/results.json, DCASE CSVs and ROC PNGs")
  return result
