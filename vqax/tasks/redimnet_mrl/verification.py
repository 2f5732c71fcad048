"""Speaker verification with a trained ReDimNet-MRL workdir: embeddings, cosine trials, EER/minDCF per dim.

Embeddings are of whole utterances (WeSpeaker's protocol). To compile a handful of shapes rather than one
per file length, each wave is repeat-padded (wrapped) up to the next length of a geometric grid that starts
at 1 s (`bucket_ratio`; 1.0 means exact lengths) and files of one bucket are batched. Repetition rather than
zeros keeps the per-utterance mean normalisation and the pooled statistics close to those of the original
(zeros would add silence frames); with ratio 1.25 a file is at most 25 % longer than it was.

Scores: cosine of L2-normalised prefixes z[:m] for every nested dim m, optionally after subtracting a mean
embedding (over the trial files or a cohort folder), as WeSpeaker's `score.py` does with `cal_mean`.
Trial lists are `label enroll test` lines (1 = same speaker), paths relative to the data root.
"""
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from vqax.audio.io import read_audio
from vqax.data import speakers
from vqax.errors import DataError
from vqax.eval import metrics, plots
from vqax.models.mrl import CLASS_WEIGHTS
from vqax.tasks.redimnet_mrl.task import build_model
from vqax.train.checkpointing import restore_trained


def load_trained(workdir):
  """(config, model, variables, step) of the newest checkpoint in `workdir`."""
  config, state, step = restore_trained(workdir, "redimnet_mrl", "evaluate")
  num_classes = state["params"]["head"][CLASS_WEIGHTS].shape[0]
  variables = {"params": state["params"], **state["model_state"]}
  return config, build_model(config, num_classes), variables, step


# ----------------------------------------------------------------------------------------------------------
# Embeddings


def bucket_length(n: int, ratio: float, smallest: int) -> int:
  """The smallest grid length smallest·ratio^k >= n (n itself when ratio is 1)."""
  if ratio <= 1.0:
    return n
  if n <= smallest:
    return smallest
  k = math.ceil(math.log(n / smallest) / math.log(ratio) - 1e-9)
  length = int(math.ceil(smallest * ratio**k))
  return length if length >= n else int(math.ceil(smallest * ratio**(k + 1)))


class Embedder:
  """Waves -> z [N, projection_dim] in fixed-size batches, one compile per bucket length."""

  def __init__(self, model, variables, *, batch_size: int = 16, bucket_ratio: float = 1.25,
               max_seconds: float = 0.0, smallest_bucket_seconds: float = 1.0):
    self.variables = jax.device_put(variables)  # once, not with every batch
    self.batch_size = int(batch_size)
    self.bucket_ratio = float(bucket_ratio)
    self.max_samples = int(max_seconds * speakers.SAMPLE_RATE) if max_seconds > 0 else None
    self.smallest_bucket = int(smallest_bucket_seconds * speakers.SAMPLE_RATE)

    @jax.jit
    def run(variables, wave):
      z, _ = model.apply(variables, wave, train=False)
      return z.astype(jnp.float32)
    self._run = run

  def prepare(self, wave: np.ndarray) -> np.ndarray:
    """Centre-crop to max_seconds, then repeat-pad up to the bucket length."""
    if self.max_samples and wave.shape[0] > self.max_samples:
      start = (wave.shape[0] - self.max_samples) // 2
      wave = wave[start:start + self.max_samples]
    smallest = min(self.smallest_bucket, self.max_samples or self.smallest_bucket)
    target = bucket_length(wave.shape[0], self.bucket_ratio, smallest)
    if self.max_samples:  # the grid need not pass through max_seconds: never pad beyond it
      target = max(min(target, self.max_samples), wave.shape[0])
    return np.pad(wave, (0, target - wave.shape[0]), mode="wrap")

  def __call__(self, waves) -> np.ndarray:
    prepared = [self.prepare(w) for w in waves]
    out = [None] * len(prepared)
    by_length = {}
    for i, wave in enumerate(prepared):
      by_length.setdefault(wave.shape[0], []).append(i)
    for length, indices in sorted(by_length.items()):
      for start in range(0, len(indices), self.batch_size):
        chunk = indices[start:start + self.batch_size]
        batch = np.zeros((self.batch_size, length), np.float32)  # zero rows fill the last batch
        for row, i in enumerate(chunk):
          batch[row] = prepared[i]
        z = np.asarray(jax.device_get(self._run(self.variables, batch)))
        for row, i in enumerate(chunk):
          out[i] = z[row]
    return np.stack(out) if out else np.zeros((0, 0), np.float32)


def embed_files(embedder: Embedder, paths, *, resample: bool = False, chunk: int = 256) -> np.ndarray:
  """Embeddings [N, D] of audio files, read `chunk` at a time (bounded host memory)."""
  parts = []
  paths = list(paths)
  for start in range(0, len(paths), chunk):
    waves = [read_audio(p, speakers.SAMPLE_RATE, resample=resample) for p in paths[start:start + chunk]]
    parts.append(embedder(waves))
  return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def list_audio(root) -> list[str]:
  """Every audio file under `root` (any depth), as sorted '/'-separated paths relative to it."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"--data_root {root}: folder not found")
  files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                 if p.is_file() and p.suffix.lower() in speakers.AUDIO_EXTENSIONS
                 and not any(part.startswith(".") for part in p.relative_to(root).parts))
  if not files:
    raise DataError(f"--data_root {root}: no audio files ({', '.join(speakers.AUDIO_EXTENSIONS)})")
  return files


def embedder_for(config, model, variables, **overrides) -> Embedder:
  """An Embedder with the config's eval settings, any of them replaced by non-None `overrides`."""
  settings = {"batch_size": config.eval.batch_size, "bucket_ratio": config.eval.bucket_ratio,
              "max_seconds": config.eval.max_seconds}
  settings.update({k: v for k, v in overrides.items() if v is not None})
  return Embedder(model, variables, **settings)


# ----------------------------------------------------------------------------------------------------------
# Trials


def read_trials(path) -> list[tuple[int, str, str]]:
  """`label enroll test` lines -> [(label, enroll, test)]; blank lines and '#' comments are skipped."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"--trials {path}: file not found")
  trials = []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    fields = line.split()
    if not fields or fields[0].startswith("#"):
      continue
    if len(fields) != 3 or fields[0] not in ("0", "1"):
      raise DataError(f"{path}:{number}: expected 'label enroll test' with label 0 or 1, got {line.strip()!r}")
    trials.append((int(fields[0]), fields[1], fields[2]))
  if not trials:
    raise DataError(f"--trials {path}: no trials")
  return trials


def make_trials(root, out_path, n_target: int, n_nontarget: int, seed: int = 0) -> dict:
  """Write a balanced trial list from a speaker-folder corpus; returns the counts written.

  Target pairs go round-robin over the speakers (each contributes equally), non-target pairs join two
  different random speakers; no pair is repeated. Fewer pairs are written when the corpus has fewer.
  """
  utterances, names = speakers.list_utterances(root)
  by_speaker = [[u.relpath for u in utterances if u.label == s] for s in range(len(names))]
  rng = np.random.default_rng(seed)
  lines, seen = [], set()

  def add(label, a, b):
    key = (a, b) if a < b else (b, a)
    if a == b or key in seen:
      return False
    seen.add(key)
    lines.append(f"{label} {a} {b}")
    return True

  eligible = [files for files in by_speaker if len(files) >= 2]
  max_target = sum(len(f) * (len(f) - 1) // 2 for f in eligible)
  n_target, written = min(int(n_target), max_target), 0
  attempts = 0
  while written < n_target and attempts < 50 * max(n_target, 1):
    files = eligible[attempts % len(eligible)]
    a, b = rng.choice(len(files), 2, replace=False)
    written += add(1, files[a], files[b])
    attempts += 1
  n_targets = written
  counts = np.array([len(f) for f in by_speaker])
  max_nontarget = int((counts.sum() ** 2 - np.sum(counts**2)) // 2)
  n_nontarget, written, attempts = min(int(n_nontarget), max_nontarget), 0, 0
  while written < n_nontarget and attempts < 50 * max(n_nontarget, 1) and len(by_speaker) > 1:
    s, t = rng.choice(len(by_speaker), 2, replace=False)
    written += add(0, by_speaker[s][rng.integers(len(by_speaker[s]))], by_speaker[t][rng.integers(len(by_speaker[t]))])
    attempts += 1
  if n_targets == 0 or written == 0:
    raise DataError(f"{root}: cannot make both target and non-target trials (needs 2 speakers, one with 2 files)")
  order = rng.permutation(len(lines))
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_text("".join(lines[i] + "\n" for i in order))
  return {"n_target": n_targets, "n_nontarget": written, "path": str(out_path)}


def cosine_scores(embeddings: np.ndarray, index: dict, trials, dims, mean: np.ndarray | None = None) -> dict:
  """{dim: scores [n_trials]}: cosine of L2-normalised prefixes (after subtracting `mean`, if given)."""
  x = np.asarray(embeddings, np.float64)
  if mean is not None:
    x = x - mean
  enroll = np.array([index[e] for _, e, _ in trials])
  test = np.array([index[t] for _, _, t in trials])
  scores = {}
  for dim in dims:
    prefix = x[:, :dim] / np.maximum(np.linalg.norm(x[:, :dim], axis=1, keepdims=True), 1e-12)
    scores[int(dim)] = np.sum(prefix[enroll] * prefix[test], axis=1)
  return scores


def _mean_embedding(mean: str, embeddings, embedder, resample, seed, cohort_size):
  if mean in ("", "none", None):
    return None
  if mean == "trials":
    return embeddings.mean(axis=0)
  files = list_audio(mean)
  rng = np.random.default_rng(seed)
  if len(files) > cohort_size:
    files = [files[i] for i in sorted(rng.choice(len(files), cohort_size, replace=False))]
  return embed_files(embedder, [pathlib.Path(mean) / f for f in files], resample=resample).mean(axis=0)


def evaluate(workdir, trials=None, *, data_root=None, out_dir=None, make_trials_n: int | None = None,
             mean: str | None = None, seed: int = 0, verbose: bool = True, **embed_overrides) -> dict:
  """Score a trial list with the trained model in `workdir`: table printed, results.json, scores.txt and
  det.png (one curve per nested dim) written to `out_dir` (default <workdir>/verification).

  With `make_trials_n`, first writes N target + N non-target trials from `data_root` (to `trials`, or
  <out_dir>/trials.txt). `embed_overrides`: batch_size, bucket_ratio, max_seconds.
  """
  workdir = pathlib.Path(workdir)
  config, model, variables, step = load_trained(workdir)
  data_root = pathlib.Path(data_root or config.data_root)
  out_dir = pathlib.Path(out_dir or workdir / "verification")
  out_dir.mkdir(parents=True, exist_ok=True)
  if make_trials_n:
    trials = trials or out_dir / "trials.txt"
    made = make_trials(data_root, trials, make_trials_n, make_trials_n, seed)
    if verbose:
      print(f"[vqax] wrote {made['n_target']} target + {made['n_nontarget']} non-target trials to {trials}")
  if trials is None:
    raise DataError("no trial list: give --trials FILE (or --make_trials N to write one)")
  trial_list = read_trials(trials)
  files = sorted({f for _, e, t in trial_list for f in (e, t)})
  for f in files:
    if not (data_root / f).is_file():
      raise DataError(f"{trials}: trial file {f} not found under --data_root {data_root}")
  embedder = embedder_for(config, model, variables, **embed_overrides)
  resample = bool(config.get("resample", False))
  embeddings = embed_files(embedder, [data_root / f for f in files], resample=resample)
  mean = config.eval.mean if mean is None else mean
  mean_vector = _mean_embedding(mean, embeddings, embedder, resample, seed, int(config.eval.cohort_size))
  dims = tuple(int(d) for d in config.mrl_dims)
  scores = cosine_scores(embeddings, {f: i for i, f in enumerate(files)}, trial_list, dims, mean_vector)
  labels = np.array([label for label, _, _ in trial_list])
  report = metrics.verification_report(scores, labels)
  plots.plot_det({f"dim {d}": (scores[d], labels) for d in dims}, out_dir / "det.png",
                 title=f"DET, step {step} ({len(trial_list)} trials)")
  with open(out_dir / "scores.txt", "w") as f:
    f.write("# label enroll test " + " ".join(f"score_{d}" for d in dims) + "\n")
    for i, (label, e, t) in enumerate(trial_list):
      f.write(f"{label} {e} {t} " + " ".join(f"{scores[d][i]:.6f}" for d in dims) + "\n")
  result = {"workdir": str(workdir), "checkpoint_step": step, "trials": str(trials), "data_root": str(data_root),
            "mean": mean, "n_files": len(files), "report": report, "out_dir": str(out_dir)}
  (out_dir / "results.json").write_text(json.dumps(result, indent=1))
  if verbose:
    print(f"\nSpeaker verification, step {step}: {report['n_target']} target / {report['n_nontarget']} "
          f"non-target trials, mean subtraction: {mean}")
    print(metrics.format_verification_table(report))
    print(f"\nwrote {out_dir}/results.json, scores.txt and det.png")
  return result


def embed_folder(workdir, data_root, out_path, verbose: bool = True, **embed_overrides) -> dict:
  """Embeddings of every audio file under `data_root` -> `out_path` (.npy [N, D]) and the file list
  (`<out>.files.txt`, one relative path per line, same order)."""
  config, model, variables, step = load_trained(workdir)
  files = list_audio(data_root)
  embedder = embedder_for(config, model, variables, **embed_overrides)
  embeddings = embed_files(embedder, [pathlib.Path(data_root) / f for f in files],
                           resample=bool(config.get("resample", False)))
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  np.save(out_path, embeddings.astype(np.float32))
  list_path = out_path.with_suffix(".files.txt")
  list_path.write_text("".join(f + "\n" for f in files))
  if verbose:
    print(f"[vqax] {len(files)} embeddings ({embeddings.shape[1]}-d, step {step}) -> {out_path}; files: {list_path}")
  return {"embeddings": str(out_path), "files": str(list_path), "n_files": len(files), "step": step}
