"""Throughput of the VQ-VAE's host-side loader, against what the train step consumes.

  python -m tools.bench_data                       # table + docs/bench_data.json
  python -m tools.bench_data --clips 64 --batches 40 --workers 0,1,2

Writes a synthetic DCASE set (`vqax synth dcase`, fan, 10 s clips) to a temporary folder, then for each
source and grain worker count runs the trainer's own loader (`vqax.data.dcase_loader.train_loader`, batch
16 x 16 patches by default) and reports patches/s after the first batch, and the host RSS of the loader
process and its workers (psutil), sampled after every batch over the run (at least one epoch):
  wav    each clip decoded and turned into log-mel features on every read (no cache);
  npy    features read from the `.npy` cache (`feature_cache_dir`, filled by a first pass).
The step's appetite is the fastest vqax row of tools/bench_train.py's JSON (`--step_json`) when present, else
`--step_patches_per_s`; the ratio column says how many times over the loader could feed it.
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import psutil

REPO = pathlib.Path(__file__).resolve().parents[1]
MiB = 2**20


def rss_with_children() -> int:
  process = psutil.Process(os.getpid())
  total = process.memory_info().rss
  for child in process.children(recursive=True):
    try:
      total += child.memory_info().rss
    except psutil.NoSuchProcess:
      pass
  return total


def step_appetite(path: pathlib.Path, case: str) -> float | None:
  """Patches/s of the fastest vqax train step at this batch, from tools/bench_train.py's JSON.

  The fastest runner, because that is the step the loader must keep up with (`vqax` itself runs with
  huge pages).
  """
  if not path.is_file():
    return None
  for result in json.loads(path.read_text())["results"]:
    if result["case"] == case:
      rates = [row["samples_per_s"] for row in result["rows"]
               if row["runner"].startswith("vqax") and row["runner"] != "vqax plain" and "samples_per_s" in row]
      return max(rates) if rates else None
  return None


def measure(records, norm_stats, *, cache_dir, workers: int, batch_size: int, n_patches: int, batches: int) -> dict:
  from vqax.data import dcase_loader
  loader = dcase_loader.train_loader(records, norm_stats, batch_size=batch_size, n_patches=n_patches, stride=32,
                                     seed=0, worker_count=workers, cache_dir=cache_dir)
  iterator = iter(loader)
  start = time.perf_counter()
  next(iterator)  # worker start-up and the first reads
  first_s = time.perf_counter() - start
  rss, times = [rss_with_children()], []
  for _ in range(batches):
    start = time.perf_counter()
    batch = next(iterator)
    times.append(time.perf_counter() - start)
    rss.append(rss_with_children())
  assert batch["patches"].shape == (batch_size, n_patches, 64, 64, 1), batch["patches"].shape
  del iterator, loader
  total = sum(times)
  return {"first_batch_s": first_s, "patches_per_s": batches * batch_size * n_patches / total,
          "batch_ms_median": 1000 * statistics.median(times), "rss_start_mib": rss[0] / MiB,
          "rss_peak_mib": max(rss) / MiB, "rss_end_mib": rss[-1] / MiB}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--clips", type=int, default=48, help="training clips in the synthetic set")
  parser.add_argument("--batches", type=int, default=0, help="timed batches per row (0: two epochs)")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--n_patches", type=int, default=16)
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--step_json", default=str(REPO / "docs" / "bench_train.json"))
  parser.add_argument("--step_patches_per_s", type=float, default=0.0,
                      help="the step's consumption when --step_json has no vqax row for this batch")
  parser.add_argument("--json", default=str(REPO / "docs" / "bench_data.json"))
  args = parser.parse_args(argv)
  from vqax.audio.features import LogMelConfig
  from vqax.data import dcase
  from vqax.data.synth_dcase import generate_dcase

  with tempfile.TemporaryDirectory(prefix="vqax-bench-data-") as tmp:
    root, cache = pathlib.Path(tmp) / "dcase", pathlib.Path(tmp) / "cache"
    print(f"writing {args.clips} synthetic clips ...", flush=True)
    generate_dcase(root, seed=0, machine_types=("fan",), machine_ids=(0,), n_train=args.clips, n_test_normal=1,
                   n_test_anomaly=1)
    records = dcase.list_clips(root, ["fan"], "train")
    features = [dcase.load_features(r, LogMelConfig(), str(cache)) for r in records]  # fills the cache
    dcase.save_norm_stats(pathlib.Path(tmp) / "norm_stats.json", dcase.compute_norm_stats({"fan": features}))
    norm_stats = dcase.load_norm_stats(pathlib.Path(tmp) / "norm_stats.json")
    del features
    per_epoch = max(1, len(records) // args.batch_size)
    batches = args.batches or 2 * per_epoch
    rows = []
    for source, cache_dir in (("wav", None), ("npy", str(cache))):
      for workers in (int(w) for w in args.workers.split(",")):
        row = {"source": source, "workers": workers,
               **measure(records, norm_stats, cache_dir=cache_dir, workers=workers, batch_size=args.batch_size,
                         n_patches=args.n_patches, batches=batches)}
        rows.append(row)
        print(f"  {source} workers={workers}: {row['patches_per_s']:.0f} patches/s", flush=True)

  case = f"vqvae_{args.batch_size}x{args.n_patches}"
  appetite = step_appetite(pathlib.Path(args.step_json), case) or args.step_patches_per_s or None
  for row in rows:
    row["x_step"] = row["patches_per_s"] / appetite if appetite else None
  cpu = f"{os.cpu_count()} cores"
  print(f"\nLoader, batch {args.batch_size} x {args.n_patches} patches, {len(records)} clips of 10 s, {batches} batches "
        f"({batches / per_epoch:.1f} epochs) per row, {cpu}; the vqax step consumes "
        f"{f'{appetite:.0f} patches/s' if appetite else 'unknown (run tools/bench_train.py)'}.")
  print("| source | workers | patches/s | x step | first batch (s) | RSS start / peak / end (MiB) |")
  print("|---|---:|---:|---:|---:|---|")
  for r in rows:
    ratio = f"{r['x_step']:.1f}x" if r["x_step"] else "-"
    print(f"| {r['source']} | {r['workers']} | {r['patches_per_s']:.0f} | {ratio} | {r['first_batch_s']:.2f} | "
          f"{r['rss_start_mib']:.0f} / {r['rss_peak_mib']:.0f} / {r['rss_end_mib']:.0f} |")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps({"batch_size": args.batch_size, "n_patches": args.n_patches,
                                                   "clips": len(records), "batches": batches,
                                                   "step_patches_per_s": appetite, "rows": rows}, indent=1))
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
