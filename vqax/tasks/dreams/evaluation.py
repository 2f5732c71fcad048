"""A trained DreaMS workdir on a spectra file: embeddings, the pre-training tasks' accuracies, retrieval.

`evaluate_workdir` reports, with their chance levels:
- masked m/z top-1 / top-5 accuracy: every spectrum masked as in training (seeded draw, dropout off); chance
  is uniform over the m/z bins, and a stronger floor is the most frequent bin among the masked peaks;
- retention-order accuracy over pairs within each LC-MS run (every ordered pair with different retention
  times, up to `max_pairs`); chance 0.5;
- same-molecule retrieval (when spectra carry molecule identities): recall@1/5 and AUPRC of the DreaMS
  embeddings' cosine beside matchms CosineGreedy and ModifiedCosine on the same spectra
  (`vqax.eval.spectra_retrieval`), written as retrieval.json / retrieval.png.
Everything lands in `<out>/eval_spectra.json` (default out: `<workdir>/eval_spectra`).
"""
import itertools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from vqax.data import spectra as spectra_lib
from vqax.errors import DataError
from vqax.eval import spectra_retrieval
from vqax.models import dreams_objectives as objectives
from vqax.tasks.dreams.task import build_model, read_spectra_files
from vqax.train.checkpointing import restore_trained


def load_trained(workdir):
  """(config, model, variables, step) of the newest checkpoint in `workdir`; the model computes in float32
  without remat and with XLA's attention (the same function on any backend)."""
  config, state, step = restore_trained(workdir, "dreams", "evaluate")
  model = build_model(config).clone(dtype=jnp.float32, remat_policy="none", attention_backend=None)
  return config, model, {"params": state["params"]}, step


def read_eval_spectra(data) -> list[spectra_lib.Spectrum]:
  """Every usable spectrum of a file or folder (bad ones skipped and logged: evaluation reads what it can)."""
  read = read_spectra_files(data, skip_bad_spectra=True)
  if not read["spectra"]:
    raise DataError(f"--data {data}: no usable spectra")
  return read["spectra"]


def embed_spectra(model, variables, spectra, *, max_peaks_n: int, batch_size: int) -> np.ndarray:
  """[n, d_model] float32 precursor-token embeddings."""
  return spectra_retrieval.dreams_embed_fn(model, variables, max_peaks_n, batch_size)(spectra)


def embed_file(workdir, data, out_path, *, batch_size: int | None = None, max_peaks_n: int | None = None) -> dict:
  """`vqax embed`: embeddings of every spectrum of `data` to out_path (.npy) and one line per row to
  <out>.spectra.tsv (file, index in file, title, precursor m/z, retention time, molecule)."""
  config, model, variables, step = load_trained(workdir)
  spectra = read_eval_spectra(data)
  embeddings = embed_spectra(model, variables, spectra, max_peaks_n=max_peaks_n or int(config.eval.max_peaks_n),
                             batch_size=batch_size or int(config.eval.batch_size))
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  np.save(out_path, embeddings)
  rows = ["file\tindex\ttitle\tprecursor_mz\trt\tidentity"] + [
      f"{s.file}\t{s.index}\t{s.title}\t{s.precursor_mz}\t{'' if s.rt is None else s.rt}\t{s.identity or ''}"
      for s in spectra]
  listing = out_path.with_suffix(".spectra.tsv")
  listing.write_text("\n".join(rows) + "\n")
  print(f"[vqax] {len(spectra)} embeddings of dim {embeddings.shape[1]} (checkpoint step {step}) -> {out_path}; "
        f"rows listed in {listing}")
  return {"embeddings": str(out_path), "listing": str(listing), "n": len(spectra), "checkpoint_step": step}


def masked_mz_accuracy(model, variables, spectra, *, max_peaks_n: int, batch_size: int, frac_masks: float,
                       min_n_masks: int, seed: int = 0) -> dict:
  """Top-1 / top-5 accuracy of the masked m/z head over every spectrum, masked as in training."""
  spec = jnp.asarray(spectra_lib.preprocess_many(spectra, max_peaks_n))

  @jax.jit
  def predict(rng, spec):
    masked = objectives.mask_spectra(rng, spec, frac_masks=frac_masks, min_n_masks=min_n_masks,
                                     max_mz=model.max_mz, bin_size=model.hot_mz_bin_size)
    outputs, _ = model.apply(variables, masked["spec"], masked["mz_positions"])
    top5 = jax.lax.top_k(outputs["mz_logits"], min(5, model.num_mz_bins))[1]
    return top5, masked["mz_targets"], masked["mz_valid"]

  top1_hits = top5_hits = 0
  targets_all = []
  for i in range(0, len(spec), batch_size):
    top5, targets, valid = jax.device_get(predict(jax.random.fold_in(jax.random.key(seed), i), spec[i:i + batch_size]))
    top1_hits += int(np.sum((top5[..., 0] == targets) & valid))
    top5_hits += int(np.sum(np.any(top5 == targets[..., None], -1) & valid))
    targets_all.append(targets[valid])
  targets_all = np.concatenate(targets_all)
  n = len(targets_all)
  if n == 0:
    raise DataError("no maskable peaks in the evaluation spectra")
  counts = np.sort(np.bincount(targets_all))[::-1]
  chance = objectives.chance_levels(model.num_mz_bins)
  return {"mz_top1_accuracy": top1_hits / n, "mz_top5_accuracy": top5_hits / n, "masked_peaks": n,
          "chance_mz_top1_accuracy": chance["mz_top1_accuracy"], "chance_mz_top5_accuracy": chance["mz_top5_accuracy"],
          "most_frequent_bin_top1": float(counts[0] / n), "most_frequent_bins_top5": float(counts[:5].sum() / n)}


def retention_order_pairs(spectra, max_pairs: int, seed: int = 0) -> list[tuple[int, int]]:
  """Ordered pairs (i, j) within one run with different retention times; a seeded sample of max_pairs."""
  pairs = []
  for idx in spectra_lib.group_runs(spectra).values():
    pairs += [(int(i), int(j)) for i, j in itertools.permutations(idx, 2) if spectra[i].rt != spectra[j].rt]
  if len(pairs) > max_pairs:
    chosen = np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False)
    pairs = [pairs[k] for k in sorted(chosen)]
  return pairs


def retention_order_accuracy(model, variables, spectra, *, max_peaks_n: int, batch_size: int,
                             max_pairs: int = 20000, seed: int = 0) -> dict | None:
  """Accuracy of the retention-order head on pairs within each run (None without such pairs)."""
  pairs = retention_order_pairs(spectra, max_pairs, seed)
  if not pairs or not model.ro_head:
    return None
  spec = spectra_lib.preprocess_many(spectra, max_peaks_n)
  labels = np.asarray([spectra[i].rt < spectra[j].rt for i, j in pairs])
  apply = jax.jit(lambda x: model.apply(variables, x)[0]["ro_logit"])
  logits = []
  for start in range(0, len(pairs), batch_size):
    chunk = np.asarray(pairs[start:start + batch_size])
    logits.append(np.asarray(apply(jnp.asarray(np.stack([spec[chunk[:, 0]], spec[chunk[:, 1]]], 1)))))
  predicted = np.concatenate(logits) > 0
  return {"ro_accuracy": float(np.mean(predicted == labels)), "ro_pairs": len(pairs), "chance_ro_accuracy": 0.5,
          "majority_ro_accuracy": float(max(labels.mean(), 1 - labels.mean()))}


def evaluate_workdir(workdir, data, *, out_dir=None, batch_size: int | None = None, max_peaks_n: int | None = None,
                     max_pairs: int = 20000, retrieval: bool = True, seed: int = 0) -> dict:
  """`vqax eval-spectra`: the pre-training accuracies and same-molecule retrieval on `data`."""
  config, model, variables, step = load_trained(workdir)
  spectra = read_eval_spectra(data)
  batch_size = batch_size or int(config.eval.batch_size)
  train_peaks = int(config.max_peaks_n)  # the accuracies on spectra shaped as in training
  out_dir = pathlib.Path(out_dir or pathlib.Path(workdir) / "eval_spectra")
  out_dir.mkdir(parents=True, exist_ok=True)
  result = {"workdir": str(workdir), "checkpoint_step": step, "data": str(data), "spectra": len(spectra),
            "num_mz_bins": model.num_mz_bins}
  result["masked_mz"] = masked_mz_accuracy(model, variables, spectra, max_peaks_n=train_peaks, batch_size=batch_size,
                                           frac_masks=float(config.frac_masks), min_n_masks=int(config.min_n_masks),
                                           seed=seed)
  result["retention_order"] = retention_order_accuracy(model, variables, spectra, max_peaks_n=train_peaks,
                                                       batch_size=batch_size, max_pairs=max_pairs, seed=seed)
  if retrieval and sum(1 for s in spectra if s.identity) >= 2:
    embed = spectra_retrieval.dreams_embed_fn(model, variables, max_peaks_n or int(config.eval.max_peaks_n),
                                              batch_size)
    try:
      result["retrieval"] = spectra_retrieval.evaluate_retrieval(spectra, {"DreaMS": embed}, out_dir=out_dir)
    except DataError as e:  # e.g. no molecule measured twice
      result["retrieval"] = {"skipped": str(e)}
  (out_dir / "eval_spectra.json").write_text(json.dumps(result, indent=1) + "\n")
  print(format_result(result))
  print(f"[vqax] results in {out_dir / 'eval_spectra.json'}")
  return result


def format_result(result: dict) -> str:
  mz, ro = result["masked_mz"], result["retention_order"]
  lines = [f"[vqax] DreaMS step {result['checkpoint_step']} on {result['data']} ({result['spectra']} spectra):",
           f"  masked m/z top-1 {mz['mz_top1_accuracy']:.3f} (chance {mz['chance_mz_top1_accuracy']:.4f}, most "
           f"frequent bin {mz['most_frequent_bin_top1']:.3f}), top-5 {mz['mz_top5_accuracy']:.3f} (chance "
           f"{mz['chance_mz_top5_accuracy']:.4f}, 5 most frequent {mz['most_frequent_bins_top5']:.3f}); "
           f"{mz['masked_peaks']} masked peaks"]
  if ro:
    lines.append(f"  retention order {ro['ro_accuracy']:.3f} (chance 0.5, majority {ro['majority_ro_accuracy']:.3f}) "
                 f"over {ro['ro_pairs']} pairs")
  else:
    lines.append("  retention order: no run with two spectra with retention times")
  retrieval = result.get("retrieval") or {}
  if "skipped" in retrieval:
    lines.append(f"  retrieval skipped: {retrieval['skipped']}")
  for name, r in retrieval.items():
    if isinstance(r, dict) and "recall@1" in r:
      lines.append(f"  retrieval {name:30s} recall@1 {r['recall@1']:.3f}  recall@5 {r['recall@5']:.3f}  AUPRC "
                   f"{r['auprc']:.3f}  (chance {r['chance_recall@1']:.3f} / {r['chance_recall@5']:.3f} / "
                   f"{r['chance_auprc']:.3f})")
  return "\n".join(lines)
