"""Step time and per-device memory of the data-parallel train step on 1..N devices, same global batch.

  python -m tools.bench_scaling --devices 1,2,4,8 --layouts replicated --json docs/scaling.json
  python -m tools.bench_scaling --devices 8 --layouts replicated,opt_state,params

Each device count runs in a fresh interpreter (on CPU with that many forced host devices: XLA fixes the
count at start-up). The step is the trainer's own (`make_trainer` + `compile_train_step`), compiled ahead
of time; batches are synthetic (`task.batch_spec`), so no data is read. Prints a table and, with --json,
writes the rows. Forced CPU devices share the host's cores: on CPU this measures the overhead of
partitioning, not a speed-up (see docs/scaling.md).
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
LAYOUTS = {"replicated": {}, "opt_state": {"shard_opt_state": True}, "params": {"shard_params": True}}
MiB = 2**20


def measure(config_spec: str, global_batch: int, steps: int, layout: str) -> dict:
  """One row, on every device of this process."""
  import jax
  import numpy as np
  from vqax import config_loading, tasks
  from vqax.train import sharding, trainer

  config = config_loading.load_config(config_spec)
  n = jax.device_count()
  if global_batch % n:
    raise SystemExit(f"global batch {global_batch} does not split over {n} devices")
  config.batch_size = global_batch // n
  config.phase1_epochs = 0  # time the full-loss phase: every parameter trains
  for key, value in LAYOUTS[layout].items():
    config[key] = value
  task = tasks.create(config)
  t = trainer.make_trainer(config, task, task.planning_info())
  spec = t.batch_spec()
  rng = np.random.default_rng(0)
  host_batch = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), spec)
  state = t.init_state()
  batch = sharding.global_batch(t.mesh, host_batch)
  start = time.perf_counter()
  step = t.compile_train_step(trainer.phase_at(t.phases, 0)).lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = step.memory_analysis()
  times = []
  for i in range(steps + 2):  # two warm-up steps
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    if i >= 2:
      times.append(time.perf_counter() - start)
  return {
      "devices": n, "layout": layout, "global_batch": global_batch, "per_device_batch": global_batch // n,
      "step_ms_median": 1e3 * statistics.median(times), "step_ms_min": 1e3 * min(times),
      "compile_s": compile_s, "platform": jax.devices()[0].platform,
      "per_device_argument_mib": memory.argument_size_in_bytes / MiB,
      "per_device_temp_mib": memory.temp_size_in_bytes / MiB,
      "per_device_peak_mib": (memory.argument_size_in_bytes + memory.output_size_in_bytes
                              + memory.temp_size_in_bytes - memory.alias_size_in_bytes) / MiB,
  }


def run_child(devices: int, args) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env.setdefault("JAX_PLATFORMS", "cpu")
  command = [sys.executable, __file__, "--child", "--config", args.config, "--global_batch", str(args.global_batch),
             "--steps", str(args.steps), "--layouts", args.layouts]
  proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
  if proc.returncode:
    raise SystemExit(f"{devices} device(s) failed:\n{proc.stderr[-3000:]}")
  return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def table(rows: list[dict]) -> str:
  base = {r["layout"]: r["step_ms_median"] for r in rows if r["devices"] == 1}
  lines = ["| devices | layout | per-device batch | step ms (median) | vs 1 device | compile s | "
           "per-device peak MiB | per-device arguments MiB |",
           "|---:|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    ratio = r["step_ms_median"] / base.get(r["layout"], base.get("replicated", r["step_ms_median"]))
    lines.append(f"| {r['devices']} | {r['layout']} | {r['per_device_batch']} | {r['step_ms_median']:.1f} | "
                 f"{ratio:.2f}x | {r['compile_s']:.1f} | {r['per_device_peak_mib']:.1f} | "
                 f"{r['per_device_argument_mib']:.2f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=str(REPO / "configs" / "vqvae_dcase.py") + ":demo")
  parser.add_argument("--devices", default="1,2,4,8", help="comma list of device counts")
  parser.add_argument("--layouts", default="replicated", help="comma list of replicated, opt_state, params")
  parser.add_argument("--global_batch", type=int, default=8, help="clips per step, split over the devices")
  parser.add_argument("--steps", type=int, default=10, help="timed steps after two warm-up steps")
  parser.add_argument("--json", default=None, help="also write the rows here")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  layouts = [name for name in args.layouts.split(",") if name]
  if unknown := sorted(set(layouts) - set(LAYOUTS)):
    parser.error(f"unknown layouts {unknown}; expected {', '.join(LAYOUTS)}")
  if args.child:
    for layout in layouts:
      print(json.dumps(measure(args.config, args.global_batch, args.steps, layout)), flush=True)
    return
  rows = []
  for devices in (int(d) for d in args.devices.split(",")):
    rows += run_child(devices, args)
  print(table(rows))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
  main()
