"""Compiled memory of the full DreaMS train step (116 M parameters, configs/dreams.py): a table and JSON.

  python -m tools.bench_memory_dreams [--json docs/memory_dreams.json] [--sizes 256x60,2x100] [--no_fit]

Compiled ahead of time from shapes by the planner (`vqax.planning.planner.plan`, the step `vqax train` runs;
nothing runs, no data) on the default JAX backend, at the official pre-training batch (256 pairs x 61 tokens
per device) and the seed's (2 x 101), in forms of the same function:
  materialized   the official step: float32, no remat, the [B, N, N, d_fourier] tensor of Fourier
                 differences built and summed (`graphormer_bias=materialized`), as pluskal-lab/DreaMS does;
  plain          float32, no remat, the Graphormer m/z bias split into a per-key term (never built);
  default        the config as it is: float32, split bias, every encoder layer rematerialised ("full");
  dots_remat     float32, split bias, remat that keeps the matmul outputs (`dots_no_batch`);
  memory_saver   bfloat16 compute + per-encoder-layer remat (`--memory_saver`);
then the largest per-device batch within each budget (8, 16, 24, 80 GiB) at 61 tokens for the forms in
`fit_forms` (default and materialized: every probe of a large batch is a full compile) with
`planner.fit_budgets`. A pair is two spectra, so batch B runs the encoder over 2 B spectra.
`dreams_memory(...)` returns the rows; tools/bench_memory.py can print them beside its own tables.
"""
import argparse
import json
import pathlib
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
GiB = 2**30
SIZES = ((256, 60), (2, 100))  # (pairs per device, max_peaks_n): official pre-training, the seed's
BUDGETS_GIB = (8, 16, 24, 80)
FORMS = {
    "materialized": ["--config.model.graphormer_bias=materialized", "--config.remat_policy=none"],
    "plain": ["--config.remat_policy=none"],
    "default": [],
    "dots_remat": ["--config.remat_policy=dots_no_batch"],
    "memory_saver": ["--memory_saver"],
}
FIT_FORMS = ("default", "materialized")


def base_config(config_spec: str | None = None):
  from vqax import config_loading
  return config_loading.load_config(config_spec or str(REPO / "configs" / "dreams.py"))


def dreams_memory(config_spec: str | None = None, sizes=SIZES, forms=tuple(FORMS), budgets_gib=BUDGETS_GIB,
                  fit_forms=FIT_FORMS, fit_peaks: int = 60, verbose: bool = True, devices=None) -> dict:
  """{'rows': one per (size, form), 'fits': one per (form, budget), 'reduction_vs_materialized': ...}."""
  from vqax.planning import planner
  base = base_config(config_spec)
  rows, plans = [], {}
  for batch, peaks in sizes:
    for form in forms:
      flags = FORMS[form] + ["--batch_size", str(batch), "--max_peaks_n", str(peaks)]
      start = time.perf_counter()
      p = planner.plan(planner.with_flags(base, flags), form, flags, devices=devices)
      seconds = time.perf_counter() - start
      plans[(batch, peaks, form)] = p
      rows.append({"batch_size": batch, "tokens": peaks + 1, "form": form, "flags": " ".join(flags),
                   "compute_dtype": p.compute_dtype, "remat_policy": p.remat_policy, "params": p.params,
                   "optimizer_state": p.optimizer_state, "temp": p.temp, "peak": p.peak, "device": p.device,
                   "compile_s": round(seconds, 1)})
      if verbose:
        print(f"  {batch} x {peaks + 1} {form}: peak {planner.format_bytes(p.peak)} ({seconds:.0f} s)", flush=True)
  reductions = {}
  for batch, peaks in sizes:
    materialized = plans.get((batch, peaks, "materialized"))
    for form in forms:
      if materialized is not None and form != "materialized":
        reductions[f"{batch}x{peaks + 1} {form}"] = 1 - plans[(batch, peaks, form)].peak / materialized.peak
  fits = []
  for form in fit_forms:
    flags = FORMS[form] + ["--max_peaks_n", str(fit_peaks)]
    config = planner.with_flags(base, flags)
    known = next((p for (b, n, f), p in plans.items() if f == form and n == fit_peaks), None)
    start = time.perf_counter()
    if known is not None:  # the search starts from the size already compiled
      config = planner.with_flags(config, ["--batch_size", str(known.batch_size)])
    found = planner.fit_budgets(config, [int(g * GiB) for g in budgets_gib], field="batch_size", variant=form,
                                devices=devices,
                                flags=flags, known=known)
    for budget, f in zip(budgets_gib, found):
      fits.append({"form": form, "tokens": fit_peaks + 1, "budget_gib": budget, "batch_size": f.size,
                   "peak": f.plan.peak if f.plan else None, "next_peak": f.next_plan.peak if f.next_plan else None,
                   "compiles": f.compiles})
    if verbose:
      print(f"  fits {form}: " + ", ".join(f"{g} GiB -> {f.size}" for g, f in zip(budgets_gib, found))
            + f" ({time.perf_counter() - start:.0f} s)", flush=True)
  return {"config": config_spec or "configs/dreams.py", "rows": rows, "fits": fits,
          "reduction_vs_materialized": reductions}


def gib(n):
  return "-" if n is None else f"{n / GiB:.2f}"


def markdown(result: dict) -> str:
  lines = ["| pairs x tokens | form | compute, remat | temporaries (GiB) | compiled peak (GiB) | vs materialized |",
           "|---|---|---|---:|---:|---:|"]
  for r in result["rows"]:
    key = f"{r['batch_size']}x{r['tokens']} {r['form']}"
    vs = result["reduction_vs_materialized"].get(key)
    lines.append(f"| {r['batch_size']} x {r['tokens']} | {r['form']} | {r['compute_dtype']}, {r['remat_policy']} | "
                 f"{gib(r['temp'])} | {gib(r['peak'])} | {'-' if vs is None else f'-{100 * vs:.0f}%'} |")
  if result["fits"]:
    budgets = sorted({f["budget_gib"] for f in result["fits"]})
    tokens = result["fits"][0]["tokens"]
    lines += ["", f"| largest pairs per device ({tokens} tokens) | " + " | ".join(f"{b} GiB" for b in budgets) + " |",
              "|---|" + "---:|" * len(budgets)]
    for form in dict.fromkeys(f["form"] for f in result["fits"]):
      sizes = {f["budget_gib"]: f["batch_size"] for f in result["fits"] if f["form"] == form}
      lines.append(f"| {form} | " + " | ".join("none" if sizes[b] is None else str(sizes[b]) for b in budgets) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default=None, help="default: configs/dreams.py (the full model)")
  parser.add_argument("--sizes", default=",".join(f"{b}x{n}" for b, n in SIZES),
                      help="comma list of PAIRSxMAX_PEAKS_N (tokens = max_peaks_n + 1)")
  parser.add_argument("--forms", default=",".join(FORMS), help=f"some of {', '.join(FORMS)}")
  parser.add_argument("--budgets", default=",".join(map(str, BUDGETS_GIB)), help="GiB per device, comma list")
  parser.add_argument("--fit_forms", default=",".join(FIT_FORMS), help="forms whose largest batch per budget is "
                                                                          "searched ('' for none)")
  parser.add_argument("--json", default=str(REPO / "docs" / "memory_dreams.json"))
  args = parser.parse_args(argv)
  sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
  forms = [f for f in args.forms.split(",") if f]
  fit_forms = [f for f in args.fit_forms.split(",") if f]
  unknown = [f for f in forms + fit_forms if f not in FORMS]
  if unknown:
    parser.error(f"--forms: unknown {', '.join(unknown)}; expected some of {', '.join(FORMS)}")
  import jax
  from tools.bench_train import machine
  start = time.perf_counter()
  result = dreams_memory(args.config, sizes, forms, tuple(int(b) if float(b).is_integer() else float(b) for b in args.budgets.split(",")),
                         fit_forms=fit_forms)
  result.update(machine=machine(with_torch=False), backend=jax.default_backend(), date=time.strftime("%Y-%m-%d"),
                seconds=round(time.perf_counter() - start))
  print(markdown(result))
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
