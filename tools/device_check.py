"""On a machine with a GPU: how close is `vqax plan --target` to the GPU itself? One JSON, in minutes.

  python -m tools.device_check [--out device_check.json] [--skip tests,bench] [--dry_run]
  (tools/device_check.sh runs it under an 8-minute limit)

1. The live device: kind, memory, the allocator's limit, and its own target description, written by XLA
   itself (`xla_dump_to` makes the GPU compiler write `*.gpu_target_config.pbtxt`, the file format of
   vqax/planning/gpu_targets/).
2. For each model step (MODELS; each in its own process, so that peak bytes in use are that step's): the
   live GPU's `memory_analysis()` of the step as training compiles it (autotuned, cuDNN workspaces
   included), `peak_bytes_in_use` after three real steps on zero data, and the deviceless plans of the same
   step for the live description and for the shipped target of that GPU kind: the figures to compare.
3. The GPU-relevant tests (pytest; pass/fail counts) and bench_train's vqax rows (its own JSON, merged).
Each stage has its own time limit and records its failure instead of stopping the others. --dry_run does no
GPU work: it writes the same JSON shape with every measurement null (for checking the tool on a CPU).
"""
import argparse
import glob
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# name -> (config, vqax train options): the seeds' reference sizes, float32 and --memory_saver.
MODELS = {
    "vqvae_16x16": ("configs/vqvae_dcase.py", []),
    "vqvae_16x16_memory_saver": ("configs/vqvae_dcase.py", ["--memory_saver"]),
    "redimnet_b0_32x2s": ("configs/redimnet_mrl.py", ["--config.model.size=b0", "--batch_size", "32"]),
    "redimnet_b0_32x2s_memory_saver": ("configs/redimnet_mrl.py",
                                       ["--config.model.size=b0", "--batch_size", "32", "--memory_saver"]),
}
TESTS = ["tests/test_gpu_plan.py", "tests/test_memory.py", "tests/test_fast_layers.py"]
SHIPPED_BY_KIND = {"H100": "h100", "H200": "h200", "A100": "a100-80g"}
STAGES = ("device", "models", "tests", "bench")
MEMORY_FIELDS = ("argument", "output", "temp", "alias", "peak")


def analysis_dict(analysis) -> dict:
  a, o, t, al = (int(analysis.argument_size_in_bytes), int(analysis.output_size_in_bytes),
                 int(analysis.temp_size_in_bytes), int(analysis.alias_size_in_bytes))
  return {"argument": a, "output": o, "temp": t, "alias": al, "peak": a + o + t - al}


def live_target_description(out_dir: pathlib.Path) -> pathlib.Path | None:
  """Compile a small function on the live GPU with xla_dump_to: XLA writes the device's own description."""
  import jax
  import jax.numpy as jnp
  with tempfile.TemporaryDirectory(prefix="vqax-target-") as dump:
    x = jnp.ones((256, 256), jnp.float32)
    jax.jit(lambda a: jnp.tanh(a @ a)).lower(x).compile({"xla_dump_to": dump})
    found = sorted(glob.glob(os.path.join(dump, "*gpu_target_config.pbtxt")))
    if not found:
      return None
    path = out_dir / "live_target.txtpb"
    path.write_text(pathlib.Path(found[0]).read_text())
    return path


def device_stage(out_dir: pathlib.Path) -> dict:
  import jax
  from vqax.planning import targets
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  described = live_target_description(out_dir) if device.platform == "gpu" else None
  described_memory = targets.gpu_target("live", described, 1, "1x1x1").memory_bytes if described else None
  return {"platform": device.platform, "device_kind": device.device_kind, "n_devices": jax.device_count(),
          "bytes_limit": stats.get("bytes_limit"), "described_memory_bytes": described_memory,
          "live_target_file": str(described) if described else None,
          "allocator_env": {k: os.environ.get(k) for k in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                                                          "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_ALLOCATOR")}}


def shipped_target_for(kind: str) -> str | None:
  return next((name for key, name in SHIPPED_BY_KIND.items() if key in kind), None)


def model_stage(name: str, live_target_file: str | None) -> dict:
  """One model's step: live analysis, peak bytes in use over real steps, deviceless plans (own process)."""
  import jax
  import jax.numpy as jnp
  from vqax import config_loading, tasks
  from vqax.planning import planner, targets
  config_file, flags = MODELS[name]
  config = tasks.apply_overrides(config_loading.load_config(str(REPO / config_file)), list(flags))
  result = {"model": name, "config": config_file, "flags": flags}
  start = time.perf_counter()
  trainer, lowered, _, _ = planner.lower_train_step(config)
  compiled = lowered.compile()
  result["live"] = analysis_dict(compiled.memory_analysis())
  result["live_compile_s"] = round(time.perf_counter() - start, 1)
  device = trainer.mesh.devices.flat[0]
  before = (device.memory_stats() or {}).get("bytes_in_use")
  state = trainer.init_state()
  batch = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype, device=trainer.batch_sharding),
                       trainer.batch_spec())
  for _ in range(3):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  stats = device.memory_stats() or {}
  result.update(bytes_in_use_before=before, bytes_in_use_after=stats.get("bytes_in_use"),
                peak_bytes_in_use=stats.get("peak_bytes_in_use"))
  plans = {}
  for label, target in (("live_description", live_target_file), ("shipped", shipped_target_for(device.device_kind))):
    if not target:
      continue
    t0 = time.perf_counter()
    plan = planner.plan(config, label, devices=targets.parse(target).devices())
    plans[label] = {**{f: getattr(plan, f) for f in MEMORY_FIELDS}, "target": target,
                    "compile_s": round(time.perf_counter() - t0, 1)}
  result["deviceless"] = plans
  return result


def run_models(out_dir: pathlib.Path, live_target_file, timeout: float, dry_run: bool) -> list[dict]:
  results = []
  for name in MODELS:
    if dry_run:
      results.append({"model": name, "config": MODELS[name][0], "flags": MODELS[name][1],
                      "live": dict.fromkeys(MEMORY_FIELDS), "peak_bytes_in_use": None,
                      "deviceless": {"live_description": dict.fromkeys(MEMORY_FIELDS),
                                     "shipped": dict.fromkeys(MEMORY_FIELDS)}})
      continue
    out = out_dir / f"model_{name}.json"
    command = [sys.executable, "-m", "tools.device_check", "--one_model", name, "--out", str(out)]
    if live_target_file:
      command += ["--live_target", live_target_file]
    results.append(_run(command, timeout, out, {"model": name}))
  return results


def run_tests(out_dir: pathlib.Path, timeout: float, dry_run: bool) -> dict:
  if dry_run:
    return {"files": TESTS, "passed": None, "failed": None, "skipped": None}
  report = out_dir / "tests.xml"
  command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"] + TESTS
  result = _run(command, timeout, None, {"files": TESTS})
  if report.exists():
    import xml.etree.ElementTree as ET
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    result.update(passed=tests - failures - errors - skipped, failed=failures + errors, skipped=skipped)
  return result


def run_bench(out_dir: pathlib.Path, timeout: float, dry_run: bool) -> dict:
  if dry_run:
    return {"cases": ["vqvae_16x16", "redimnet_b0"], "results": None}
  out = out_dir / "bench_train.json"
  command = [sys.executable, "-m", "tools.bench_train", "--cases", "vqvae_16x16,redimnet_b0", "--runners",
             "vqax,vqax bf16", "--rounds", "2", "--steps", "3", "--json", str(out)]
  return _run(command, timeout, out, {"cases": ["vqvae_16x16", "redimnet_b0"]})


def _run(command, timeout, out, result) -> dict:
  start = time.perf_counter()
  try:
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    result.update(returncode=done.returncode, tail=(done.stdout + done.stderr)[-2000:])
  except subprocess.TimeoutExpired:
    result.update(returncode=None, error=f"timed out after {timeout:.0f} s")
  result["seconds"] = round(time.perf_counter() - start, 1)
  if out is not None and pathlib.Path(out).exists():
    result.update(json.loads(pathlib.Path(out).read_text()))
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="device_check.json")
  parser.add_argument("--skip", default="", help=f"comma list of stages to leave out: {', '.join(STAGES[1:])}")
  parser.add_argument("--dry_run", action="store_true", help="no GPU work: the JSON's shape with null figures")
  # Together under 8 minutes: 4 models x 70 s + 90 s of tests + 75 s of bench_train + the device stage.
  parser.add_argument("--model_timeout", type=float, default=70, help="seconds per model process")
  parser.add_argument("--tests_timeout", type=float, default=90)
  parser.add_argument("--bench_timeout", type=float, default=75)
  parser.add_argument("--one_model", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--live_target", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  skip = [s for s in args.skip.split(",") if s]
  unknown = [s for s in skip if s not in STAGES[1:]]
  if unknown:
    parser.error(f"--skip {','.join(unknown)}: expected some of {', '.join(STAGES[1:])}")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  if args.one_model:
    if args.one_model not in MODELS:
      parser.error(f"--one_model {args.one_model}: expected one of {', '.join(MODELS)}")
    out.write_text(json.dumps(model_stage(args.one_model, args.live_target), indent=1))
    return 0
  start = time.perf_counter()
  work = out.parent / (out.stem + "_files")
  work.mkdir(exist_ok=True)
  result = {"dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d %H:%M"), "stages_skipped": skip}
  if args.dry_run:
    result["device"] = {"platform": None, "device_kind": None, "n_devices": None, "bytes_limit": None,
                        "described_memory_bytes": None, "live_target_file": None, "allocator_env": {}}
  else:
    import jax
    result["jax"] = jax.__version__
    result["device"] = device_stage(work)
  live = result["device"]["live_target_file"]
  out.write_text(json.dumps(result, indent=1))  # after every stage: an outer time limit loses nothing done
  result["models"] = [] if "models" in skip else run_models(work, live, args.model_timeout, args.dry_run)
  out.write_text(json.dumps(result, indent=1))
  result["tests"] = None if "tests" in skip else run_tests(work, args.tests_timeout, args.dry_run)
  out.write_text(json.dumps(result, indent=1))
  result["bench_train"] = None if "bench" in skip else run_bench(work, args.bench_timeout, args.dry_run)
  result["seconds"] = round(time.perf_counter() - start, 1)
  out.write_text(json.dumps(result, indent=1))
  print(f"[device_check] wrote {out} ({result['seconds']} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
