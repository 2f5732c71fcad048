"""ViT classifier of log-mel spectrograms (the seed's fine-tuned ViT-B/16), staged unfreezing, GAN augmentation.

  vqax convert vit HF_FOLDER --out runs/vit_b16        (google/vit-base-patch16-224, local files)
  vqax train --config configs/vit_classifier.py --workdir runs/vit --data_root DATA --config.init_from=runs/vit_b16
  vqax plan --config configs/vit_classifier.py --budget 16GiB          (the last unfreezing stage; the
        stage with index k alone: --config.last_stage=k)
  vqax augment --config configs/vit_classifier.py:demo --gan_workdir runs/gan   (real vs real + synthetic)
Variants: `:demo` (CPU minutes, `vqax synth classes` data) and `:smoke` (seconds, for tests).
"""
import ml_collections

from vqax.tasks.class_spectrograms import add_data_fields, use_synthetic_class_sizes
from vqax.train.defaults import trainer_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = trainer_config("vit_classifier")
  add_data_fields(c)

  c.model.variant = "B/16"  # vqax.models.vit.VARIANTS: B/16, S/16, Ti/16, tiny, micro
  c.model.num_classes = 0  # the head size; 0: the number of class folders
  c.model.input_adapter = "resize_rgb"  # the seed's: bilinear to image_size x 3 channels; or "native"
  c.model.overrides = ml_collections.ConfigDict()  # ViT fields, e.g. {"num_layers": 6, "image_size": (128, 256)}
  c.init_from = ""  # a `vqax convert vit` folder (its architecture must match the model settings)

  # The seed's staged fine-tuning {epoch: [layers]}, cumulative: names are "head", "final_norm",
  # "embeddings", "layer.N" (negative N counts from the top) or "all".
  c.unfreeze_schedule = ml_collections.ConfigDict({
      "0": ("head", "final_norm"),
      "2": ("layer.-1", "layer.-2", "layer.-3", "layer.-4"),
      "4": ("all",),
  })
  c.last_stage = -1  # stop unfreezing after this stage (-1: follow the whole schedule); plans one stage

  # Real + N generated spectrograms per class from a trained spectrogram_gan workdir (0: real only).
  c.augment = ml_collections.ConfigDict(dict(gan_workdir="", per_class=0, seed=0))

  c.epochs = 10
  c.batch_size = 12  # the seed's 12 on 16 GiB for ViT
  c.eval_batch_size = 32
  c.learning_rate = 5e-5
  c.warmup_steps = 100
  c.weight_decay = 0.01
  c.log_every_steps = 20
  c.checkpoint_every_steps = 500

  if variant == "demo":
    # A few CPU minutes on the demo's `vqax synth classes` set.
    use_synthetic_class_sizes(c, variant)
    c.model.variant = "micro"
    c.model.input_adapter = "native"
    c.model.overrides = ml_collections.ConfigDict(dict(patch_size=8, hidden_size=64, mlp_dim=128, num_heads=4))
    c.unfreeze_schedule = ml_collections.ConfigDict({"0": ("all",)})
    c.epochs = 12
    c.batch_size = 16
    c.learning_rate = 1e-3
    c.warmup_steps = 20
    c.log_every_steps = 20
    c.checkpoint_every_steps = 1000
  elif variant == "smoke":
    use_synthetic_class_sizes(c, variant)
    c.model.variant = "micro"
    c.model.input_adapter = "native"
    c.model.overrides = ml_collections.ConfigDict(dict(num_layers=3))
    c.unfreeze_schedule = ml_collections.ConfigDict({"0": ("head", "final_norm", "layer.-1"), "1": ("all",)})
    c.epochs = 2
    c.batch_size = 4
    c.learning_rate = 1e-3
    c.warmup_steps = 2
    c.log_every_steps = 2
    c.checkpoint_every_steps = 3
  elif variant:
    raise ValueError(f"unknown variant {variant!r}: expected '', 'demo' or 'smoke'")
  return c
