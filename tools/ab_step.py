"""Is a train step faster with other convolution forms? The vqax step as `choose_impls` picks its forms,
against the same step with some passes overridden, compiled side by side and run in turns in one process.

  python -m tools.ab_step --override 64x128:dx=xla                       # the VQ-VAE's up2 input gradient
  python -m tools.ab_step --case redimnet_b0 --override 20x60:fwd=gemm --rounds 4 --steps 2

Why: a pass timed alone says little about the step. Inside it, a form competes with everything around
it for two cores, memory bandwidth and cache, and XLA fuses it with its neighbours: Winograd gradients that
ran 1.2-2.5x faster alone made the VQ-VAE step 0.87-0.88x as fast (`tools/bench_winograd.py`). Judge a change
to `vqax.ops.conv.choose_impls` with this.

An override `CINxCOUT:PASS=FORM` applies to every convolution whose kernel has CIN input channels per
group and COUT outputs (after the models' reformulations, e.g. the polyphase 2x2 kernel's 4x channels),
PASS one of fwd, dx, dw and FORM one of `vqax.ops.conv.PASS_IMPLS`. Both steps start from the same
state and batch (bench_train's cases) and must give the same first two losses (the second follows one
update, so it checks the gradients too). Each turn starts with one
untimed step (see bench_train's `--rewarm`); reported: each variant's median step and the median over
rounds of the per-round speed ratio to the chosen forms. Run it as `vqax` runs, with huge pages
(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`).
"""
import argparse
import contextlib
import json
import os
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

PASSES = ("fwd", "dx", "dw")
CHOSEN = "chosen forms"


def parse_override(text: str) -> tuple[tuple[int, int], int, str]:
  """'64x128:dx=xla' -> ((64, 128), 1, 'xla'); a clear error naming the option otherwise."""
  from vqax.ops.conv import PASS_IMPLS
  try:
    channels, assignment = text.split(":")
    cin, cout = (int(v) for v in channels.split("x"))
    pass_name, form = assignment.split("=")
  except ValueError:
    raise ValueError(f"--override {text!r}: expected CINxCOUT:PASS=FORM, e.g. 64x128:dx=xla") from None
  if pass_name not in PASSES:
    raise ValueError(f"--override {text!r}: pass {pass_name!r} is not one of {', '.join(PASSES)}")
  if form not in PASS_IMPLS:
    raise ValueError(f"--override {text!r}: form {form!r} is not one of {', '.join(PASS_IMPLS)}")
  return (cin, cout), PASSES.index(pass_name), form


@contextlib.contextmanager
def overridden_forms(overrides: list[tuple[tuple[int, int], int, str]], applied: list | None = None):
  """While tracing inside this, `vqax.ops.conv` runs the overridden passes in the given forms.

  Each convolution the override changes is appended to `applied` (kernel shape, forms), if given.
  """
  from vqax.ops import conv

  def chosen(x_shape, kernel_shape, strides, groups, original):
    impls = list(original)
    for channels, pass_index, form in overrides:
      if tuple(kernel_shape[-2:]) == channels:
        impls[pass_index] = form
    if applied is not None and tuple(impls) != original:
      applied.append((tuple(kernel_shape), tuple(impls)))
    return tuple(impls)

  with conv.override_forms(chosen):
    yield


def compare_steps(case: str, variants: dict, rounds: int, steps: int, after_tracing=None) -> dict:
  """bench_train case `case`'s vqax step under each variant (name -> context manager factory, or None for
  the forms as chosen), in turns: `rounds` x (one untimed + `steps` timed steps) each. `after_tracing()`,
  if given, runs once every variant is traced, before the compiles and the minutes of timing."""
  import jax
  import jax.numpy as jnp
  from tools import bench_train
  from vqax.train import sharding, trainer
  task_name, overrides, _, _ = bench_train.CASES[case]
  config = bench_train.bench_config(task_name, overrides)
  t, _, state = bench_train.initial_state(config, task_name)
  batch = sharding.global_batch(t.mesh, bench_train.make_batch(task_name, config))
  lowered = {}
  for name, variant in variants.items():
    with variant() if variant else contextlib.nullcontext():
      lowered[name] = t.compile_train_step(trainer.phase_at(t.phases, 0)).lower(state, batch)
  if after_tracing:
    after_tracing()
  compiled = {name: low.compile() for name, low in lowered.items()}
  states = {name: jax.tree.map(jnp.copy, state) for name in compiled}  # the step donates its state
  # The first loss checks the forward pass; the second, after one update, the gradients too.
  first_losses = {}
  for name, step in compiled.items():
    for _ in range(2):
      states[name], metrics = step(states[name], batch)
      first_losses.setdefault(name, []).append(float(metrics["loss"]))
  reference = next(iter(first_losses.values()))
  if any(abs(a - b) > 1e-5 * abs(b) for losses in first_losses.values() for a, b in zip(losses, reference)):
    raise AssertionError(f"{case}: the variants' first two losses differ: {first_losses}")
  first_loss = {name: losses[0] for name, losses in first_losses.items()}
  times = {name: [] for name in compiled}
  per_round = []
  for _ in range(rounds):
    for name, step in compiled.items():
      states[name], metrics = step(states[name], batch)  # untimed: the first step of a turn faults memory in
      jax.block_until_ready(metrics)
      for _ in range(steps):
        start = time.perf_counter()
        states[name], metrics = step(states[name], batch)
        jax.block_until_ready(metrics)
        times[name].append(time.perf_counter() - start)
    per_round.append({name: statistics.median(v[-steps:]) for name, v in times.items()})
  base = next(iter(compiled))
  speed = {name: statistics.median(r[base] / r[name] for r in per_round) for name in compiled}
  return {"case": case, "rounds": rounds, "steps": steps, "first_loss": first_loss,
          "first_two_losses": first_losses, "baseline": base,
          "step_s": {name: statistics.median(v) for name, v in times.items()}, "step_s_all": times,
          "speed_vs_baseline": speed}


def report(result: dict) -> str:
  lines = [f"{result['case']}, {result['rounds']} rounds x {result['steps']} steps in turns",
           f"| variant | step (ms) | speed vs {result['baseline']} (median of per-round ratios) |", "|---|---:|---:|"]
  for name, seconds in result["step_s"].items():
    lines.append(f"| {name} | {1000 * seconds:.0f} | {result['speed_vs_baseline'][name]:.3f}x |")
  return "\n".join(lines)


def main(argv=None) -> int:
  from tools import bench_train
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--case", default="vqvae_16x16", help=f"one of {', '.join(bench_train.CASES)}")
  parser.add_argument("--override", action="append", default=[], help="CINxCOUT:PASS=FORM; repeat for more")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
  parser.add_argument("--json", default="", help="also write the result here")
  args = parser.parse_args(argv)
  if args.case not in bench_train.CASES:
    parser.error(f"--case {args.case!r}: expected one of {', '.join(bench_train.CASES)}")
  if not args.override:
    parser.error("--override: give at least one, e.g. --override 64x128:dx=xla")
  if args.rounds < 1 or args.steps < 1:
    parser.error(f"--rounds {args.rounds} --steps {args.steps}: expected positive integers")
  try:
    overrides = [parse_override(text) for text in args.override]
  except ValueError as error:
    parser.error(str(error))
  applied = []

  def some_convolution_changed():
    if not applied:
      parser.error(f"--override {', '.join(args.override)}: no convolution of {args.case} has these channels, "
                   "or each already runs in these forms")

  name = "overridden: " + ", ".join(args.override)
  result = compare_steps(args.case, {CHOSEN: None, name: lambda: overridden_forms(overrides, applied)},
                         args.rounds, args.steps, some_convolution_changed)
  result["changed_convolutions"] = sorted({f"{shape}: {'/'.join(forms)}" for shape, forms in applied})
  result.update(machine=bench_train.machine(with_torch=False), date=time.strftime("%Y-%m-%d"),
                glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""))
  print(result["machine"], "; changed:", "; ".join(result["changed_convolutions"]))
  print(report(result))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
