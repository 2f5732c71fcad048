"""Compiled memory of the VQ-VAE train step per variant: a Markdown table and JSON for the README.

  python -m tools.bench_memory [--out docs/memory_table.md] [--json docs/memory_table.json]

Everything is compiled ahead of time from shapes on the default JAX backend (nothing runs, no data): the
seeds' reference size (16 clips x 16 patches per device) and tight size (1 clip x 4..8 patches) for every
variant, and the largest per-device batch_size within 4, 8, 16 and 24 GiB for each (at 16 patches).
Run it on the machine whose numbers you want: XLA:CPU, GPU and TPU compile to different peaks.
"""
import argparse
import json
import pathlib
import sys
import time

import jax

REPO = pathlib.Path(__file__).resolve().parents[1]

from vqax import config_loading  # noqa: E402
from vqax.planning import planner  # noqa: E402

REFERENCE = {"batch_size": 16, "n_patches": 16}
TIGHT = [{"batch_size": 1, "n_patches": n} for n in (4, 6, 8)]
BUDGETS_GIB = (4, 8, 16, 24)


def sized(config, sizes):
  return planner.with_flags(config, [t for k, v in sizes.items() for t in (f"--{k}", str(v))])


def bench(config_spec: str) -> dict:
  base = config_loading.load_config(config_spec)
  start = time.perf_counter()
  sizes = {}
  for size in [REFERENCE] + TIGHT:
    plans = planner.plan_variants(sized(base, size), planner.VARIANTS, include_config=False)
    sizes[f"{size['batch_size']}x{size['n_patches']}"] = plans
    print(f"{size}: " + ", ".join(f"{n} {planner.format_bytes(p.peak)}" for n, p in plans.items()), flush=True)
  reference = sized(base, REFERENCE)
  fits = {}
  for name in planner.VARIANTS:
    flags = planner.variant_flags(reference, name)
    results = planner.fit_budgets(planner.with_flags(reference, flags), [b * planner.GiB for b in BUDGETS_GIB],
                                  variant=name, flags=flags, known=sizes["16x16"][name])
    fits[name] = {f"{b}GiB": {"batch_size": f.size, "peak": f.plan and f.plan.peak,
                              "next_peak": f.next_plan and f.next_plan.peak, "compiles": f.compiles}
                  for b, f in zip(BUDGETS_GIB, results)}
    print(f"fits {name}: " + ", ".join(f"{k} -> {v['batch_size']}" for k, v in fits[name].items()), flush=True)
  ref = sizes["16x16"]
  return {"config": config_spec, "jax": jax.__version__, "device": ref["plain"].device,
          "n_devices": ref["plain"].n_devices, "platform": jax.devices()[0].platform,
          "sizes": {key: {name: p.to_dict() for name, p in plans.items()} for key, plans in sizes.items()},
          "fits": fits, "memory_saver_over_plain": ref["bf16+remat"].peak / ref["plain"].peak,
          "seconds": round(time.perf_counter() - start, 1)}


def mib(n):
  return "-" if n is None else f"{n / 2**20:,.1f}"


def markdown(result: dict) -> str:
  variants = list(planner.VARIANTS)
  ref = result["sizes"]["16x16"]
  lines = [
      f"Compiled peak per device of the VQ-VAE train step (MiB; argument + output + temp - alias from "
      f"`vqax plan`, compiled ahead of time for {result['n_devices']} x {result['device']}, JAX {result['jax']}).",
      "Variants: plain = float32; bf16 = `--use_amp`; remat = `--use_gradient_checkpointing`; "
      "bf16+remat = `--memory_saver`; accumulation = the same effective batch in 4 micro-steps.",
      "",
      "| batch x patches | " + " | ".join(variants) + " |",
      "|---|" + "---:|" * len(variants),
  ]
  for key, plans in result["sizes"].items():
    cells = []
    for v in variants:
      p = plans[v]
      note = f" ({p['batch_size']}x{p['accumulation_steps']})" if v == "accumulation" else ""
      cells.append(mib(p["peak"]) + note)
    lines.append(f"| {key.replace('x', ' x ')} | " + " | ".join(cells) + " |")
  ratio = result["memory_saver_over_plain"]
  lines += [
      "",
      f"At the reference size `--memory_saver` needs {ratio:.0%} of plain's peak ({1 - ratio:.0%} lower); "
      f"temporaries (activations) are {mib(ref['plain']['temp'])} MiB plain and "
      f"{mib(ref['bf16+remat']['temp'])} MiB with `--memory_saver`.",
      "",
      "Largest per-device `--batch_size` (16 patches per clip) whose compiled peak fits the budget "
      "(for accumulation: the micro-batch):",
      "",
      "| budget | " + " | ".join(variants) + " |",
      "|---|" + "---:|" * len(variants),
  ]
  for b in BUDGETS_GIB:
    lines.append(f"| {b} GiB | " + " | ".join(str(result["fits"][v][f"{b}GiB"]["batch_size"] or "none")
                                             for v in variants) + " |")
  if result["platform"] == "cpu":
    lines += ["", "XLA:CPU computes bfloat16 convolutions in float32 and keeps their float32 outputs, so bf16 "
              "alone saves little here; backends that convolve in bfloat16 (GPU, TPU) store those activations "
              "in half the bytes: run `tools/bench_memory.py` there for their figures. Remat on the VQ-VAE runs "
              "the encoder and decoder over 4 groups of patches (`remat_groups`): its blocks are single "
              "convolutions, so per-block remat alone keeps every activation anyway."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=str(REPO / "configs" / "vqvae_dcase.py"))
  parser.add_argument("--out", default=str(REPO / "docs" / "memory_table.md"))
  parser.add_argument("--json", default=str(REPO / "docs" / "memory_table.json"))
  parser.add_argument("--from_json", default=None, help="rewrite the table from an earlier run's JSON")
  args = parser.parse_args(argv)
  result = json.loads(pathlib.Path(args.from_json).read_text()) if args.from_json else bench(args.config)
  table = markdown(result)
  for path, text in ((args.out, table), (args.json, json.dumps(result, indent=1))):
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(text)
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
