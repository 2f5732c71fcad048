"""The anomaly-detection study (issue 25): VQ-VAE training and scoring variants against the references.

  python -m tools.anomaly_study --data_root data/synth_dcase --runs_dir runs/study   # table + docs/anomaly_study.json

Trains the `configs/vqvae_dcase.py:demo` model once per training variant and seed (skipped when the workdir
already holds a finished run), then scores every trained run with every scoring variant (score variants
need no retraining: each run's clips are encoded once per test stride) and fits the references (PCA and the
DCASE2020 baseline autoencoder) once per seed on the same training clips. Prints one row per variant:
mean AUC and pAUC over machine types, mean ± standard deviation over seeds, and the per-type AUC; the JSON
holds every run's per-type figures and the training CPU time.
"""
import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]

# Training variants: name -> config overrides on top of configs/vqvae_dcase.py:demo.
TRAINING = {
    "demo": [],
    "lr1e-3": ["--config.learning_rate=0.001"],
    "p3x4": ["--config.phase3_epochs=4"],
}
# Training variants other than "demo" are scored with these scoring variants only (CPU is scarce).
TRAINING_SCORING = ("position/mean/s32 (seed)", "knn/s32")
# Scoring variants: name -> score settings (on top of the trained config's `score` group).
SCORING = {
    "position/mean/s32 (seed)": {"density_model": "position", "aggregate": "mean", "stride": 32},
    "row/mean/s32": {"density_model": "row", "aggregate": "mean", "stride": 32},
    "bigram/mean/s32": {"density_model": "bigram", "aggregate": "mean", "stride": 32},
    "knn/s32": {"density_model": "knn", "stride": 32},
    "row/topk/s32": {"density_model": "row", "aggregate": "topk", "stride": 32},
    "row/max/s32": {"density_model": "row", "aggregate": "max", "stride": 32},
    "row/mean/s8": {"density_model": "row", "aggregate": "mean", "stride": 8},
    "knn/s8": {"density_model": "knn", "stride": 8},
    "position/mean/s8": {"density_model": "position", "aggregate": "mean", "stride": 8},
    "position/topk/s32": {"density_model": "position", "aggregate": "topk", "stride": 32},
    "position/topk/s8": {"density_model": "position", "aggregate": "topk", "stride": 8},
    "position/max/s32": {"density_model": "position", "aggregate": "max", "stride": 32},
    "latent shrinkage 1e-2": {"latent_shrinkage": 1e-2, "stride": 32},
}


def train_run(workdir: pathlib.Path, data_root, seed: int, overrides, cache_dir) -> dict:
  """Train one demo run in a child process unless finished; returns its CPU and wall seconds."""
  record = workdir / "study_train_time.json"
  if (workdir / "checkpoints").is_dir() and record.is_file():
    return json.loads(record.read_text())
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.time()
  command = [sys.executable, "-m", "vqax.cli", "train", "--config", str(REPO / "configs/vqvae_dcase.py:demo"),
             "--workdir", str(workdir), "--data_root", str(data_root), f"--config.seed={seed}",
             f"--config.feature_cache_dir={cache_dir}", "--no_progress", *overrides]
  subprocess.run(command, check=True, cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  times = {"cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
           "wall_s": time.time() - start}
  record.write_text(json.dumps(times))
  return times


def summarise(report) -> dict:
  return {"auc": report["mean"]["auc"], "pauc": report["mean"]["pauc"],
          "types": {t: v["mean"]["auc"] for t, v in report["machine_types"].items()}}


def score_run(workdir: pathlib.Path, data_root, scoring: dict, references: list[str]) -> dict:
  """{variant: {scorer: summary}} (+ {"references": {name: summary}} when asked).

  Results are kept in <workdir>/study_scores.json keyed by the variant's settings, so a rerun scores only
  variants (and references) it has not scored before.
  """
  cache_path = workdir / "study_scores.json"
  cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
  key = lambda changes: json.dumps(changes, sort_keys=True)  # noqa: E731
  missing = {v: c for v, c in scoring.items() if key(c) not in cache}
  missing_refs = [r for r in references if f"reference:{r}" not in cache]
  if missing or missing_refs:
    fresh = _score_run(workdir, data_root, missing, missing_refs)
    cache.update({key(missing[v]): fresh[v] for v in missing})
    cache.update({f"reference:{r}": fresh["references"][r] for r in missing_refs})
    cache_path.write_text(json.dumps(cache, indent=1))
  out = {v: cache[key(c)] for v, c in scoring.items()}
  if references:
    out["references"] = {r: cache[f"reference:{r}"] for r in references}
  return out


def _score_run(workdir: pathlib.Path, data_root, scoring: dict, references: list[str]) -> dict:
  import ml_collections

  from vqax.data import dcase
  from vqax.eval import metrics
  from vqax.tasks.vqvae import scoring as anomaly
  from vqax.tasks.vqvae.task import feature_config

  config, model, params, _ = anomaly.load_trained(workdir)
  base = anomaly.score_settings(config)
  encoder = anomaly.PatchEncoder(model, params)
  norm_stats = dcase.load_norm_stats(workdir / "norm_stats.json")
  records = {v: {"latent": [], "density": [], "recon": []} for v in scoring}
  ref_records = {r: [] for r in references}
  for machine_type in dcase.resolve_machine_types(data_root, config.machine_type):
    train, test = (anomaly.load_clips(dcase.list_clips(data_root, [machine_type], split), norm_stats,
                                      feature_config(config), config.feature_cache_dir or None)
                   for split in ("train", "test"))
    encoded = {}
    for variant, changes in scoring.items():
      settings = ml_collections.ConfigDict({**base.to_dict(), **changes})
      stride = int(settings.stride)
      if stride not in encoded:
        anomaly.encode_clips(encoder, train + test, stride)
        encoded[stride] = [[(c.codes, c.errors, c.latents) for c in clips] for clips in (train, test)]
      for clips, saved in zip((train, test), encoded[stride]):
        for clip, (codes, errors, latents) in zip(clips, saved):
          clip.codes, clip.errors, clip.latents = codes, errors, latents
      scores = anomaly.vqvae_scores(train, test, settings, int(config.model.num_embeddings))
      for scorer, values in scores.items():
        records[variant][scorer] += [(machine_type, c.record.machine_id, c.record.label, s)
                                     for c, s in zip(test, values)]
    if references:
      ref = anomaly.reference_scores(train, test, base, references, seed=int(config.seed))
      for name, values in ref.items():
        ref_records[name] += [(machine_type, c.record.machine_id, c.record.label, s) for c, s in zip(test, values)]
  out = {v: {s: summarise(metrics.anomaly_report(r)) for s, r in by_scorer.items()}
         for v, by_scorer in records.items()}
  if references:
    out["references"] = {name: summarise(metrics.anomaly_report(r)) for name, r in ref_records.items()}
  return out


def spread(values) -> str:
  values = 100.0 * np.asarray(values)
  return f"{values.mean():.1f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.1f}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data_root", required=True, help="the demo's synthetic set (vqax synth dcase --out ...)")
  parser.add_argument("--runs_dir", required=True, help="one workdir per training variant and seed")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--training", default=",".join(TRAINING), help="comma list of training variants")
  parser.add_argument("--scoring", default=",".join(SCORING), help="comma list of scoring variants")
  parser.add_argument("--references", default="pca,dcase_ae")
  parser.add_argument("--cache_dir", default=None, help="log-mel cache (default <runs_dir>/features)")
  parser.add_argument("--out", default=str(REPO / "docs" / "anomaly_study.json"))
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  runs_dir = pathlib.Path(args.runs_dir)
  cache_dir = args.cache_dir or str(runs_dir / "features")
  scoring = {v: SCORING[v] for v in args.scoring.split(",") if v}
  references = [r for r in args.references.split(",") if r]

  results = {"seeds": seeds, "training": {}, "references": {}}
  for t_name in args.training.split(","):
    for seed in seeds:
      workdir = runs_dir / f"{t_name.replace('/', '_')}_s{seed}"
      times = train_run(workdir, args.data_root, seed, TRAINING[t_name], cache_dir)
      print(f"[study] {workdir.name}: trained ({times['cpu_s']:.0f} CPU s); scoring", flush=True)
      want_refs = references if str(seed) not in results["references"] else []
      run_scoring = scoring if t_name == "demo" else {v: c for v, c in scoring.items() if v in TRAINING_SCORING}
      scored = score_run(workdir, args.data_root, run_scoring, want_refs)
      if want_refs:
        results["references"][str(seed)] = scored.pop("references")
      results["training"].setdefault(t_name, {})[str(seed)] = {"train_time": times, "scoring": scored}

  rows = []
  for name in references:
    per_seed = [results["references"][str(s)][name] for s in seeds]
    rows.append((f"reference: {name}", per_seed))
  for t_name, by_seed in results["training"].items():
    for variant in by_seed[str(seeds[0])]["scoring"]:
      for scorer in ("latent", "density", "recon"):
        if scorer != "density" and scoring[variant].get("density_model", "position") != "position":
          continue  # the density model changes only the density score
        rows.append((f"{t_name}, {variant}, {scorer}", [by_seed[str(s)]["scoring"][variant][scorer] for s in seeds]))
  types = sorted(rows[0][1][0]["types"]) if rows else []
  header = ["variant", "mean AUC %", "mean pAUC %", *(f"{t} AUC %" for t in types)]
  table = [header] + [[name, spread([r["auc"] for r in runs]), spread([r["pauc"] for r in runs]),
                       *(spread([r["types"][t] for r in runs]) for t in types)] for name, runs in rows]
  widths = [max(len(r[i]) for r in table) for i in range(len(header))]
  for i, row in enumerate(table):
    print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
    if i == 0:
      print("  ".join("-" * w for w in widths))
  results["table"] = [dict(zip(header, r)) for r in table[1:]]
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
