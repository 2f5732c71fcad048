"""The dcase_baseline task's CLI subcommand.

  vqax score --workdir DIR     per-clip mean reconstruction MSE of the test clips: AUC/pAUC table, results.json,
                               DCASE CSVs and ROC PNGs, as the VQ-VAE's `vqax score` writes them
"""
from vqax.commands import Command


def _score_arguments(p):
  p.add_argument("--workdir", required=True)
  p.add_argument("--data_root", default=None, help="default: the data_root the model was trained on")
  p.add_argument("--out", default=None, help="default: <workdir>/scores")


def _score(args, extra):
  from vqax.tasks.dcase_baseline.scoring import score_workdir  # extra: --config.score.<field>=<value>
  return score_workdir(args.workdir, data_root=args.data_root, out_dir=args.out, overrides=extra)


COMMANDS = [Command("score", "score test clips with a trained DCASE2020 baseline autoencoder", _score_arguments,
                    _score)]
