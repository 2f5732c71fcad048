"""`vqax` command line: a thin layer over importable functions (tests and notebooks use the same ones).

  vqax synth dcase --out DIR            synthetic DCASE2020 Task 2 style machine sounds
  vqax synth speakers --out DIR         synthetic multi-speaker corpus (VoxCeleb layout)
  vqax train --config FILE[:variant] --workdir DIR [--config.x=y ...] [--batch_size 8 ...]
  vqax score --workdir DIR              anomaly scores, AUC/pAUC tables, DCASE CSVs, ROC PNGs
  vqax demo                             synth (once) -> train -> score, about 10 minutes on a CPU
  vqax plan --config FILE [--budget 8GiB] per-device memory of the train step, compiled from shapes
User mistakes end with one line `vqax: error: ...` and exit status 2; no traceback.
"""
import argparse
import logging
import os
import pathlib
import sys

from vqax.errors import VqaxError
from vqax.memory import host_allocator

DEFAULT_CONFIGS = {"train": "configs/vqvae_dcase.py"}
# Defaults name the package's own configs by absolute path: a configs/ folder in the current directory
# (a dataset, a stranger's checkout) is never run unless the user names it with --config.
REPO_CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "vqvae_dcase.py")


def _add_train(sub):
  p = sub.add_parser("train", help="train a model from a config (resumes from --workdir)")
  p.add_argument("--config", default=REPO_CONFIG, help="config file, optionally :variant")
  p.add_argument("--workdir", required=True, help="checkpoints, logs and results go here")
  p.add_argument("--max_steps", type=int, default=None, help="stop after this global step")
  p.add_argument("--no_progress", action="store_true", help="no progress bar (logs only)")


def _add_score(sub):
  p = sub.add_parser("score", help="score test clips with a trained VQ-VAE")
  p.add_argument("--workdir", required=True)
  p.add_argument("--data_root", default=None, help="default: the data_root the model was trained on")
  p.add_argument("--method", default=None, choices=("latent", "density", "recon", "both", "all"))
  p.add_argument("--out", default=None, help="default: <workdir>/scores")


def _add_synth(sub):
  p = sub.add_parser("synth", help="generate a synthetic dataset")
  kinds = p.add_subparsers(dest="kind", required=True)
  d = kinds.add_parser("dcase", help="machine sounds in the DCASE2020 Task 2 layout")
  d.add_argument("--out", required=True)
  d.add_argument("--seed", type=int, default=0)
  d.add_argument("--machine_types", default="fan,pump,valve")
  d.add_argument("--machine_ids", default="0,2")
  d.add_argument("--n_train", type=int, default=None)
  d.add_argument("--n_test_normal", type=int, default=None)
  d.add_argument("--n_test_anomaly", type=int, default=None)
  d.add_argument("--seconds", type=float, default=None)
  d.add_argument("--overwrite", action="store_true")
  s = kinds.add_parser("speakers", help="speech-like multi-speaker corpus in the VoxCeleb layout")
  s.add_argument("--out", required=True)
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--n_speakers", type=int, default=None)
  s.add_argument("--overwrite", action="store_true")


def _add_demo(sub):
  p = sub.add_parser("demo", help="synthetic data -> train -> score (the `make demo` job)")
  p.add_argument("--data_root", default="data/synth_dcase")
  p.add_argument("--workdir", default="runs/demo")
  p.add_argument("--config", default=REPO_CONFIG + ":demo")


# Extra subcommands live in their own modules: (name, "module:function" for add_arguments and run).
# Each module defines add_arguments(subparsers) and run(args, extra) -> int | None.
PLUGIN_COMMANDS = [
    "vqax.memory.plan_command",
    "vqax.eval.sv_commands",
]


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="vqax", description=__doc__.split("\n\n")[0])
  parser.add_argument("-v", "--verbose", action="store_true")
  sub = parser.add_subparsers(dest="command", required=True)
  _add_train(sub)
  _add_score(sub)
  _add_synth(sub)
  _add_demo(sub)
  for module_name in PLUGIN_COMMANDS:
    _plugin(module_name).add_arguments(sub)
  return parser


def _plugin(module_name):
  import importlib
  return importlib.import_module(module_name)


def _kwargs(args, names):
  return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def cmd_synth(args, extra):
  _no_extra(extra)
  if args.kind == "dcase":
    from vqax.data.synth_dcase import generate_dcase
    manifest = generate_dcase(
        args.out, seed=args.seed, machine_types=tuple(m for m in args.machine_types.split(",") if m),
        machine_ids=tuple(int(i) for i in args.machine_ids.split(",") if i), overwrite=args.overwrite,
        **_kwargs(args, ("n_train", "n_test_normal", "n_test_anomaly", "seconds")))
  else:
    from vqax.data.synth_speakers import generate_speakers
    manifest = generate_speakers(args.out, seed=args.seed, overwrite=args.overwrite,
                                 **_kwargs(args, ("n_speakers",)))
  print(f"[vqax] synthetic {args.kind} data in {args.out} ({_describe(manifest)})")


def _describe(manifest) -> str:
  if isinstance(manifest, dict):
    for key in ("total_clips", "n_files", "total_files", "num_files"):
      if key in manifest:
        return f"{manifest[key]} files"
  return "done"


def cmd_train(args, extra):
  from vqax import config_loading
  from vqax.train import trainer
  config = config_loading.apply_overrides(config_loading.load_config(args.config), extra)
  _select_platform(config)
  summary = trainer.train(config, args.workdir, max_steps=args.max_steps, progress=not args.no_progress)
  last = summary["history"][-1] if summary["history"] else {}
  print(f"[vqax] trained to step {summary['final_step']}/{summary['total_steps']}"
        + (f", loss {last['loss']:.4f}" if "loss" in last else "")
        + (f"; skipped {summary['nonfinite_steps']} non-finite steps" if summary["nonfinite_steps"] else "")
        + (f"; skipped {len(summary['data'].get('bad_files', []))} bad files" if summary["data"].get("bad_files") else ""))
  return summary


def cmd_score(args, extra):
  from vqax.eval.anomaly import score_workdir  # extra: --config.score.<field>=<value> scoring options
  return score_workdir(args.workdir, data_root=args.data_root, out_dir=args.out, method=args.method, overrides=extra)


def cmd_demo(args, extra):
  from vqax import config_loading
  from vqax.data.synth_dcase import generate_dcase
  from vqax.eval.anomaly import score_workdir
  from vqax.train import trainer
  generate_dcase(args.data_root, seed=0)
  config = config_loading.load_config(args.config)
  config.data_root = args.data_root
  config = config_loading.apply_overrides(config, extra)
  _select_platform(config)
  trainer.train(config, args.workdir)
  return score_workdir(args.workdir)


def _select_platform(config):
  """--device: cpu/gpu/tpu pins the JAX platform (before first use); auto leaves JAX's choice."""
  device = str(config.get("device", "auto"))
  if device not in ("auto", "cpu", "gpu", "tpu", "cuda", "rocm"):
    from vqax.errors import ConfigError
    raise ConfigError(f"device={device!r}: expected auto, cpu, gpu or tpu")
  if device != "auto":
    import jax
    jax.config.update("jax_platforms", {"gpu": "cuda,rocm"}.get(device, device))


def _no_extra(extra):
  if extra:
    from vqax.errors import ConfigError
    raise ConfigError(f"unexpected arguments: {' '.join(extra)}")


COMMANDS = {"train": cmd_train, "score": cmd_score, "synth": cmd_synth, "demo": cmd_demo}


def main(argv=None) -> int:
  if host_allocator.keep_memory_requested():
    # Before JAX starts its threads: XLA:CPU's per-step buffers then reuse their pages (see host_allocator).
    host_allocator.keep_freed_host_memory()
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="[vqax] %(message)s")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    if args.command in COMMANDS:
      COMMANDS[args.command](args, extra)
    else:
      module = next(_plugin(m) for m in PLUGIN_COMMANDS if args.command in getattr(_plugin(m), "COMMAND_NAMES", ()))
      module.run(args, extra)
  except VqaxError as e:
    print(f"vqax: error: {e}", file=sys.stderr)
    return 2
  return 0


def entry() -> None:
  """The `vqax` executable: huge pages for XLA's host buffers (restarts once, see host_allocator), then main."""
  host_allocator.restart_with_huge_pages()
  sys.exit(main())


if __name__ == "__main__":
  entry()
