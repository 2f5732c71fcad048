"""Several scorers' `metrics.anomaly_report`s side by side: one row per machine type and ID."""
from collections.abc import Mapping

from vqax.errors import DataError
from vqax.eval import metrics


def format_comparison_table(reports: Mapping[str, Mapping]) -> str:
  """Text table with AUC and pAUC (percent) of every scorer per machine ID, per-type mean and overall mean.

  All reports must cover the same machine types and IDs (they come from one scoring run).
  """
  if not reports:
    raise DataError("format_comparison_table: no reports")
  names = list(reports)
  first = reports[names[0]]
  pct = lambda v: f"{100.0 * v:.2f}"  # noqa: E731
  rows = []
  for m_type, entry in first["machine_types"].items():
    for m_id in entry["ids"]:
      rows.append([m_type, m_id, *(pct(reports[n]["machine_types"][m_type]["ids"][m_id][k])
                                   for n in names for k in ("auc", "pauc"))])
    rows.append([m_type, "mean", *(pct(reports[n]["machine_types"][m_type]["mean"][k])
                                   for n in names for k in ("auc", "pauc"))])
  rows.append(["all types", "mean", *(pct(reports[n]["mean"][k]) for n in names for k in ("auc", "pauc"))])
  header = ["machine type", "id", *(f"{n} {k}" for n in names for k in ("AUC", "pAUC"))]
  return metrics._table(header, rows, align_left=2)


__all__ = ["format_comparison_table"]
