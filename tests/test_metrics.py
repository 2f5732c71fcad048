"""Tests for vqax.eval.metrics and vqax.eval.plots.

EER/minDCF are checked against a brute-force loop over every threshold written here independently
(accept a trial when its score is greater than the threshold).
"""
import collections

import matplotlib
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vqax.errors import ConfigError, DataError
from vqax.eval import metrics, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _trials(seed, n=300, ties=False, target_rate=0.3):
  rng = np.random.default_rng(seed)
  labels = (rng.random(n) < target_rate).astype(int)
  scores = rng.normal(size=n) + 1.2 * labels
  if ties:
    scores = np.round(scores, 1)  # many tied scores, across both classes
  return scores, labels


def _brute_force_points(scores, labels):
  """(fnr, fpr) lists for thresholds -inf and every distinct score, in increasing threshold order."""
  targets = [s for s, y in zip(scores, labels) if y == 1]
  nontargets = [s for s, y in zip(scores, labels) if y == 0]
  points = []
  for t in [-np.inf] + sorted(set(float(s) for s in scores)):
    misses = sum(1 for s in targets if s <= t)
    false_alarms = sum(1 for s in nontargets if s > t)
    points.append((misses / len(targets), false_alarms / len(nontargets), t))
  return points


def _brute_force_eer(scores, labels):
  """Crossing of FNR and FPR on the polyline through all operating points, plus sandwich bounds."""
  points = _brute_force_points(scores, labels)
  for (fnr_a, fpr_a, _), (fnr_b, fpr_b, t_b) in zip(points, points[1:]):
    if fnr_a < fpr_a and fnr_b >= fpr_b:
      # Solve fnr_a + u (fnr_b - fnr_a) = fpr_a + u (fpr_b - fpr_a) for u in (0, 1].
      u = (fpr_a - fnr_a) / ((fnr_b - fnr_a) - (fpr_b - fpr_a))
      crossing = fnr_a + u * (fnr_b - fnr_a)
      break
  upper = min(max(fnr, fpr) for fnr, fpr, _ in points)
  lower = max(min(fnr, fpr) for fnr, fpr, _ in points)
  return crossing, t_b, lower, upper


def _brute_force_min_dcf(scores, labels, p, c_miss=1.0, c_fa=1.0):
  costs = [(c_miss * fnr * p + c_fa * fpr * (1 - p), t) for fnr, fpr, t in _brute_force_points(scores, labels)]
  cost, threshold = min(costs, key=lambda c: c[0])
  return cost / min(c_miss * p, c_fa * (1 - p)), threshold


# ----------------------------------------------------------------------------------------------------------
# AUC / pAUC.


def test_auc_pauc_hand_values():
  # ROC points (0, .5), (.5, .5), (.5, 1): AUC 3/4. Partial area to FPR 0.1 is 0.05; McClish standardises
  # it with min area 0.005 and max 0.1: 0.5 * (1 + 0.045 / 0.095) = 14/19.
  auc, pauc = metrics.auc_pauc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
  assert auc == pytest.approx(0.75, abs=1e-12)
  assert pauc == pytest.approx(14 / 19, abs=1e-12)
  _, pauc_half = metrics.auc_pauc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], max_fpr=0.5)
  assert pauc_half == pytest.approx(2 / 3, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_pauc_equal_sklearn(seed):
  scores, labels = _trials(seed, ties=seed == 2)
  auc, pauc = metrics.auc_pauc(labels, scores)
  assert auc == roc_auc_score(labels, scores)
  assert pauc == roc_auc_score(labels, scores, max_fpr=0.1)
  assert metrics.auc_pauc(labels, scores, max_fpr=0.2)[1] == roc_auc_score(labels, scores, max_fpr=0.2)


def test_auc_errors():
  with pytest.raises(DataError, match="both labels"):
    metrics.auc_pauc([0, 0, 0], [0.1, 0.2, 0.3])
  with pytest.raises(DataError, match="labels must be 0 or 1"):
    metrics.auc_pauc([0, 2, 1], [0.1, 0.2, 0.3])
  with pytest.raises(DataError, match="NaN"):
    metrics.auc_pauc([0, 1, 1], [0.1, np.nan, 0.3])
  with pytest.raises(DataError, match="2 labels but 3 scores"):
    metrics.auc_pauc([0, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ConfigError, match="max_fpr"):
    metrics.auc_pauc([0, 1], [0.1, 0.2], max_fpr=0.0)


# ----------------------------------------------------------------------------------------------------------
# Anomaly report.


def _synthetic_records():
  """Two types, two IDs each, with AUCs 1, 0.75 (fan) and 0.5, 1 (pump)."""
  rows = []
  for label, score in zip([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]):
    rows.append({"machine_type": "fan", "machine_id": "id_00", "label": label, "score": score})
  for label, score in zip([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]):
    rows.append({"machine_type": "fan", "machine_id": 2, "label": label, "score": score})  # int ID
  for label, score in zip([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]):
    rows.append(("pump", "00", label, score))  # tuple rows, digit-string ID
  row = collections.namedtuple("Row", "machine_type machine_id label score")
  for label, score in zip([1, 0, 1, 0], [3.0, 1.0, 4.0, 2.0]):
    rows.append(row("pump", "id_01", label, score))
  return rows


def test_anomaly_report_nesting_and_averages():
  records = _synthetic_records()
  report = metrics.anomaly_report(records)
  assert report["max_fpr"] == 0.1
  assert list(report["machine_types"]) == ["fan", "pump"]
  fan, pump = report["machine_types"]["fan"], report["machine_types"]["pump"]
  assert list(fan["ids"]) == ["id_00", "id_02"] and list(pump["ids"]) == ["id_00", "id_01"]
  assert fan["ids"]["id_00"] == {"auc": 1.0, "pauc": 1.0, "n_normal": 2, "n_anomaly": 2}
  assert fan["ids"]["id_02"]["auc"] == pytest.approx(0.75)
  assert fan["ids"]["id_02"]["pauc"] == pytest.approx(14 / 19)
  assert pump["ids"]["id_00"]["auc"] == pytest.approx(0.5)
  assert pump["ids"]["id_01"]["auc"] == 1.0
  assert fan["mean"]["auc"] == pytest.approx(0.875)
  assert fan["mean"]["pauc"] == pytest.approx((1 + 14 / 19) / 2)
  assert pump["mean"]["auc"] == pytest.approx(0.75)
  assert report["mean"]["auc"] == pytest.approx(0.8125)
  assert report["hmean"]["auc"] == pytest.approx(2 / (1 / 0.875 + 1 / 0.75))
  pauc_means = [fan["mean"]["pauc"], pump["mean"]["pauc"]]
  assert report["mean"]["pauc"] == pytest.approx(np.mean(pauc_means))
  assert report["hmean"]["pauc"] == pytest.approx(2 / sum(1 / v for v in pauc_means))
  # Pooled: one ROC over every clip of the type, as sklearn computes it.
  fan_rows = [r for r in records if isinstance(r, dict)]
  y, s = [r["label"] for r in fan_rows], [r["score"] for r in fan_rows]
  assert fan["pooled"]["auc"] == roc_auc_score(y, s)
  assert fan["pooled"]["pauc"] == roc_auc_score(y, s, max_fpr=0.1)

  table = metrics.format_anomaly_table(report)
  lines = table.splitlines()
  assert len({len(line) for line in lines[:2]}) == 1  # header and rule align
  rows = [line.split() for line in lines[2:]]
  assert ["fan", "id_02", "75.00", "73.68"] in rows
  assert ["all", "types", "mean", "81.25", f"{100 * report['mean']['pauc']:.2f}"] in rows
  assert len(rows) == 2 * 4 + 2 and len({len(line) for line in lines}) == 1


def test_anomaly_report_errors():
  one_class = [("fan", 0, 0, 0.1), ("fan", 0, 0, 0.2), ("fan", 1, 0, 0.3), ("fan", 1, 1, 0.4)]
  with pytest.raises(DataError, match="fan id_00: needs both labels"):
    metrics.anomaly_report(one_class)
  with pytest.raises(DataError, match="no field 'score'"):
    metrics.anomaly_report([{"machine_type": "fan", "machine_id": 0, "label": 1}])
  with pytest.raises(DataError, match="no records"):
    metrics.anomaly_report([])


# ----------------------------------------------------------------------------------------------------------
# EER / minDCF.


@pytest.mark.parametrize("seed,ties", [(0, False), (1, False), (2, True), (3, True), (4, True)])
def test_eer_and_min_dcf_match_brute_force(seed, ties):
  scores, labels = _trials(seed, ties=ties)
  assert ties == (np.unique(scores).size < scores.size)
  value, threshold = metrics.eer(scores, labels)
  crossing, crossing_threshold, lower, upper = _brute_force_eer(scores, labels)
  assert value == pytest.approx(crossing, abs=1e-12)
  assert threshold == crossing_threshold
  assert lower - 1e-12 <= value <= upper + 1e-12
  assert upper - lower <= 2 / min(labels.sum(), (1 - labels).sum()) + (0.05 if ties else 0)
  for p in (0.01, 0.05, 0.3, 0.7):
    cost, cost_threshold = metrics.min_dcf(scores, labels, p_target=p)
    expected, expected_threshold = _brute_force_min_dcf(scores, labels, p)
    assert cost == pytest.approx(expected, abs=1e-12)
    assert cost_threshold == expected_threshold
  cost, _ = metrics.min_dcf(scores, labels, p_target=0.05, c_miss=10, c_fa=1)
  assert cost == pytest.approx(_brute_force_min_dcf(scores, labels, 0.05, c_miss=10, c_fa=1)[0], abs=1e-12)


@pytest.mark.parametrize("seed", [5, 6])
def test_eer_matches_per_trial_curve_without_ties(seed):
  """Without ties, WeSpeaker's per-trial curve (no accept-all point) gives the same EER and minDCF."""
  scores, labels = _trials(seed)
  order = np.argsort(scores)
  y = labels[order].astype(np.float64)
  fnr = np.cumsum(y) / y.sum()
  fpr = 1 - np.cumsum(1 - y) / (1 - y).sum()
  i = int(np.argmax(fnr >= fpr))
  j = i - 1
  u = (fpr[j] - fnr[j]) / ((fnr[i] - fnr[j]) - (fpr[i] - fpr[j]))
  assert metrics.eer(scores, labels)[0] == pytest.approx(fnr[j] + u * (fnr[i] - fnr[j]), abs=1e-12)
  assert metrics.eer(scores, labels)[1] == np.sort(scores)[i]
  for p in (0.01, 0.05):
    per_trial = np.min(fnr * p + fpr * (1 - p)) / min(p, 1 - p)
    assert metrics.min_dcf(scores, labels, p)[0] == pytest.approx(per_trial, abs=1e-12)


def test_perfect_and_reversed_separation():
  labels = np.array([0, 0, 0, 1, 1, 1, 1])
  scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9])
  assert metrics.eer(scores, labels) == (0.0, 0.3)
  for p in (0.01, 0.05):
    assert metrics.min_dcf(scores, labels, p)[0] == 0.0
  reversed_eer, _ = metrics.eer(-scores, labels)
  assert reversed_eer == pytest.approx(1.0)
  assert metrics.min_dcf(-scores, labels, 0.01)[0] == pytest.approx(1.0)  # reject-all is the best option
  # All tied: the only operating points are accept-all (FNR 0, FPR 1) and reject-all (FNR 1, FPR 0).
  assert metrics.eer(np.ones(7), labels)[0] == pytest.approx(0.5)


def test_det_curve_endpoints_and_monotone():
  scores, labels = _trials(7, ties=True)
  fpr, fnr = metrics.det_curve(scores, labels)
  assert fpr.shape == fnr.shape == (np.unique(scores).size + 1,)
  assert (fpr[0], fnr[0], fpr[-1], fnr[-1]) == (1.0, 0.0, 0.0, 1.0)
  assert np.all(np.diff(fpr) <= 0) and np.all(np.diff(fnr) >= 0)


def test_verification_errors():
  with pytest.raises(DataError, match="both labels"):
    metrics.eer([0.1, 0.2], [1, 1])
  with pytest.raises(ConfigError, match="p_target"):
    metrics.min_dcf([0.1, 0.2], [0, 1], p_target=1.0)
  with pytest.raises(DataError, match="empty"):
    metrics.verification_report({}, [0, 1])


def test_verification_report_and_table():
  scores, labels = _trials(8, n=400)
  rng = np.random.default_rng(9)
  by_dim = {256: scores, 64: scores + rng.normal(scale=1.0, size=scores.size)}
  report = metrics.verification_report(by_dim, labels)
  assert list(report["dims"]) == [64, 256]
  assert report["p_targets"] == (0.01, 0.05)
  assert report["n_target"] + report["n_nontarget"] == scores.size
  for dim, s in by_dim.items():
    entry = report["dims"][dim]
    assert (entry["eer"], entry["eer_threshold"]) == metrics.eer(s, labels)
    for p in (0.01, 0.05):
      assert (entry["min_dcf"][p], entry["min_dcf_threshold"][p]) == metrics.min_dcf(s, labels, p)
  assert report["dims"][64]["eer"] > report["dims"][256]["eer"]
  table = metrics.format_verification_table(report)
  lines = table.splitlines()
  assert lines[0].split() == ["dim", "EER", "%", "minDCF@0.01", "minDCF@0.05"]
  assert len(lines) == 4 and lines[2].split()[0] == "64" and lines[3].split()[0] == "256"
  assert f"{100 * report['dims'][256]['eer']:.3f}" in lines[3]
  assert len({len(line) for line in lines}) == 1  # right-aligned columns


# ----------------------------------------------------------------------------------------------------------
# Plots.


def _assert_png(path):
  data = path.read_bytes()
  assert len(data) > 1000 and data[:8] == PNG_SIGNATURE


def test_plots_write_pngs(tmp_path):
  backend = matplotlib.rcParams._get_backend_or_none()
  s0, y0 = _trials(10)
  s1, y1 = _trials(11, ties=True)

  roc = plots.plot_roc({"id_00": (y0, s0), "id_01": (y1, s1)}, tmp_path / "a" / "b" / "roc.png", "fan")
  assert roc == tmp_path / "a" / "b" / "roc.png"
  _assert_png(roc)

  det = plots.plot_det({"dim 64": (s0, y0), "dim 256": (s1, y1)}, str(tmp_path / "det" / "det.png"), "Vox1-O")
  _assert_png(det)

  rng = np.random.default_rng(0)
  originals = rng.normal(size=(6, 64, 64, 1))
  rec = plots.plot_reconstructions(originals, originals + 0.1 * rng.normal(size=originals.shape),
                                   tmp_path / "rec.png", n=3)
  _assert_png(rec)
  _assert_png(plots.plot_reconstructions(originals[:2, :, :, 0], originals[:2, :, :, 0], tmp_path / "r2.png"))
  with pytest.raises(DataError, match="differ in shape"):
    plots.plot_reconstructions(originals, originals[:, :32], tmp_path / "bad.png")
  assert matplotlib.rcParams._get_backend_or_none() == backend  # caller's backend untouched
