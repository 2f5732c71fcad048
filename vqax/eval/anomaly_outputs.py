"""What an anomaly-scoring run writes, whatever scored the clips: one AUC/pAUC report per scorer, the DCASE
submission CSVs and one ROC PNG per machine type with every scorer's curves.

`per_clip` rows are {"file", "machine_type", "machine_id", "label", <scorer>: score, ...}.
"""
import csv
import pathlib

from vqax.eval import metrics, plots


def anomaly_reports(per_clip, scorers, max_fpr: float) -> dict:
  """{scorer: metrics.anomaly_report} over the same clips."""
  return {s: metrics.anomaly_report([{**c, "score": c[s]} for c in per_clip], max_fpr=max_fpr) for s in scorers}


def write_outputs(out_dir, per_clip, scorers, primary: str, max_fpr: float) -> None:
  """DCASE CSVs (anomaly_score_<machine_type>_id_<XX>.csv, "file name,score" rows; the primary scorer's in
  out_dir, the others' in out_dir/<scorer>/) and roc_<machine_type>.png with every scorer per machine ID."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  groups = {}
  for clip in per_clip:
    groups.setdefault((clip["machine_type"], clip["machine_id"]), []).append(clip)
  for (machine_type, machine_id), clips in groups.items():
    for s in scorers:
      folder = out_dir if s == primary else out_dir / s
      folder.mkdir(parents=True, exist_ok=True)
      with open(folder / f"anomaly_score_{machine_type}_id_{machine_id}.csv", "w", newline="") as f:
        csv.writer(f).writerows([(c["file"], f"{c[s]:.6f}") for c in clips])
  for machine_type in sorted({c["machine_type"] for c in per_clip}):
    clips = [c for c in per_clip if c["machine_type"] == machine_type]
    curves = {}
    for s in scorers:
      for machine_id in sorted({c["machine_id"] for c in clips}):
        group = [c for c in clips if c["machine_id"] == machine_id]
        if len({c["label"] for c in group}) == 2:
          curves.setdefault(s, {})[f"id_{machine_id}"] = ([c["label"] for c in group], [c[s] for c in group])
    if curves:
      plots.plot_roc_comparison(curves, out_dir / f"roc_{machine_type}.png",
                                title=f"{machine_type}: ROC per scorer and machine ID", max_fpr=max_fpr)


__all__ = ["anomaly_reports", "write_outputs"]
