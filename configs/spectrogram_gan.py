"""Class-conditional GAN of log-mel spectrograms (the seed's augmentation GAN), trained with vqax.

  vqax synth classes --out data/synth_classes
  vqax train --config configs/spectrogram_gan.py --workdir runs/gan --data_root DATA
  vqax plan --config configs/spectrogram_gan.py --budget 16GiB       (G + D + both Adam states)
  vqax demo --task spectrogram_gan      (synthetic classes -> GAN -> classifier with and without it)
The default shapes are the seed's: 30 s clips at 22.05 kHz, hop 512, 128 mels (128 x 1292), 2 classes.
Variants: `:demo` (CPU minutes, `vqax synth classes` data) and `:smoke` (seconds, for tests).
"""
import ml_collections

from vqax.tasks.class_spectrograms import add_data_fields, use_synthetic_class_sizes
from vqax.train.defaults import trainer_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = trainer_config("spectrogram_gan")
  add_data_fields(c)

  c.model.num_classes = 0  # the condition size; 0: the number of class folders
  c.model.latent_dim = 128
  c.model.generator_channels = (256, 128, 64, 32)  # one x2 upsampling block each
  c.model.discriminator_channels = (32, 64, 128, 256)  # one /2 downsampling block each

  # With remat on (memory_saver), each network also runs its samples in this many groups in turn: per-block
  # remat alone barely lowers the peak here (see vqax/models/gan.py).
  c.remat_groups = 8

  c.n_critic = 2  # discriminator updates per generator update, all in one jitted step
  c.gan_loss = "hinge"  # or "nonsaturating"
  c.ema_decay = 0.999  # generator EMA (what generation and evaluation use)
  c.learning_rate = 2e-4  # generator
  c.d_learning_rate = 2e-4  # discriminator
  c.adam_b1 = 0.0
  c.adam_b2 = 0.9
  c.warmup_steps = 100
  c.grad_clip_norm = 0.0  # 0: no clipping (spectral norm keeps D in check)
  c.weight_decay = 0.0

  c.epochs = 200
  c.batch_size = 24  # per device, real clips per critic update
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000

  if variant == "demo":
    # A few CPU minutes on the demo's `vqax synth classes` set.
    use_synthetic_class_sizes(c, variant)
    c.model.latent_dim = 32
    c.model.generator_channels = (64, 32, 16)
    c.model.discriminator_channels = (16, 32, 64)
    c.batch_size = 16
    c.epochs = 40
    c.learning_rate = 1e-3
    c.d_learning_rate = 1e-3
    c.ema_decay = 0.99
    c.warmup_steps = 20
    c.log_every_steps = 40
    c.checkpoint_every_steps = 400
  elif variant == "smoke":
    use_synthetic_class_sizes(c, variant)
    c.model.latent_dim = 8
    c.model.generator_channels = (16, 8)
    c.model.discriminator_channels = (8, 16)
    c.batch_size = 4
    c.epochs = 2
    c.learning_rate = 1e-3
    c.d_learning_rate = 1e-3
    c.ema_decay = 0.9
    c.warmup_steps = 2
    c.log_every_steps = 2
    c.checkpoint_every_steps = 3
  elif variant:
    raise ValueError(f"unknown variant {variant!r}: expected '', 'demo' or 'smoke'")
  return c
