"""Where a train step's time goes: one bench_train case's vqax step, traced, summed per model scope and op.

  python -m tools.profile_step --case redimnet_b0                  # top scopes and top XLA ops
  python -m tools.profile_step --case vqvae_16x16 --depth 2 --top 30
  python -m tools.profile_step --case redimnet_b0 --hlo_dump /tmp/hlo   # also keep the optimized HLO

The step is the trainer's own (`tools/bench_train.py`'s vqax runner, same config and batch). After
warm-up, `--steps` steps run under `jax.profiler.trace`; every XLA op's time in the Perfetto trace is
attributed through the optimized HLO's metadata to the model scope it came from ("fwd" or "bwd", then
stage/block/layer to `--depth` levels) and listed by op name too. A fusion named after one layer
that costs many times its neighbours is where XLA:CPU recomputes a producer inside a consumer.
Each op's dots and convolutions are counted in FLOPs from the HLO, and its GFLOP/s printed beside
its time. XLA:CPU runs some dots and convolutions on Eigen's thread pool, and the trace then holds
only their launch: those show more GFLOP/s than the machine has (`--max_gflops`) and are listed
apart as "not timed", with the compute they imply, since the op sums leave it out.
The step runs with huge pages, as `vqax` runs it (VQAX_HUGE_PAGES=0 profiles glibc's default).
Tracing slows the step; compare the figures with each other, not with bench_train's.
"""
import argparse
import collections
import functools
import glob
import gzip
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# The trainer's jitted step (`jit_step`; `jit_train_step` in older checkouts).
STEP_MODULES = "jit_(train_)?step"
# Scope names that say nothing about where in the model an op is.
_NOISE = re.compile(r"^(jit\(.*\)|jvp\(.*\)|transpose\(.*\)|backbone|backbone\.embed_features)$")


def op_scopes(hlo_text: str) -> dict[str, str]:
  """Instruction name -> op_name metadata, from optimized HLO text."""
  scopes = {}
  for m in re.finditer(r"^\s*%(\S+) = .*?metadata=\{op_name=\"([^\"]*)\"", hlo_text, re.M):
    scopes.setdefault(m.group(1), m.group(2))
  return scopes


_SHAPE = r"[a-z]+\d*\[([\d,]*)\]"
_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (?:" + _SHAPE + r"|\([^=]*?\))\S* (\w[\w-]*)\((.*)$")


def _dims(text: str) -> list[int]:
  return [int(d) for d in text.split(",") if d]


def _instruction_flops(out_dims, opcode: str, operands: list[list[int]], rest: str) -> int:
  """Nominal multiply-add FLOPs (2 per MAC) of one dot or convolution, from its HLO line."""
  if opcode == "dot" and operands:
    lhs_contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
    contracted = math.prod(operands[0][i] for i in _dims(lhs_contracting.group(1))) if lhs_contracting else 1
    return 2 * math.prod(out_dims) * contracted
  if opcode == "convolution" and len(operands) >= 2:
    labels = re.search(r"dim_labels=\w+_(\w+)->", rest)
    kernel = operands[1]
    o_axis = labels.group(1).index("o") if labels else len(kernel) - 1
    return 2 * math.prod(out_dims) * math.prod(d for i, d in enumerate(kernel) if i != o_axis)
  return 0


def op_flops(hlo_text: str) -> dict[str, int]:
  """Instruction name -> nominal FLOPs of the dots and convolutions it runs, fusions included.

  Why: XLA:CPU hands some dots and convolutions to Eigen's thread pool, and the trace then shows
  only their launch; an op whose traced time implies more FLOP/s than the machine has is one of
  those, and its real cost is missing from the op sum.
  """
  instructions, computation = [], None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.-]+) .*\{\s*$", line)
    if header:
      computation = header.group(1)
    elif m := _INSTR.match(line):
      instructions.append((computation, m.group(1), _dims(m.group(2) or ""), m.group(3), m.group(4)))
  shapes = {name: out_dims for _, name, out_dims, _, _ in instructions}
  own, callees, members = {}, {}, collections.defaultdict(list)
  for computation, name, out_dims, opcode, rest in instructions:
    operand_list = rest.split(")")[0]
    # Operands are printed as "%name" or, in some dumps, as "f32[...] %name".
    inline = [_dims(m.group(1)) for m in re.finditer(_SHAPE, operand_list)]
    operands = inline or [shapes.get(n, []) for n in re.findall(r"%([\w.-]+)", operand_list)]
    own[name] = _instruction_flops(out_dims, opcode, operands, rest)
    callees[name] = re.findall(r"(?:calls|to_apply)=%?([\w.-]+)", rest)
    members[computation].append(name)

  @functools.cache
  def total(name: str) -> int:
    return own[name] + sum(total(i) for c in callees[name] for i in members.get(c, []))

  return {name: total(name) for name in own}


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


def untimed_ops(by_op, step_flops, max_gflops: float) -> set[str]:
  """Ops whose traced time (ms per step) is too short for their FLOPs per step: only their launch
  was traced."""
  return {name for name, ms in by_op.items()
          if step_flops.get(name) and (ms <= 0 or step_flops[name] / 1e9 / ms * 1e3 > max_gflops)}


def main(argv=None) -> int:
  from tools import bench_train
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--case", default="redimnet_b0", choices=sorted(bench_train.CASES))
  parser.add_argument("--steps", type=int, default=2, help="traced steps")
  parser.add_argument("--depth", type=int, default=3, help="model scope levels to group by")
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--max_gflops", type=float, default=1000.0,
                      help="GFLOP/s above which an op's traced time is taken to be its launch only "
                           "(two CPU cores reach a few hundred)")
  parser.add_argument("--hlo_dump", default=None, help="folder for the optimized HLO (default: a temporary one)")
  args = parser.parse_args(argv)

  dump = pathlib.Path(args.hlo_dump or tempfile.mkdtemp(prefix="vqax-hlo-"))
  # Read when XLA initialises, so set before jax is first used.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_dump_to={dump} --xla_dump_hlo_as_text --xla_dump_hlo_module_re={STEP_MODULES}")
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
  hlo = sorted(p for p in dump.glob("*after_optimizations.txt") if re.search(rf"\.{STEP_MODULES}\.", p.name))
  if not hlo:
    raise SystemExit(f"no optimized HLO of the train step in {dump} (modules matching {STEP_MODULES})")
  hlo_text = hlo[-1].read_text()
  scopes, flops = op_scopes(hlo_text), op_flops(hlo_text)
  by_scope, by_op, calls = summarize(events, scopes, args.steps, args.depth)
  step_flops = {name: flops.get(name, 0) * calls[name] / args.steps for name in by_op}
  untimed = untimed_ops(by_op, step_flops, args.max_gflops)
  rate = lambda name: step_flops[name] / 1e9 / by_op[name] * 1e3  # GFLOP/s
  print(f"\nXLA ops, {sum(by_op.values()):.0f} ms per traced step; by model scope:")
  for key, ms in by_scope.most_common(args.top):
    print(f"{ms:9.1f} ms  {key}")
  print("\nby op (calls per step, GFLOP per step and GFLOP/s of its dots and convolutions, model scope):")
  for name, ms in by_op.most_common(args.top):
    speed = f"{rate(name):7.0f}" if step_flops[name] and ms > 0 else "      -"
    print(f"{ms:9.1f} ms  {calls[name] // args.steps:5d}  {step_flops[name] / 1e9:7.2f} {speed}  "
          f"{name:32s} {scope_key(scopes[name], 6)}")
  if untimed:
    timed = [n for n, ms in by_op.items() if step_flops[n] and n not in untimed]
    typical = sum(step_flops[n] for n in timed) / 1e9 / sum(by_op[n] for n in timed) * 1e3 if timed else None
    gflop = sum(step_flops[n] for n in untimed) / 1e9
    print(f"\nnot timed: {len(untimed)} ops with {gflop:.1f} GFLOP per step show more than "
          f"{args.max_gflops:.0f} GFLOP/s. XLA:CPU ran their work on Eigen's thread pool, outside the "
          f"trace, so it is missing from the sums above" +
          (f"; at the timed dots' and convolutions' {typical:.0f} GFLOP/s it is about "
           f"{gflop / typical * 1e3:.0f} ms of compute, overlapping the timed ops on the same cores."
           if typical else "."))
    for name in sorted(untimed, key=lambda n: -step_flops[n])[:args.top]:
      print(f"  {step_flops[name] / 1e9:7.2f} GFLOP  {name:32s} {scope_key(scopes[name], 6)}")
  print(f"\noptimized HLO: {hlo[-1]}")
  return 0


if __name__ == "__main__":
  # Profile the step under the allocator the `vqax` executable runs with: without huge pages every
  # fresh buffer is faulted in 4 KiB at a time, and copies and slices look about 3x slower than they are.
  from vqax.ops import host_allocator
  host_allocator.restart_with_huge_pages()
  sys.exit(main())
