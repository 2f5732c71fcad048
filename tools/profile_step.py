"""Where a train step's time goes: one bench_train case's vqax step, traced, summed per model scope and op.

  python tools/profile_step.py --case redimnet_b0                  # top scopes and top XLA ops
  python tools/profile_step.py --case vqvae_16x16 --depth 2 --top 30
  python tools/profile_step.py --case redimnet_b0 --hlo_dump /tmp/hlo   # also keep the optimized HLO

The step is the trainer's own (`tools/bench_train.py`'s vqax runner, same config and batch). After
warm-up, `--steps` steps run under `jax.profiler.trace`; every XLA op's time in the Perfetto trace is
attributed through the optimized HLO's metadata to the model scope it came from ("fwd" or "bwd", then
stage/block/layer to `--depth` levels) and listed by op name too. A fusion named after one layer
that costs many times its neighbours is where XLA:CPU recomputes a producer inside a consumer.
Tracing slows the step; compare the figures with each other, not with bench_train's.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))
# Scope names that say nothing about where in the model an op is.
_NOISE = re.compile(r"^(jit\(.*\)|jvp\(.*\)|transpose\(.*\)|backbone|backbone\.embed_features)$")


def op_scopes(hlo_text: str) -> dict[str, str]:
  """Instruction name -> op_name metadata, from optimized HLO text."""
  scopes = {}
  for m in re.finditer(r"^\s*%(\S+) = .*?metadata=\{op_name=\"([^\"]*)\"", hlo_text, re.M):
    scopes.setdefault(m.group(1), m.group(2))
  return scopes


def scope_key(op_name: str, depth: int) -> str:
  direction = "bwd" if "transpose(" in op_name else "fwd"
  parts = [p for p in op_name.split("/") if p and not _NOISE.match(p)]
  return f"{direction} {'/'.join(parts[:depth])}"


def summarize(trace_events, scopes, steps: int, depth: int):
  by_scope, by_op, calls = collections.Counter(), collections.Counter(), collections.Counter()
  for event in trace_events:
    if event.get("ph") != "X" or event.get("name") not in scopes:
      continue
    ms = event["dur"] / 1000 / steps
    by_scope[scope_key(scopes[event["name"]], depth)] += ms
    by_op[event["name"]] += ms
    calls[event["name"]] += 1
  return by_scope, by_op, calls


def main(argv=None) -> int:
  import bench_train
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--case", default="redimnet_b0", choices=sorted(bench_train.CASES))
  parser.add_argument("--steps", type=int, default=2, help="traced steps")
  parser.add_argument("--depth", type=int, default=3, help="model scope levels to group by")
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--hlo_dump", default=None, help="folder for the optimized HLO (default: a temporary one)")
  args = parser.parse_args(argv)

  dump = pathlib.Path(args.hlo_dump or tempfile.mkdtemp(prefix="vqax-hlo-"))
  # Read when XLA initialises, so set before jax is first used.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_dump_to={dump} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*train_step.*")
  import jax
  task_name, overrides, _, _ = bench_train.CASES[args.case]
  config = bench_train.bench_config(task_name, overrides)
  runner = bench_train.VqaxRunner(task_name, config)
  for _ in range(2):
    runner()
  start = time.perf_counter()
  runner()
  print(f"{args.case}: untraced step {time.perf_counter() - start:.2f} s, compiled peak "
        f"{runner.compiled_peak / 2**20:.0f} MiB", flush=True)
  with tempfile.TemporaryDirectory(prefix="vqax-trace-") as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(args.steps):
        runner()
    trace = json.load(gzip.open(glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)[0]))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  hlo = sorted(dump.glob("*train_step.cpu_after_optimizations.txt")) or sorted(
      dump.glob("*train_step*after_optimizations.txt"))
  scopes = op_scopes(hlo[-1].read_text())
  by_scope, by_op, calls = summarize(events, scopes, args.steps, args.depth)
  print(f"\nXLA ops, {sum(by_op.values()):.0f} ms per traced step; by model scope:")
  for key, ms in by_scope.most_common(args.top):
    print(f"{ms:9.1f} ms  {key}")
  print("\nby op (calls per step, model scope):")
  for name, ms in by_op.most_common(args.top):
    print(f"{ms:9.1f} ms  {calls[name] // args.steps:5d}  {name:32s} {scope_key(scopes[name], 6)}")
  print(f"\noptimized HLO: {hlo[-1]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
