"""The ViT classifier task's CLI subcommands.

  vqax convert vit SRC --out DIR [--num_classes N]       Hugging Face ViT (folder, safetensors, torch zip) -> orbax
  vqax augment --gan_workdir W [--config FILE] [--seeds 3] [--per_class N] [--out DIR]
                                                         real only vs real + N synthetic per class, over seeds
"""
from vqax.commands import Command


def _convert_arguments(p):
  p.add_argument("src", help="HF model folder (config.json + model.safetensors / pytorch_model.bin) or a file")
  p.add_argument("--out", required=True, help="output folder (vit_config.json + variables/)")
  p.add_argument("--num_classes", type=int, default=None, help="replace the head with one of this size")
  p.add_argument("--seed", type=int, default=0, help="for a replaced head")


def _convert(args, extra):
  _no_extra(extra)
  from vqax.models.vit_convert import convert_vit
  out = convert_vit(args.src, args.out, num_classes=args.num_classes, seed=args.seed)
  print(f"[vqax] converted {args.src} -> {out}")
  return out


def _augment_arguments(p):
  import pathlib
  default = str(pathlib.Path(__file__).resolve().parents[3] / "configs" / "vit_classifier.py") + ":demo"
  p.add_argument("--config", default=default, help="the classifier's config file, optionally :variant")
  p.add_argument("--gan_workdir", required=True, help="a trained spectrogram_gan workdir")
  p.add_argument("--out", default=None, help="default: <gan_workdir>/augmentation")
  p.add_argument("--seeds", type=int, default=3, help="training seeds per setting")
  p.add_argument("--per_class", type=int, default=None, help="synthetic spectrograms per class "
                                                               "(default: the config's augment.per_class, or 50)")
  p.add_argument("--data_root", default=None, help="default: the data_root the GAN was trained on")


def _augment(args, extra):
  from vqax.tasks.vit_classifier.augment import run_augmentation
  return run_augmentation(args.config, args.gan_workdir, out_dir=args.out, seeds=args.seeds,
                          per_class=args.per_class, data_root=args.data_root, overrides=extra)


def _no_extra(extra):
  if extra:
    from vqax.errors import ConfigError
    raise ConfigError(f"unexpected arguments: {' '.join(extra)}")


COMMANDS = [
    Command("convert vit", "convert a Hugging Face ViT checkpoint to a Flax checkpoint folder",
            _convert_arguments, _convert),
    Command("augment", "classifier accuracy with and without GAN spectrograms, Frechet distance, faithfulness",
            _augment_arguments, _augment),
]
