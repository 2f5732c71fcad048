"""PNG figures for evaluation reports: ROC (anomaly detection), DET (verification), reconstructions.

Figures are drawn on `matplotlib.figure.Figure` with an explicit Agg canvas rather than through pyplot, so
importing this module neither selects a backend nor touches pyplot's figure registry: it works headless
and leaves a caller's interactive setup alone.
"""
from collections.abc import Mapping
import os
import pathlib

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from scipy.stats import norm
from sklearn import metrics as skm

from vqax.errors import DataError
from vqax.eval import metrics

_DET_TICKS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9,
              0.95, 0.99)


def _probit(rate):
  """Normal deviate of a rate; 0 and 1 (±inf) are clipped so lines run off the plot edge instead."""
  return norm.ppf(np.clip(rate, 1e-9, 1 - 1e-9))


def _save(fig: Figure, path) -> pathlib.Path:
  path = pathlib.Path(os.fspath(path))
  path.parent.mkdir(parents=True, exist_ok=True)
  FigureCanvasAgg(fig)
  fig.savefig(path, format="png", dpi=fig.dpi)
  return path


def plot_roc(curves: Mapping[str, tuple], path, title: str = "ROC", max_fpr: float = 0.1) -> pathlib.Path:
  """ROC curves, one per entry `{name: (labels, scores)}` (label 1 = anomaly), with the pAUC region shaded.

  The legend gives AUC and pAUC as `metrics.auc_pauc` computes them. Returns the PNG path.
  """
  if not curves:
    raise DataError("plot_roc: no curves to plot")
  fig = Figure(figsize=(5.5, 5), dpi=100, layout="constrained")
  ax = fig.add_subplot()
  ax.axvspan(0.0, max_fpr, color="tab:gray", alpha=0.15, lw=0, label=f"pAUC region (FPR ≤ {max_fpr:g})")
  ax.plot([0, 1], [0, 1], ls=":", color="gray", lw=1)
  for name, (labels, scores) in curves.items():
    auc, pauc = metrics.auc_pauc(labels, scores, max_fpr)
    fpr, tpr, _ = skm.roc_curve(np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64))
    ax.plot(fpr, tpr, lw=1.5, label=f"{name}: AUC {100 * auc:.2f}%, pAUC {100 * pauc:.2f}%")
  ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title=title)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize="small")
  return _save(fig, path)


_LINESTYLES = ("-", "--", "-.", ":")


def plot_roc_comparison(curves: Mapping[str, Mapping[str, tuple]], path, title: str = "ROC",
                        max_fpr: float = 0.1) -> pathlib.Path:
  """ROC curves of several scorers in one figure: `{scorer: {group: (labels, scores)}}` (label 1 = anomaly).

  One colour per scorer, one line style per group (e.g. machine ID); the legend gives AUC and pAUC.
  """
  if not curves or not any(curves.values()):
    raise DataError("plot_roc_comparison: no curves to plot")
  fig = Figure(figsize=(7, 6), dpi=100, layout="constrained")
  ax = fig.add_subplot()
  ax.axvspan(0.0, max_fpr, color="tab:gray", alpha=0.15, lw=0, label=f"pAUC region (FPR ≤ {max_fpr:g})")
  ax.plot([0, 1], [0, 1], ls=":", color="gray", lw=1)
  groups = sorted({g for by_group in curves.values() for g in by_group})
  for i, (scorer, by_group) in enumerate(curves.items()):
    color = f"C{i % 10}"
    for group, (labels, scores) in by_group.items():
      auc, pauc = metrics.auc_pauc(labels, scores, max_fpr)
      fpr, tpr, _ = skm.roc_curve(np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64))
      ax.plot(fpr, tpr, lw=1.5, color=color, ls=_LINESTYLES[groups.index(group) % len(_LINESTYLES)],
              label=f"{scorer} {group}: AUC {100 * auc:.1f}%, pAUC {100 * pauc:.1f}%")
  ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title=title)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize="x-small")
  return _save(fig, path)


def plot_det(curves: Mapping[str, tuple], path, title: str = "DET") -> pathlib.Path:
  """DET curves on normal-deviate axes, one per entry `{name: (scores, labels)}`, EER points marked.

  Argument order follows the verification metrics (`eer(scores, labels)`); label 1 = target trial.
  Returns the PNG path.
  """
  if not curves:
    raise DataError("plot_det: no curves to plot")
  fig = Figure(figsize=(5.5, 5), dpi=100, layout="constrained")
  ax = fig.add_subplot()
  smallest, eers = 0.5, []
  for name, (scores, labels) in curves.items():
    fpr, fnr = metrics.det_curve(scores, labels)
    value, _ = metrics.eer(scores, labels)
    positive = np.concatenate([fpr[fpr > 0], fnr[fnr > 0]])
    smallest = min(smallest, float(positive.min()) if positive.size else smallest)
    eers.append(value)
    (line,) = ax.plot(_probit(fpr), _probit(fnr), lw=1.5, label=f"{name}: EER {100 * value:.2f}%")
    ax.plot(_probit(value), _probit(value), "o", color=line.get_color(), ms=6)
  # Axes span about two decades below the best EER (not finer than the data resolves) and reach 50%, or
  # further for weak systems whose curves leave the usual square.
  lo = float(np.clip(max(min(eers) / 50, smallest / 2), 1e-4, 0.01))
  hi = float(np.clip(2.5 * max(eers), 0.5, 0.99))
  ticks = []
  for tick in (t for t in _DET_TICKS if lo <= t <= hi):  # thin ticks that would crowd in the tails
    if not ticks or norm.ppf(tick) - norm.ppf(ticks[-1]) >= (norm.ppf(hi) - norm.ppf(lo)) / 14:
      ticks.append(tick)
  labels = [f"{100 * t:g}" for t in ticks]
  ax.set_xticks(norm.ppf(ticks), labels)
  ax.set_yticks(norm.ppf(ticks), labels)
  ax.set_xlim(norm.ppf([lo, hi]))
  ax.set_ylim(norm.ppf([lo, hi]))
  ax.plot(norm.ppf([lo, hi]), norm.ppf([lo, hi]), ls=":", color="gray", lw=1)
  ax.set(xlabel="false acceptance rate [%]", ylabel="false rejection rate [%]", title=title)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower left", fontsize="small")
  return _save(fig, path)


def _as_patches(x, what: str) -> np.ndarray:
  """[N, H, W] from [N, H, W], channels-last [N, H, W, 1] or channels-first [N, 1, H, W]."""
  x = np.asarray(x, dtype=np.float32)
  if x.ndim == 4 and x.shape[-1] == 1:
    x = x[..., 0]
  elif x.ndim == 4 and x.shape[1] == 1:
    x = x[:, 0]
  if x.ndim != 3:
    raise DataError(f"plot_reconstructions: {what} must be [N, mel, frames] (optionally with one channel), "
                    f"got shape {x.shape}")
  return x


def plot_reconstructions(originals, reconstructions, path, n: int = 4) -> pathlib.Path:
  """Grid of the first `n` patches: input | reconstruction (same colour scale) | absolute error.

  Patches are [mel, frames]; mel runs upward. Returns the PNG path.
  """
  originals = _as_patches(originals, "originals")
  reconstructions = _as_patches(reconstructions, "reconstructions")
  if originals.shape != reconstructions.shape:
    raise DataError(f"plot_reconstructions: originals {originals.shape} and reconstructions "
                    f"{reconstructions.shape} differ in shape")
  n = min(int(n), originals.shape[0])
  if n < 1:
    raise DataError("plot_reconstructions: no patches to plot")
  fig = Figure(figsize=(9, 2.4 * n), dpi=100, layout="constrained")
  axes = fig.subplots(n, 3, squeeze=False)
  for row in range(n):
    x, y = originals[row], reconstructions[row]
    error = np.abs(x - y)
    vmin, vmax = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    panels = ((x, "input", "magma", vmin, vmax), (y, "reconstruction", "magma", vmin, vmax),
              (error, f"|error| (mean {error.mean():.3f})", "viridis", 0.0, float(error.max()) or 1.0))
    for ax, (image, name, cmap, lo, hi) in zip(axes[row], panels):
      im = ax.imshow(image, origin="lower", aspect="auto", cmap=cmap, vmin=lo, vmax=hi,
                     interpolation="nearest")
      ax.set_title(f"#{row} {name}", fontsize="small")
      ax.set_xticks([])
      ax.set_yticks([])
    fig.colorbar(im, ax=axes[row, 2], fraction=0.05)
  axes[-1, 0].set_xlabel("frames")
  axes[-1, 0].set_ylabel("mel bin")
  return _save(fig, path)


__all__ = ["plot_det", "plot_reconstructions", "plot_roc", "plot_roc_comparison"]
