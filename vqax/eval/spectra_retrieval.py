"""Same-molecule spectrum retrieval: embeddings side by side with matchms's cosine scores.

On a labelled file (molecule identity per spectrum, e.g. InChIKey first block or SMILES), every spectrum
whose molecule has another spectrum is a query; the others are ranked by score. Reported per method:
recall@1 and recall@5 (a spectrum of the same molecule among the k best, the query itself excluded),
AUPRC over all unordered pairs (same molecule = positive), and the chance levels of both. Methods:
cosine similarity of embeddings from any `embed_fn(spectra) -> [n, d]` (a DreaMS model:
`dreams_embed_fn`), matchms CosineGreedy and ModifiedCosineGreedy (tolerance 0.1 Da, as the paper's
baselines) on the same pairs.
"""
import json
import pathlib
from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from vqax.data.spectra import Spectrum, preprocess_many
from vqax.errors import DataError


def retrieval_metrics(scores: np.ndarray, identities: Sequence[str]) -> dict:
  """Metrics of a symmetric [n, n] score matrix (higher = more similar) against molecule identities."""
  ids = np.asarray(identities)
  same = ids[:, None] == ids[None, :]
  n = len(ids)
  off_diagonal = ~np.eye(n, dtype=bool)
  queries = np.nonzero((same & off_diagonal).any(1))[0]
  if len(queries) == 0:
    raise DataError("no molecule has two spectra: same-molecule retrieval needs repeated molecules")
  masked = np.where(off_diagonal, scores, -np.inf)
  order = np.argsort(-masked[queries], axis=1, kind="stable")
  hits = same[queries[:, None], order]
  iu = np.triu_indices(n, 1)
  labels, pair_scores = same[iu], scores[iu]
  positives = same[queries] & off_diagonal[queries]
  chance_at = lambda k: float(np.mean([1 - _none_in_k(p.sum(), n - 1, k) for p in positives]))
  return {"recall@1": float(hits[:, :1].any(1).mean()), "recall@5": float(hits[:, :5].any(1).mean()),
          "auprc": float(average_precision_score(labels, pair_scores)), "n_queries": int(len(queries)),
          "n_spectra": int(n), "chance_recall@1": chance_at(1), "chance_recall@5": chance_at(5),
          "chance_auprc": float(labels.mean())}


def _none_in_k(positives: int, total: int, k: int) -> float:
  """Probability that k draws without replacement from total miss all positives."""
  p = 1.0
  for i in range(min(k, total)):
    p *= max(total - positives - i, 0) / (total - i)
  return p


def embedding_scores(embeddings: np.ndarray) -> np.ndarray:
  """Cosine similarity matrix of [n, d] embeddings."""
  e = np.asarray(embeddings, np.float64)
  e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
  return e @ e.T


def matchms_scores(spectra: Sequence[Spectrum], method: str = "CosineGreedy", tolerance: float = 0.1) -> np.ndarray:
  """[n, n] matchms scores ('CosineGreedy' or 'ModifiedCosineGreedy') between all spectra."""
  from matchms import Spectrum as MatchmsSpectrum
  from matchms import similarity
  converted = [MatchmsSpectrum(mz=s.mz.astype(float), intensities=s.intensity.astype(float),
                               metadata={"precursor_mz": s.precursor_mz}, metadata_harmonization=False)
               for s in spectra]
  scorer = getattr(similarity, method)(tolerance=tolerance)
  result = scorer.matrix(converted, converted, array_type="numpy", is_symmetric=True, progress_bar=False)
  return np.asarray(result["score"] if result.dtype.names else result, np.float64)


def dreams_embed_fn(model, variables, max_peaks_n: int = 100, batch_size: int = 64) -> Callable:
  """`embed_fn` of a DreaMS model: precursor-token outputs of the preprocessed spectra."""
  import jax
  apply = jax.jit(lambda spec: model.apply(variables, spec)[0]["embedding"])

  def embed(spectra: Sequence[Spectrum]) -> np.ndarray:
    spec = preprocess_many(list(spectra), max_peaks_n)
    chunks = [np.asarray(apply(spec[i:i + batch_size]), np.float32) for i in range(0, len(spec), batch_size)]
    return np.concatenate(chunks)
  return embed


def evaluate_retrieval(spectra: Sequence[Spectrum], embed_fns: dict[str, Callable] | None = None,
                       out_dir=None, cosine_methods=("CosineGreedy", "ModifiedCosineGreedy")) -> dict:
  """{method: metrics} for each embedding function and matchms cosine; with out_dir also
  retrieval.json and retrieval.png (metric bars and precision-recall curves)."""
  labelled = [s for s in spectra if s.identity]
  if len(labelled) < 2:
    raise DataError("same-molecule retrieval needs spectra with molecule identities (SMILES / InChIKey)")
  identities = [s.identity for s in labelled]
  scores = {name: embedding_scores(fn(labelled)) for name, fn in (embed_fns or {}).items()}
  scores.update({f"matchms {m}": matchms_scores(labelled, m) for m in cosine_methods})
  results = {name: retrieval_metrics(s, identities) for name, s in scores.items()}
  if out_dir is not None:
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "retrieval.json").write_text(json.dumps(results, indent=1) + "\n")
    plot_retrieval(results, scores, identities, out_dir / "retrieval.png")
  return results


def plot_retrieval(results: dict, scores: dict, identities: Sequence[str], path) -> pathlib.Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4))
  metrics = ("recall@1", "recall@5", "auprc")
  width = 0.8 / len(results)
  for i, (name, r) in enumerate(results.items()):
    bars.bar(np.arange(3) + i * width, [r[m] for m in metrics], width, label=name)
  first = next(iter(results.values()))
  bars.scatter(np.arange(3) + 0.4 - width / 2, [first[f"chance_{m}"] for m in metrics], marker="_", s=400,
               color="k", label="chance", zorder=3)
  bars.set_xticks(np.arange(3) + 0.4 - width / 2, metrics)
  bars.set_ylim(0, 1.3)
  bars.set_title(f"same-molecule retrieval ({first['n_spectra']} spectra, {first['n_queries']} queries)")
  bars.legend(fontsize=7, loc="upper center", ncol=2)
  ids = np.asarray(identities)
  iu = np.triu_indices(len(ids), 1)
  labels = (ids[:, None] == ids[None, :])[iu]
  for name, s in scores.items():
    precision, recall, _ = precision_recall_curve(labels, s[iu])
    curves.plot(recall, precision, label=f"{name} (AUPRC {results[name]['auprc']:.2f})")
  curves.set_xlabel("recall")
  curves.set_ylabel("precision")
  curves.set_title("same-molecule pairs")
  curves.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return pathlib.Path(path)
