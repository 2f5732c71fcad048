"""The VQ-VAE task's CLI subcommands.

  vqax synth dcase --out DIR     synthetic machine sounds in the DCASE2020 Task 2 layout
  vqax score --workdir DIR       VQ-VAE and reference scores side by side: AUC/pAUC tables, DCASE CSVs, ROC PNGs
(`vqax demo` is generic: the task class names its demo config, data and evaluation.)
"""
from vqax.commands import Command, describe_manifest


def _synth_arguments(p):
  p.add_argument("--out", required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--machine_types", default="fan,pump,valve")
  p.add_argument("--machine_ids", default="0,2")
  p.add_argument("--n_train", type=int, default=None)
  p.add_argument("--n_test_normal", type=int, default=None)
  p.add_argument("--n_test_anomaly", type=int, default=None)
  p.add_argument("--seconds", type=float, default=None)
  p.add_argument("--overwrite", action="store_true")


def _synth(args, extra):
  _no_extra(extra)
  from vqax.data.synth_dcase import generate_dcase
  sizes = {n: getattr(args, n) for n in ("n_train", "n_test_normal", "n_test_anomaly", "seconds")
           if getattr(args, n) is not None}
  manifest = generate_dcase(
      args.out, seed=args.seed, machine_types=tuple(m for m in args.machine_types.split(",") if m),
      machine_ids=tuple(int(i) for i in args.machine_ids.split(",") if i), overwrite=args.overwrite, **sizes)
  print(f"[vqax] synthetic dcase data in {args.out} ({describe_manifest(manifest)})")
  return manifest


def _score_arguments(p):
  p.add_argument("--workdir", required=True)
  p.add_argument("--data_root", default=None, help="default: the data_root the model was trained on")
  p.add_argument("--method", default=None, choices=("latent", "density", "recon", "both", "all"))
  p.add_argument("--out", default=None, help="default: <workdir>/scores")


def _score(args, extra):
  from vqax.tasks.vqvae.scoring import score_workdir  # extra: --config.score.<field>=<value> scoring options
  return score_workdir(args.workdir, data_root=args.data_root, out_dir=args.out, method=args.method,
                       overrides=extra)


def _no_extra(extra):
  if extra:
    from vqax.errors import ConfigError
    raise ConfigError(f"unexpected arguments: {' '.join(extra)}")


COMMANDS = [
    Command("synth dcase", "machine sounds in the DCASE2020 Task 2 layout", _synth_arguments, _synth),
    Command("score", "score test clips with a trained VQ-VAE", _score_arguments, _score),
]
