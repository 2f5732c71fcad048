"""The seed's GPU batch table re-derived from compiled figures: the largest GAN and ViT batch per device within
8, 12, 16 and 24 GiB, plain vs memory_saver, at the seed's shapes.

  python -m tools.bench_vit_gan_memory [--json docs/memory_vit_gan.json] [--budgets 8,12,16,24]

Shapes: the GAN at 128 mels x 1292 frames, 2 classes, n_critic 2 (configs/spectrogram_gan.py: both networks,
both Adam states, one jitted step); the ViT-B/16 at 224 x 224 x 3 from 128 x 1292 spectrograms (resize_rgb),
2 classes, in the schedule's last stage (every layer trainable: the run's peak) and in its first (head and
final norm only). Every figure is `vqax.planning.planner.fit_budgets` over the tasks' real train steps,
compiled ahead of time from shapes on the default backend (nothing runs). XLA:CPU, GPU and TPU compile to
different peaks: run it where you want numbers (`seed_table(devices=...)` takes a target's devices).
The seed (hand-tuned on GPUs): GAN/ViT 16/8 on 12 GiB, 24/12 on 16 GiB, 48/24 on 24 GiB.
"""
import argparse
import json
import pathlib
import time

import jax

from vqax import config_loading
from vqax.planning import planner

REPO = pathlib.Path(__file__).resolve().parents[1]
BUDGETS_GIB = (8, 12, 16, 24)
SEED_BATCHES = {"12GiB": (16, 8), "16GiB": (24, 12), "24GiB": (48, 24)}  # (GAN, ViT), from the seed notebook
MODELS = {  # name -> (label, config, flags)
    "gan": ("GAN 128x1292 (G + D, both Adam states)", f"{REPO}/configs/spectrogram_gan.py", []),
    "vit_all": ("ViT-B/16 224x224, all layers", f"{REPO}/configs/vit_classifier.py", []),
    "vit_head": ("ViT-B/16 224x224, head + final norm stage", f"{REPO}/configs/vit_classifier.py",
                 ["--config.last_stage=0"]),
}
VARIANTS = {"plain": [], "memory_saver": ["--memory_saver"]}


def seed_table(budgets_gib=BUDGETS_GIB, *, models=tuple(MODELS), devices=None, limit: int = 4096,
               verbose: bool = True) -> dict:
  """{model: {variant: {"<b>GiB": {batch_size, peak, next_peak, compiles}}, "plans": {variant: plan at the
  first fitted size}}} plus the backend; one budget search per model and variant, sharing compiles."""
  start = time.perf_counter()
  results = {"jax": jax.__version__, "budgets_gib": list(budgets_gib), "models": {}}
  for model in models:
    label, spec, model_flags = MODELS[model]
    base = planner.with_flags(config_loading.load_config(spec), model_flags)
    row = {}
    for variant, flags in VARIANTS.items():
      config = planner.with_flags(base, flags)
      fits = planner.fit_budgets(config, [b * planner.GiB for b in budgets_gib], variant=variant,
                                 flags=tuple(model_flags + flags), devices=devices, limit=limit)
      row[variant] = {f"{b}GiB": {"batch_size": f.size, "peak": f.plan and f.plan.peak,
                                  "next_peak": f.next_plan and f.next_plan.peak, "compiles": f.compiles}
                      for b, f in zip(budgets_gib, fits)}
      sample = next((f.plan for f in fits if f.plan is not None), None)
      if sample is not None:
        row.setdefault("plans", {})[variant] = sample.to_dict()
        results["device"] = sample.device
      if verbose:
        print(f"{label}, {variant}: " + ", ".join(f"{k} -> {v['batch_size']}" for k, v in row[variant].items()),
              flush=True)
    results["models"][model] = dict(row, label=label)
  results["seconds"] = round(time.perf_counter() - start, 1)
  return results


def format_table(results: dict) -> str:
  """Markdown: one row per model and variant, the largest batch per budget (the seed's beside it)."""
  budgets = [f"{b}GiB" for b in results["budgets_gib"]]
  lines = ["| model, step | variant | " + " | ".join(b.replace("GiB", " GiB") for b in budgets) + " |",
           "|---|---|" + "---|" * len(budgets)]
  for row in results["models"].values():
    for variant in VARIANTS:
      cells = [str(row[variant][b]["batch_size"] or 0) for b in budgets]
      lines.append(f"| {row['label']} | {variant} | " + " | ".join(cells) + " |")
  seed = [f"{SEED_BATCHES[b][0]} / {SEED_BATCHES[b][1]}" if b in SEED_BATCHES else "-" for b in budgets]
  lines.append("| seed notebook (GAN / ViT, by hand on GPUs) | | " + " | ".join(seed) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", default=str(REPO / "docs" / "memory_vit_gan.json"))
  parser.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS_GIB), help="GiB, comma list")
  parser.add_argument("--models", default=",".join(MODELS), help="comma list of: " + ", ".join(MODELS))
  args = parser.parse_args()
  budgets = tuple(int(b) for b in args.budgets.split(","))
  models = tuple(m for m in args.models.split(",") if m)
  unknown = [m for m in models if m not in MODELS]
  if unknown:
    parser.error(f"--models {','.join(unknown)}: expected some of {', '.join(MODELS)}")
  results = seed_table(budgets, models=models)
  results["platform"] = jax.devices()[0].platform
  print(f"\nLargest batch per device whose compiled peak fits ({results.get('device')}, jax {jax.__version__}):")
  print(format_table(results))
  pathlib.Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
  print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
