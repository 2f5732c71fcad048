"""Compiled memory of the train steps per variant: Markdown tables and JSON for the README.

  python -m tools.bench_memory [--target h100] [--tables vqvae,redimnet] [--out_dir docs] [--no_fits]

Everything is compiled ahead of time from shapes (nothing runs, no data), for the default JAX backend or,
with --target, for a `vqax plan --target` device: `cpu`, or a GPU that need not be here (`h100`, `h200`,
`a100-80g`; the [plan-gpu] extra). Each table writes docs/memory_table[_NAME][_TARGET].md and .json beside
the others, so the CPU and GPU figures sit side by side.

Tables (TABLES below; each is a function of the target returning a JSON-able dict, and one writing Markdown):
  vqvae     the seeds' reference size (16 clips x 16 patches per device) and tight sizes (1 clip x 4..8
            patches) for every variant, and the largest per-device batch_size within 4, 8, 16 and 24 GiB
            (and the target's usable memory) for each, at 16 patches
  redimnet  ReDimNet b0 and b2 at 32, 64 and 128 crops of 2 s per device, plain / bf16 / remat / bf16+remat
XLA:CPU, GPU and TPU compile to different peaks: the target decides which figures these are.
"""
import argparse
import dataclasses
import json
import pathlib
import sys
import time
from typing import Callable

import jax

REPO = pathlib.Path(__file__).resolve().parents[1]

from vqax import config_loading  # noqa: E402
from vqax.planning import planner, targets  # noqa: E402

REFERENCE = {"batch_size": 16, "n_patches": 16}
TIGHT = [{"batch_size": 1, "n_patches": n} for n in (4, 6, 8)]
BUDGETS_GIB = (4, 8, 16, 24)


def sized(config, sizes):
  return planner.with_flags(config, [t for k, v in sizes.items() for t in (f"--{k}", str(v))])


def _devices(target):
  return target.devices() if target is not None else None


def _budgets_gib(target) -> list[float]:
  """The fixed budgets, and the target's usable memory where it is larger."""
  budgets = list(BUDGETS_GIB)
  if target is not None and target.platform == "gpu" and target.usable_bytes / planner.GiB > budgets[-1]:
    budgets.append(round(target.usable_bytes / planner.GiB, 2))
  return budgets


def _target_info(target) -> dict | None:
  if target is None:
    return None
  return {"name": target.name, "device_kind": target.device_kind, "memory_bytes": target.memory_bytes,
          "usable_bytes": target.usable_bytes, "platform": target.platform}


def vqvae_bench(target, config_spec: str = str(REPO / "configs" / "vqvae_dcase.py"), fits: bool = True) -> dict:
  base = config_loading.load_config(config_spec)
  devices = _devices(target)
  start = time.perf_counter()
  sizes = {}
  for size in [REFERENCE] + TIGHT:
    plans = planner.plan_variants(sized(base, size), planner.VARIANTS, include_config=False, devices=devices)
    sizes[f"{size['batch_size']}x{size['n_patches']}"] = plans
    print(f"{size}: " + ", ".join(f"{n} {planner.format_bytes(p.peak)}" for n, p in plans.items()), flush=True)
  reference = sized(base, REFERENCE)
  budgets = _budgets_gib(target) if fits else []
  found = {}
  for name in planner.VARIANTS if budgets else ():
    flags = planner.variant_flags(reference, name)
    results = planner.fit_budgets(planner.with_flags(reference, flags), [int(b * planner.GiB) for b in budgets],
                                  variant=name, flags=flags, known=sizes["16x16"][name], devices=devices)
    found[name] = {f"{b}GiB": {"batch_size": f.size, "peak": f.plan and f.plan.peak,
                               "next_peak": f.next_plan and f.next_plan.peak, "compiles": f.compiles}
                   for b, f in zip(budgets, results)}
    print(f"fits {name}: " + ", ".join(f"{k} -> {v['batch_size']}" for k, v in found[name].items()), flush=True)
  ref = sizes["16x16"]
  return {"table": "vqvae", "config": config_spec, "jax": jax.__version__, "device": ref["plain"].device,
          "n_devices": ref["plain"].n_devices, "platform": ref["plain"].device.split(" ")[0],
          "target": _target_info(target), "budgets_gib": budgets,
          "sizes": {key: {name: p.to_dict() for name, p in plans.items()} for key, plans in sizes.items()},
          "fits": found, "memory_saver_over_plain": ref["bf16+remat"].peak / ref["plain"].peak,
          "seconds": round(time.perf_counter() - start, 1)}


def mib(n):
  return "-" if n is None else f"{n / 2**20:,.1f}"


def vqvae_markdown(result: dict) -> str:
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
  ]
  budgets = result.get("budgets_gib", BUDGETS_GIB) if result.get("fits") else []
  if budgets:
    lines += [
        "",
        "Largest per-device `--batch_size` (16 patches per clip) whose compiled peak fits the budget "
        "(for accumulation: the micro-batch):",
        "",
        "| budget | " + " | ".join(variants) + " |",
        "|---|" + "---:|" * len(variants),
    ]
  for b in budgets:
    lines.append(f"| {b} GiB | " + " | ".join(str(result["fits"][v][f"{b}GiB"]["batch_size"] or "none")
                                             for v in variants) + " |")
  lines += _target_notes(result)
  if result["platform"] == "cpu":
    lines += ["", "XLA:CPU computes bfloat16 convolutions in float32 and keeps their float32 outputs, so bf16 "
              "alone saves little here; backends that convolve in bfloat16 (GPU, TPU) store those activations "
              "in half the bytes: `python -m tools.bench_memory --target h100` compiles for one without it. Remat on the VQ-VAE runs "
              "the encoder and decoder over 4 groups of patches (`remat_groups`): its blocks are single "
              "convolutions, so per-block remat alone keeps every activation anyway."]
  return "\n".join(lines) + "\n"


REDIMNET_SIZES = ("b0", "b2")
REDIMNET_BATCHES = (32, 64, 128)  # crops of 2 s per device
REDIMNET_VARIANTS = ("plain", "bf16", "remat", "bf16+remat")


def redimnet_bench(target, config_spec: str = str(REPO / "configs" / "redimnet_mrl.py"), fits: bool = True,
                   sizes=REDIMNET_SIZES, batches=REDIMNET_BATCHES, variants=REDIMNET_VARIANTS) -> dict:
  """ReDimNet (5,994 classes, 2 s crops) per model size and batch: compiled peak of each variant."""
  del fits  # no budget search: the batch grid spans the seeds' range
  base = config_loading.load_config(config_spec)
  devices = _devices(target)
  start = time.perf_counter()
  table, device, n_devices = {}, None, None
  for size in sizes:
    for batch in batches:
      config = planner.with_flags(base, [f"--config.model.size={size}", "--batch_size", str(batch)])
      plans = planner.plan_variants(config, variants, include_config=False, devices=devices)
      table[f"{size} x {batch}"] = {name: p.to_dict() for name, p in plans.items()}
      device, n_devices = plans[variants[0]].device, plans[variants[0]].n_devices
      print(f"{size} x {batch}: " + ", ".join(f"{n} {planner.format_bytes(p.peak)}" for n, p in plans.items()),
            flush=True)
  return {"table": "redimnet", "config": config_spec, "jax": jax.__version__, "device": device,
          "n_devices": n_devices, "platform": device.split(" ")[0], "target": _target_info(target),
          "segment_seconds": float(base.segment_seconds), "variants": list(variants), "sizes": table,
          "seconds": round(time.perf_counter() - start, 1)}


def redimnet_markdown(result: dict) -> str:
  variants = result["variants"]
  lines = [
      f"Compiled peak per device of the ReDimNet-MRL train step (MiB; {result['segment_seconds']:g} s crops, "
      f"5,994 classes, phase 'full'; compiled ahead of time for {result['n_devices']} x {result['device']}, "
      f"JAX {result['jax']}).",
      "",
      "| model x batch | " + " | ".join(variants) + " |",
      "|---|" + "---:|" * len(variants),
  ]
  for key, plans in result["sizes"].items():
    lines.append(f"| {key} | " + " | ".join(mib(plans[v]["peak"]) for v in variants) + " |")
  return "\n".join(lines + _target_notes(result)) + "\n"


def _target_notes(result: dict) -> list[str]:
  target = result.get("target")
  if not target or target["platform"] != "gpu":
    return []
  return ["", f"Device memory {planner.format_bytes(target['memory_bytes'])}, of which JAX's allocator uses "
          f"{planner.format_bytes(target['usable_bytes'])} by default. {targets.GPU_CAVEATS}"]


@dataclasses.dataclass(frozen=True)
class Table:
  """One memory table: `bench(target, fits=...)` -> JSON-able dict, `markdown(dict)` -> text.

  `file` names its outputs: docs/memory_table{file}{_target}.md and .json.
  """
  name: str
  file: str
  bench: Callable[..., dict]
  markdown: Callable[[dict], str]


def dreams_bench(target, fits: bool = True) -> dict:
  from tools import bench_memory_dreams
  return bench_memory_dreams.dreams_memory(budgets_gib=bench_memory_dreams.BUDGETS_GIB if fits else (),
                                           devices=_devices(target))


def vit_gan_bench(target, fits: bool = True) -> dict:
  from tools import bench_vit_gan_memory
  return bench_vit_gan_memory.seed_table(devices=_devices(target))


def _dreams_markdown(result: dict) -> str:
  from tools import bench_memory_dreams
  return bench_memory_dreams.markdown(result)


def _vit_gan_markdown(result: dict) -> str:
  from tools import bench_vit_gan_memory
  return bench_vit_gan_memory.format_table(result)


TABLES = [Table("vqvae", "", vqvae_bench, vqvae_markdown),
          Table("redimnet", "_redimnet", redimnet_bench, redimnet_markdown),
          Table("dreams", "_dreams", dreams_bench, _dreams_markdown),
          Table("vit_gan", "_vit_gan", vit_gan_bench, _vit_gan_markdown)]


def output_paths(table: Table, target_name: str | None, out_dir: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  suffix = "" if target_name in (None, "") else "_" + target_name.replace(":", "_").replace("-", "_")
  stem = f"memory_table{table.file}{suffix}"
  return out_dir / f"{stem}.md", out_dir / f"{stem}.json"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--target", default=None,
                      help="compile for this `vqax plan --target` (cpu, h100, h200, a100-80g, ...); default: "
                           "this machine's default backend, written without a suffix")
  parser.add_argument("--tables", default=",".join(t.name for t in TABLES),
                      help=f"comma list of {', '.join(t.name for t in TABLES)}")
  parser.add_argument("--out_dir", default=str(REPO / "docs"))
  parser.add_argument("--no_fits", action="store_true", help="skip the budget searches (many compiles)")
  parser.add_argument("--from_json", default=None, help="rewrite one table's Markdown from an earlier run's JSON")
  args = parser.parse_args(argv)
  by_name = {t.name: t for t in TABLES}
  if args.from_json:
    result = json.loads(pathlib.Path(args.from_json).read_text())
    table = by_name[result.get("table", "vqvae")]
    text = table.markdown(result)
    pathlib.Path(args.from_json).with_suffix(".md").write_text(text)
    print(text)
    return 0
  chosen = [by_name[n] for n in args.tables.split(",") if n]
  if args.target:
    targets.use_cpu_backend_on_cpu_hosts()  # before JAX starts a backend
  target = targets.parse(args.target) if args.target else None
  for table in chosen:
    result = table.bench(target, fits=not args.no_fits)
    text = table.markdown(result)
    md, js = output_paths(table, args.target, pathlib.Path(args.out_dir))
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    js.write_text(json.dumps(result, indent=1))
    print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
