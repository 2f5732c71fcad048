"""Scoring metrics: DCASE2020 Task 2 AUC/pAUC and WeSpeaker-style speaker-verification EER/minDCF.

Numpy and scikit-learn only, so reports can be computed on a host without JAX.

Anomaly detection (label 1 = anomaly, higher score = more anomalous): AUC and pAUC come from
`sklearn.metrics.roc_auc_score` exactly as the official DCASE2020 evaluator calls it. Note that with
`max_fpr` scikit-learn returns the McClish-standardised partial AUC (0.5 for a random scorer, 1.0 for a
perfect one), not the raw area divided by `max_fpr`; DCASE2020 published numbers use this value.

Verification (label 1 = target / same speaker, higher score = more likely the same): follows WeSpeaker's
`compute_pmiss_pfa_rbst` / `compute_eer` / `compute_c_norm` conventions. A trial is rejected when its
score is <= the threshold and accepted when it is greater. One deliberate difference: WeSpeaker makes one
operating point per trial (after an unstable argsort), so tied scores are split in arbitrary order; here a
threshold can never split tied scores, so each distinct score is one operating point, and the
accept-everything point (FNR 0, FPR 1) is included (WeSpeaker raises IndexError when its first trial
already has FNR >= FPR). Without ties both give the same EER and, whenever c_miss·p <= c_fa·(1−p) (any
p_target <= 0.5 with equal costs), the same minDCF; with ties this version is deterministic and reports
only operating points a threshold can reach.
"""
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from sklearn import metrics as skm

from vqax.errors import ConfigError, DataError

_RECORD_FIELDS = ("machine_type", "machine_id", "label", "score")


# ----------------------------------------------------------------------------------------------------------
# Input checks.


def _binary_trials(labels, scores, what: str) -> tuple[np.ndarray, np.ndarray]:
  """Validated (bool labels, float64 scores); both classes must be present."""
  labels = np.asarray(labels)
  scores = np.asarray(scores, dtype=np.float64)
  if labels.ndim != 1 or scores.ndim != 1:
    raise DataError(f"{what}: labels and scores must be 1-D, got shapes {labels.shape} and {scores.shape}")
  if labels.shape != scores.shape:
    raise DataError(f"{what}: {labels.size} labels but {scores.size} scores")
  if not np.all(np.isfinite(scores)):
    raise DataError(f"{what}: scores contain NaN or inf ({int(np.sum(~np.isfinite(scores)))} values)")
  if labels.size and not np.all(np.isin(labels, (0, 1))):
    raise DataError(f"{what}: labels must be 0 or 1, got values {np.unique(labels)[:5].tolist()}")
  labels = labels.astype(bool)
  n_pos = int(labels.sum())
  if n_pos == 0 or n_pos == labels.size:
    present = "no trials" if labels.size == 0 else f"only label {int(n_pos > 0)} ({labels.size} trials)"
    raise DataError(f"{what}: needs both labels 0 and 1, got {present}")
  return labels, scores


def _check_max_fpr(max_fpr: float) -> float:
  if not 0.0 < max_fpr <= 1.0:
    raise ConfigError(f"max_fpr must be in (0, 1], got {max_fpr}")
  return float(max_fpr)


# ----------------------------------------------------------------------------------------------------------
# Anomaly detection (DCASE2020 Task 2).


def auc_pauc(labels, scores, max_fpr: float = 0.1) -> tuple[float, float]:
  """(AUC, pAUC) as the DCASE2020 evaluator computes them; label 1 = anomaly."""
  return _auc_pauc(labels, scores, _check_max_fpr(max_fpr), "AUC")


def _auc_pauc(labels, scores, max_fpr: float, what: str) -> tuple[float, float]:
  y, s = _binary_trials(labels, scores, what)
  y = y.astype(np.int64)
  return float(skm.roc_auc_score(y, s)), float(skm.roc_auc_score(y, s, max_fpr=max_fpr))


def _field(record, name: str, index: int):
  """One field of a record given as a mapping, an object with attributes, or a 4-sequence."""
  if isinstance(record, Mapping):
    if name in record:
      return record[name]
  elif hasattr(record, name):
    return getattr(record, name)
  elif isinstance(record, Sequence) and not isinstance(record, str) and len(record) == len(_RECORD_FIELDS):
    return record[index]
  raise DataError(f"anomaly record {record!r} has no field {name!r} (needs {', '.join(_RECORD_FIELDS)})")


def _id_key(machine_id) -> str:
  """Machine IDs as DCASE writes them ('id_00'), whether given as 0, '00' or 'id_00'."""
  if isinstance(machine_id, (int, np.integer)) and not isinstance(machine_id, bool):
    return f"id_{int(machine_id):02d}"
  text = str(machine_id)
  return f"id_{text.zfill(2)}" if text.isdigit() else text


def _mean(values: Sequence[float]) -> float:
  return float(np.mean(values))


def _hmean(values: Sequence[float]) -> float:
  """Harmonic mean; 0 when any value is 0 (its limit) instead of dividing by zero."""
  if any(v == 0.0 for v in values):
    return 0.0
  return len(values) / sum(1.0 / v for v in values)


def anomaly_report(records: Iterable, max_fpr: float = 0.1) -> dict:
  """AUC/pAUC per machine ID, per machine type, and their DCASE-style averages.

  `records` yields one clip each: a mapping or object with `machine_type`, `machine_id`, `label`
  (1 = anomaly) and `score`, or a `(machine_type, machine_id, label, score)` tuple; a pandas DataFrame
  with those columns also works. Returns

    {'max_fpr': float,
     'machine_types': {type: {'ids': {'id_XX': {'auc', 'pauc', 'n_normal', 'n_anomaly'}},
                              'mean': {'auc', 'pauc'},     # arithmetic mean over IDs (DCASE "Average")
                              'pooled': {'auc', 'pauc'}}},  # one ROC over all clips of the type
     'mean': {'auc', 'pauc'},    # arithmetic mean over types of the per-type means
     'hmean': {'auc', 'pauc'}}   # harmonic mean over types of the per-type means

  Types and IDs are sorted by name.
  """
  max_fpr = _check_max_fpr(max_fpr)
  if hasattr(records, "to_dict") and hasattr(records, "columns"):  # pandas DataFrame
    records = records.to_dict("records")
  groups: dict[str, dict[str, tuple[list, list]]] = {}
  for record in records:
    m_type, m_id, label, score = (_field(record, name, i) for i, name in enumerate(_RECORD_FIELDS))
    try:
      label, score = float(label), float(score)
    except (TypeError, ValueError) as e:
      raise DataError(f"anomaly record {record!r}: label and score must be numbers ({e})") from None
    labels, scores = groups.setdefault(str(m_type), {}).setdefault(_id_key(m_id), ([], []))
    labels.append(label)
    scores.append(score)
  if not groups:
    raise DataError("anomaly_report: no records")

  report = {"max_fpr": max_fpr, "machine_types": {}}
  for m_type in sorted(groups):
    ids, all_labels, all_scores = {}, [], []
    for m_id in sorted(groups[m_type]):
      labels, scores = groups[m_type][m_id]
      auc, pauc = _auc_pauc(labels, scores, max_fpr, f"{m_type} {m_id}")
      n_anomaly = int(sum(1 for v in labels if v == 1))
      ids[m_id] = {"auc": auc, "pauc": pauc, "n_normal": len(labels) - n_anomaly, "n_anomaly": n_anomaly}
      all_labels += labels
      all_scores += scores
    pooled_auc, pooled_pauc = _auc_pauc(all_labels, all_scores, max_fpr, m_type)
    report["machine_types"][m_type] = {
        "ids": ids,
        "mean": {"auc": _mean([v["auc"] for v in ids.values()]),
                 "pauc": _mean([v["pauc"] for v in ids.values()])},
        "pooled": {"auc": pooled_auc, "pauc": pooled_pauc},
    }
  per_type = list(report["machine_types"].values())
  for key, agg in (("mean", _mean), ("hmean", _hmean)):
    report[key] = {m: agg([t["mean"][m] for t in per_type]) for m in ("auc", "pauc")}
  return report


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align_left: int = 1) -> str:
  """Column-aligned text table: the first `align_left` columns left-aligned, the rest right-aligned."""
  widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

  def line(cells):
    return "  ".join(str(c).ljust(w) if i < align_left else str(c).rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

  rule = "  ".join("-" * w for w in widths)
  return "\n".join([line(header), rule, *(line(r) for r in rows)])


def format_anomaly_table(report: Mapping) -> str:
  """`anomaly_report` as an aligned text table, values in percent."""
  pct = lambda v: f"{100.0 * v:.2f}"  # noqa: E731
  rows = []
  for m_type, entry in report["machine_types"].items():
    for m_id, v in entry["ids"].items():
      rows.append([m_type, m_id, pct(v["auc"]), pct(v["pauc"])])
    rows.append([m_type, "mean", pct(entry["mean"]["auc"]), pct(entry["mean"]["pauc"])])
    rows.append([m_type, "pooled", pct(entry["pooled"]["auc"]), pct(entry["pooled"]["pauc"])])
  rows.append(["all types", "mean", pct(report["mean"]["auc"]), pct(report["mean"]["pauc"])])
  rows.append(["all types", "hmean", pct(report["hmean"]["auc"]), pct(report["hmean"]["pauc"])])
  header = ["machine type", "id", "AUC %", f"pAUC@{report['max_fpr']:g} %"]
  return _table(header, rows, align_left=2)


# ----------------------------------------------------------------------------------------------------------
# Speaker verification (WeSpeaker conventions).


def _error_curves(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fnr, fpr, thresholds), one point per distinct score plus the accept-everything point at index 0.

  At point i, trials with score <= thresholds[i] are rejected: FNR rises from 0 to 1, FPR falls from 1 to 0.
  """
  labels, scores = _binary_trials(labels, scores, "verification")
  order = np.argsort(scores, kind="stable")
  sorted_scores, sorted_labels = scores[order], labels[order]
  last_of_tie = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
  n_target = int(labels.sum())
  n_nontarget = labels.size - n_target
  targets_rejected = np.cumsum(sorted_labels)[last_of_tie]
  nontargets_rejected = np.cumsum(~sorted_labels)[last_of_tie]
  fnr = np.concatenate([[0.0], targets_rejected / n_target])
  fpr = np.concatenate([[1.0], (n_nontarget - nontargets_rejected) / n_nontarget])
  thresholds = np.concatenate([[-np.inf], sorted_scores[last_of_tie]])
  return fnr, fpr, thresholds


def _eer_from_curves(fnr, fpr, thresholds) -> tuple[float, float]:
  # FNR - FPR never decreases; it is -1 at index 0 and +1 at the end, so the crossing is bracketed.
  diff = fnr - fpr
  x1 = int(np.flatnonzero(diff >= 0)[0])  # first point where misses >= false alarms
  x2 = x1 - 1  # last point where misses < false alarms
  a = diff[x1] / (diff[x1] - diff[x2])  # WeSpeaker's linear interpolation between the two points
  return float(fnr[x1] + a * (fnr[x2] - fnr[x1])), float(thresholds[x1])


def _check_dcf_params(p_target: float, c_miss: float, c_fa: float):
  if not 0.0 < p_target < 1.0:
    raise ConfigError(f"p_target must be in (0, 1), got {p_target}")
  if c_miss <= 0 or c_fa <= 0:
    raise ConfigError(f"c_miss and c_fa must be positive, got {c_miss} and {c_fa}")


def _min_dcf_from_curves(fnr, fpr, thresholds, p_target, c_miss, c_fa) -> tuple[float, float]:
  _check_dcf_params(p_target, c_miss, c_fa)
  c_det = c_miss * fnr * p_target + c_fa * fpr * (1.0 - p_target)
  c_def = min(c_miss * p_target, c_fa * (1.0 - p_target))
  i = int(np.argmin(c_det))
  return float(c_det[i] / c_def), float(thresholds[i])


def eer(scores, labels) -> tuple[float, float]:
  """(EER as a fraction, threshold) where the FNR and FPR curves cross, linearly interpolated.

  The threshold is the score at the first operating point with FNR >= FPR, as WeSpeaker returns it;
  label 1 = target trial; accept when score > threshold.
  """
  return _eer_from_curves(*_error_curves(scores, labels))


def min_dcf(scores, labels, p_target: float = 0.01, c_miss: float = 1.0,
            c_fa: float = 1.0) -> tuple[float, float]:
  """(normalised minimum detection cost, threshold reaching it); label 1 = target trial.

  min over thresholds of (c_miss·FNR·p + c_fa·FPR·(1−p)) / min(c_miss·p, c_fa·(1−p)). The threshold is
  -inf when accepting every trial is cheapest.
  """
  _check_dcf_params(p_target, c_miss, c_fa)
  return _min_dcf_from_curves(*_error_curves(scores, labels), p_target, c_miss, c_fa)


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
  """(fpr, fnr) at every distinct threshold, from accept-all (0 misses) to reject-all (0 false alarms)."""
  fnr, fpr, _ = _error_curves(scores, labels)
  return fpr, fnr


def verification_report(scores_by_dim: Mapping[int, np.ndarray], labels,
                        p_targets: Sequence[float] = (0.01, 0.05)) -> dict:
  """EER and minDCF for each nested (Matryoshka) embedding dim on one trial list.

  Returns {'n_target', 'n_nontarget', 'p_targets': tuple,
           'dims': {dim: {'eer', 'eer_threshold', 'min_dcf': {p: v}, 'min_dcf_threshold': {p: t}}}},
  dims sorted ascending.
  """
  if not scores_by_dim:
    raise DataError("verification_report: no scores (scores_by_dim is empty)")
  p_targets = tuple(float(p) for p in p_targets)
  for p in p_targets:
    _check_dcf_params(p, 1.0, 1.0)
  labels_arr = np.asarray(labels)
  dims = {}
  for dim in sorted(scores_by_dim):
    fnr, fpr, thresholds = _error_curves(scores_by_dim[dim], labels_arr)
    value, threshold = _eer_from_curves(fnr, fpr, thresholds)
    entry = {"eer": value, "eer_threshold": threshold, "min_dcf": {}, "min_dcf_threshold": {}}
    for p in p_targets:
      cost, cost_threshold = _min_dcf_from_curves(fnr, fpr, thresholds, p, 1.0, 1.0)
      entry["min_dcf"][p], entry["min_dcf_threshold"][p] = cost, cost_threshold
    dims[int(dim)] = entry
  n_target = int(np.sum(labels_arr == 1))
  return {"n_target": n_target, "n_nontarget": int(labels_arr.size - n_target), "p_targets": p_targets,
          "dims": dims}


def format_verification_table(report: Mapping) -> str:
  """`verification_report` as an aligned text table: one row per embedding dim."""
  header = ["dim", "EER %", *(f"minDCF@{p:g}" for p in report["p_targets"])]
  rows = [[str(dim), f"{100.0 * v['eer']:.3f}", *(f"{v['min_dcf'][p]:.4f}" for p in report["p_targets"])]
          for dim, v in report["dims"].items()]
  return _table(header, rows, align_left=0)


__all__ = [
    "anomaly_report",
    "auc_pauc",
    "det_curve",
    "eer",
    "format_anomaly_table",
    "format_verification_table",
    "min_dcf",
    "verification_report",
]
