"""The GAN task's CLI subcommands.

  vqax synth classes --out DIR                       synthetic class folders (pitch, chirps, bands, AM; hard pairs)
  vqax generate --workdir W --out DIR [--per_class N]  EMA-generator spectrograms: .npy, grid PNG, WAV previews
(`vqax demo --task spectrogram_gan` trains the GAN on synthetic classes and runs the augmentation loop.)
"""
from vqax.commands import Command, describe_manifest


def _synth_arguments(p):
  p.add_argument("--out", required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--classes", default=None, help="comma list (default: every synthetic class)")
  p.add_argument("--clips_per_class", type=int, default=None)
  p.add_argument("--seconds", type=float, default=None)
  p.add_argument("--sample_rate", type=int, default=None)
  p.add_argument("--overwrite", action="store_true")


def _synth(args, extra):
  _no_extra(extra)
  from vqax.data.synth_classes import generate_classes
  sizes = {n: getattr(args, n) for n in ("clips_per_class", "seconds", "sample_rate") if getattr(args, n) is not None}
  if args.classes:
    sizes["classes"] = tuple(c for c in args.classes.split(",") if c)
  manifest = generate_classes(args.out, seed=args.seed, overwrite=args.overwrite, **sizes)
  print(f"[vqax] synthetic classes in {args.out} ({describe_manifest(manifest)})")
  return manifest


def _generate_arguments(p):
  p.add_argument("--workdir", required=True, help="a trained spectrogram_gan workdir")
  p.add_argument("--out", default=None, help="default: <workdir>/generated")
  p.add_argument("--per_class", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--wavs", type=int, default=1, help="Griffin-Lim WAV previews per class")


def _generate(args, extra):
  _no_extra(extra)
  import pathlib

  import numpy as np

  from vqax.eval import augmentation as aug
  from vqax.tasks.spectrogram_gan.generation import load_generator
  trained = load_generator(args.workdir)
  out = pathlib.Path(args.out or pathlib.Path(args.workdir) / "generated")
  out.mkdir(parents=True, exist_ok=True)
  labels = np.repeat(np.arange(len(trained.classes)), args.per_class)
  specs = trained.spectrograms(labels, args.seed)
  np.save(out / "spectrograms.npy", specs)
  np.save(out / "labels.npy", labels)
  grid = aug.spectrogram_grid_png(specs[:0], labels[:0], specs, labels, trained.classes, out / "generated.png",
                                  per_class=min(args.per_class, 4))
  for c, name in enumerate(trained.classes):
    for i in range(min(args.wavs, args.per_class)):
      aug.write_wav_preview(trained.normalization.invert(specs[c * args.per_class + i]), out / f"{name}_{i}.wav",
                            trained.features)
  print(f"[vqax] {len(specs)} spectrograms from step {trained.step} in {out} (spectrograms.npy, {grid.name}, WAVs)")
  return out


def _no_extra(extra):
  if extra:
    from vqax.errors import ConfigError
    raise ConfigError(f"unexpected arguments: {' '.join(extra)}")


COMMANDS = [
    Command("synth classes", "labelled class folders of synthetic sounds (for classifiers and GANs)",
            _synth_arguments, _synth),
    Command("generate", "spectrograms from a trained class-conditional GAN", _generate_arguments, _generate),
]
