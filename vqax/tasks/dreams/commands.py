"""The DreaMS task's CLI subcommands.

  vqax synth spectra --out DIR                               synthetic LC-MS/MS runs (train/ and test/)
  vqax convert dreams CKPT --out DIR                         official weights -> Flax (then --config.init_from=DIR)
  vqax embed --workdir W --data FILE --out F.npy             precursor-token embeddings + F.spectra.tsv
  vqax eval-spectra --workdir W --data FILE [--out DIR]      masked m/z, retention order, retrieval vs matchms
"""
from vqax.commands import Command


def _no_extra(extra):
  if extra:
    from vqax.errors import ConfigError
    raise ConfigError(f"unexpected arguments: {' '.join(extra)}")


def _synth_arguments(p):
  p.add_argument("--out", required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--train_runs", type=int, default=8)
  p.add_argument("--test_runs", type=int, default=2)
  p.add_argument("--n_molecules", type=int, default=60)
  p.add_argument("--format", default="mgf", choices=("mgf", "hdf5"))
  p.add_argument("--overwrite", action="store_true")


def _synth(args, extra):
  _no_extra(extra)
  from vqax.data.synth_spectra import generate_spectra
  manifest = generate_spectra(args.out, seed=args.seed, train_runs=args.train_runs, test_runs=args.test_runs,
                              n_molecules=args.n_molecules, fmt=args.format, overwrite=args.overwrite)
  print(f"[vqax] synthetic spectra in {args.out}: {manifest['n_files']} runs, {manifest['total_spectra']} spectra "
        f"(train/ and test/)")
  return manifest


def _convert_arguments(p):
  p.add_argument("checkpoint", help="official Lightning .ckpt, torch state-dict file, or .npz of param/<key> arrays")
  p.add_argument("--out", required=True, help="output folder (dreams_config.json + variables/)")
  p.add_argument("--n_heads", type=int, default=None, help="attention heads, when the checkpoint carries no "
                                                           "arguments (default 8)")


def _convert(args, extra):
  _no_extra(extra)
  from vqax.models.dreams_convert import convert_dreams_file
  out = convert_dreams_file(args.checkpoint, args.out, args.n_heads)
  print(f"[vqax] converted {args.checkpoint} -> {out} (train from it with --config.init_from={out})")
  return out


def _embedding_options(p):
  p.add_argument("--batch_size", type=int, default=None, help="default: the config's eval.batch_size")
  p.add_argument("--max_peaks_n", type=int, default=None, help="default: the config's eval.max_peaks_n (100)")


def _embed_arguments(p):
  p.add_argument("--workdir", required=True, help="a trained dreams workdir")
  p.add_argument("--data", required=True, help="a spectra file (.mgf, .mzML, .hdf5) or a folder of them")
  p.add_argument("--out", required=True, help="FILE.npy; one line per row goes to FILE.spectra.tsv")
  _embedding_options(p)


def _embed(args, extra):
  _no_extra(extra)
  from vqax.tasks.dreams.evaluation import embed_file
  return embed_file(args.workdir, args.data, args.out, batch_size=args.batch_size, max_peaks_n=args.max_peaks_n)


def _eval_arguments(p):
  p.add_argument("--workdir", required=True, help="a trained dreams workdir")
  p.add_argument("--data", required=True, help="a spectra file or folder (molecule identities for retrieval)")
  p.add_argument("--out", default=None, help="default: <workdir>/eval_spectra")
  p.add_argument("--max_pairs", type=int, default=20000, help="retention-order pairs evaluated at most")
  p.add_argument("--no_retrieval", action="store_true", help="skip the same-molecule retrieval")
  p.add_argument("--seed", type=int, default=0, help="for the masking draw and the pair sample")
  _embedding_options(p)


def _eval(args, extra):
  _no_extra(extra)
  from vqax.tasks.dreams.evaluation import evaluate_workdir
  return evaluate_workdir(args.workdir, args.data, out_dir=args.out, batch_size=args.batch_size,
                          max_peaks_n=args.max_peaks_n, max_pairs=args.max_pairs, retrieval=not args.no_retrieval,
                          seed=args.seed)


COMMANDS = [
    Command("synth spectra", "deterministic synthetic LC-MS/MS runs for DreaMS", _synth_arguments, _synth),
    Command("convert dreams", "convert official DreaMS weights to a Flax checkpoint folder", _convert_arguments,
            _convert),
    Command("embed", "embed every spectrum of a file", _embed_arguments, _embed),
    Command("eval-spectra", "DreaMS: masked m/z and retention-order accuracy, retrieval vs matchms cosines",
            _eval_arguments, _eval),
]
