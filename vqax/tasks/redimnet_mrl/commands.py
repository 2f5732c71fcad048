"""The speaker-embedding task's CLI subcommands.

  vqax synth speakers --out DIR                                              synthetic VoxCeleb-layout corpus
  vqax eval-sv --workdir W --trials FILE [--data_root D] [--make_trials N]   EER/minDCF per nested dim
  vqax embed --workdir W --data_root D --out FILE.npy                        embeddings + FILE.files.txt
  vqax convert redimnet CKPT --out DIR                                       official weights -> Flax
"""
from vqax.commands import Command, describe_manifest


def _add_embedding_options(p):
  p.add_argument("--batch_size", type=int, default=None, help="default: the config's eval.batch_size")
  p.add_argument("--max_seconds", type=float, default=None, help="centre-crop longer files (0: whole files)")
  p.add_argument("--bucket_ratio", type=float, default=None, help="length-bucket growth (1: exact lengths)")


def _eval_sv_arguments(p):
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


def _embed_arguments(p):
  p.add_argument("--workdir", required=True)
  p.add_argument("--data_root", required=True)
  p.add_argument("--out", required=True, help="FILE.npy; the file list goes to FILE.files.txt")
  _add_embedding_options(p)


def _convert_arguments(p):
  p.add_argument("checkpoint", help="official torch checkpoint or .npz of param/<key> arrays")
  p.add_argument("--out", required=True, help="output folder (model_config.json + variables/)")
  p.add_argument("--model_config", default=None, help="JSON file with the model_config, when the "
                                                      "checkpoint does not carry one")


def _synth_arguments(p):
  p.add_argument("--out", required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--n_speakers", type=int, default=None)
  p.add_argument("--overwrite", action="store_true")


def _embedding_options(args) -> dict:
  return {"batch_size": args.batch_size, "max_seconds": args.max_seconds, "bucket_ratio": args.bucket_ratio}


def _eval_sv(args, extra):
  _no_extra(extra)
  from vqax.tasks.redimnet_mrl.verification import evaluate
  return evaluate(args.workdir, args.trials, data_root=args.data_root, out_dir=args.out,
                  make_trials_n=args.make_trials, mean=args.mean, seed=args.seed, **_embedding_options(args))


def _embed(args, extra):
  _no_extra(extra)
  from vqax.tasks.redimnet_mrl.verification import embed_folder
  return embed_folder(args.workdir, args.data_root, args.out, **_embedding_options(args))


def _synth(args, extra):
  _no_extra(extra)
  from vqax.data.synth_speakers import generate_speakers
  sizes = {"n_speakers": args.n_speakers} if args.n_speakers is not None else {}
  manifest = generate_speakers(args.out, seed=args.seed, overwrite=args.overwrite, **sizes)
  print(f"[vqax] synthetic speakers data in {args.out} ({describe_manifest(manifest)})")
  return manifest


def _no_extra(extra):
  if extra:
    from vqax.errors import ConfigError
    raise ConfigError(f"unexpected arguments: {' '.join(extra)}")


def _convert(args, extra):
  _no_extra(extra)
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


COMMANDS = [
    Command("synth speakers", "speech-like multi-speaker corpus in the VoxCeleb layout", _synth_arguments, _synth),
    Command("eval-sv", "speaker verification: EER/minDCF for every nested dim", _eval_sv_arguments, _eval_sv),
    Command("embed", "embed every audio file under a folder", _embed_arguments, _embed),
    Command("convert redimnet", "convert official ReDimNet weights to a Flax checkpoint folder",
            _convert_arguments, _convert),
]
