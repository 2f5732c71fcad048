"""CLI subcommands for speaker embeddings (a `vqax.cli.PLUGIN_COMMANDS` module).

  vqax eval-sv --workdir W --trials FILE [--data_root D] [--make_trials N]   EER/minDCF per nested dim
  vqax embed --workdir W --data_root D --out FILE.npy                        embeddings + FILE.files.txt
  vqax convert redimnet CKPT --out DIR                                       official weights -> Flax
"""
COMMAND_NAMES = ("eval-sv", "embed", "convert")


def _add_embedding_options(p):
  p.add_argument("--batch_size", type=int, default=None, help="default: the config's eval.batch_size")
  p.add_argument("--max_seconds", type=float, default=None, help="centre-crop longer files (0: whole files)")
  p.add_argument("--bucket_ratio", type=float, default=None, help="length-bucket growth (1: exact lengths)")


def add_arguments(subparsers):
  p = subparsers.add_parser("eval-sv", help="speaker verification: EER/minDCF for every nested dim")
  p.add_argument("--workdir", required=True, help="a trained redimnet_mrl workdir")
  p.add_argument("--trials", default=None, help="'label enroll test' lines, paths relative to --data_root")
  p.add_argument("--data_root", default=None, help="default: the data_root the model was trained on")
  p.add_argument("--make_trials", type=int, default=None, metavar="N",
                 help="first write N target + N non-target trials from --data_root (to --trials or "
                      "<out>/trials.txt)")
  p.add_argument("--mean", default=None, help="mean subtraction: none, trials or a cohort folder "
                                              "(default: the config's eval.mean)")
  p.add_argument("--out", default=None, help="default: <workdir>/verification")
  p.add_argument("--seed", type=int, default=0, help="for --make_trials and cohort sampling")
  _add_embedding_options(p)

  p = subparsers.add_parser("embed", help="embed every audio file under a folder")
  p.add_argument("--workdir", required=True)
  p.add_argument("--data_root", required=True)
  p.add_argument("--out", required=True, help="FILE.npy; the file list goes to FILE.files.txt")
  _add_embedding_options(p)

  p = subparsers.add_parser("convert", help="convert official weights to a Flax checkpoint folder")
  p.add_argument("kind", choices=("redimnet",))
  p.add_argument("checkpoint", help="official torch checkpoint or .npz of param/<key> arrays")
  p.add_argument("--out", required=True, help="output folder (model_config.json + variables/)")
  p.add_argument("--model_config", default=None, help="JSON file with the model_config, when the "
                                                      "checkpoint does not carry one")


def _embedding_options(args) -> dict:
  return {"batch_size": args.batch_size, "max_seconds": args.max_seconds, "bucket_ratio": args.bucket_ratio}


def run(args, extra):
  if extra:
    from vqax.errors import ConfigError
    raise ConfigError(f"unexpected arguments: {' '.join(extra)}")
  if args.command == "eval-sv":
    from vqax.eval.verification import evaluate
    return evaluate(args.workdir, args.trials, data_root=args.data_root, out_dir=args.out,
                    make_trials_n=args.make_trials, mean=args.mean, seed=args.seed, **_embedding_options(args))
  if args.command == "embed":
    from vqax.eval.verification import embed_folder
    return embed_folder(args.workdir, args.data_root, args.out, **_embedding_options(args))
  return _convert(args)


def _convert(args):
  import json
  import pathlib

  from vqax.errors import ConfigError
  from vqax.models.redimnet_convert import convert_redimnet_file
  model_config = None
  if args.model_config:
    path = pathlib.Path(args.model_config)
    try:
      model_config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise ConfigError(f"--model_config {path}: not a readable JSON file ({e})") from None
    model_config = model_config.get("model_config", model_config)
  out = convert_redimnet_file(args.checkpoint, args.out, model_config)
  print(f"[vqax] converted {args.checkpoint} -> {out}")
  return out
