"""Class-conditional GAN of log-mel spectrograms (SNGAN-projection discriminator, hinge loss, n_critic).

The task owns its step: two networks, two optimizers and `n_critic` discriminator updates per generator
update in one jitted step (`step.gan_train_step`), over the trainer's ordinary `TrainState`, so that
checkpoints, sharding, MultiSteps accumulation, the non-finite guard and `vqax plan` work unchanged. The
loader hands each step `n_critic` real microbatches ([B, n_critic, n_mels, frames]): clips are dealt into
fixed groups of `n_critic` (a seeded permutation of the training clips), and groups are shuffled per epoch.
"""
import dataclasses
import pathlib

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqax.data import class_folders as cf
from vqax.data.pipeline import make_loader
from vqax.errors import ConfigError, DataError
from vqax.models import gan
from vqax.models.gan_objectives import LOSSES
from vqax.models.precision import memory_settings
from vqax.tasks import class_spectrograms as data_lib
from vqax.tasks.spectrogram_gan import step as step_lib
from vqax.train.task import (
  PLANNING_STEPS_PER_EPOCH,
  BatchSizes,
  DataInfo,
  Program,
  Task,
  TrainData,
)

PLANNING_NUM_CLASSES = 2  # the seed's condition size: what a plan assumes unless model.num_classes says
REPO = pathlib.Path(__file__).resolve().parents[3]
# The demo's synthetic set (`vqax synth classes`): four classes, one hard pair (a semitone apart), 2 s clips.
DEMO_SYNTH = dict(classes=("tone_low", "tone_semitone", "chirp_up", "noise_band"), clips_per_class=24, seconds=2.0,
                  sample_rate=16000)


def build_networks(config, num_classes: int) -> tuple[gan.Generator, gan.Discriminator]:
  memory = memory_settings(config)
  m = config.model
  kw = dict(num_classes=int(num_classes), remat_policy=memory.remat_policy, remat_groups=memory.remat_groups,
            dtype=memory.dtype)
  shape = data_lib.clip_config(config).shape
  generator = gan.Generator(n_mels=shape[0], frames=shape[1], latent_dim=int(m.latent_dim),
                            channels=tuple(int(c) for c in m.generator_channels), **kw)
  discriminator = gan.Discriminator(channels=tuple(int(c) for c in m.discriminator_channels), **kw)
  return gan.validate(generator), gan.validate(discriminator)


def validate_config(config) -> None:
  for name in ("batch_size", "epochs", "n_critic"):
    if int(config[name]) <= 0:
      raise ConfigError(f"{name}={config[name]}: expected a positive integer")
  if config.gan_loss not in LOSSES:
    raise ConfigError(f"gan_loss={config.gan_loss!r}: expected one of {', '.join(LOSSES)}")
  if not 0.0 <= float(config.ema_decay) < 1.0:
    raise ConfigError(f"ema_decay={config.ema_decay}: expected a decay in [0, 1)")
  if int(config.model.num_classes) == 1:
    raise ConfigError("model.num_classes=1: a conditional GAN needs at least 2 classes (0: the class folders)")
  if config.nonfinite not in ("skip", "halt"):
    raise ConfigError(f"nonfinite={config.nonfinite!r}: expected skip or halt")
  data_lib.validate_data_fields(config)
  build_networks(config, int(config.model.num_classes) or PLANNING_NUM_CLASSES)


def critic_groups(records, n_critic: int, seed: int) -> list[tuple]:
  """The clips dealt into fixed groups of `n_critic` (seeded); a remainder short of a group is left out."""
  order = np.random.default_rng(seed).permutation(len(records))
  return [tuple(records[i] for i in order[k * n_critic:(k + 1) * n_critic]) for k in range(len(records) // n_critic)]


@dataclasses.dataclass
class LoadCriticGroup(grain.transforms.Map):
  """A group of clip records -> {"spectrogram": [n_critic, n_mels, frames], "label": [n_critic]}."""
  clip: cf.ClipConfig
  normalization: cf.Normalization

  def map(self, group):
    specs = [self.normalization.apply(cf.clip_spectrogram(r, self.clip)) for r in group]
    return {"spectrogram": np.stack(specs), "label": np.array([r.label for r in group], np.int32)}


class SpectrogramGanTask(Task):
  name = "spectrogram_gan"
  flag_aliases = {"n_critic": "n_critic"}
  commands = "vqax.tasks.spectrogram_gan.commands"
  demo_config = str(REPO / "configs" / "spectrogram_gan.py") + ":demo"
  demo_data_root = "data/synth_classes"

  @classmethod
  def make_demo_data(cls, data_root: str) -> None:
    from vqax.data.synth_classes import generate_classes
    generate_classes(data_root, seed=0, **DEMO_SYNTH)  # a no-op when the same set is already there

  @classmethod
  def evaluate_demo(cls, workdir: str):
    """The augmentation loop with the classifier's demo config on the GAN's data (see vit_classifier)."""
    from vqax.tasks.vit_classifier.augment import run_augmentation
    return run_augmentation(str(REPO / "configs" / "vit_classifier.py") + ":demo", workdir)

  def __init__(self, config):
    validate_config(config)
    super().__init__(config)

  def prepare_data(self, workdir, batch: BatchSizes) -> TrainData:
    c = self.config
    data = data_lib.prepare(c, workdir)
    n_critic = int(c.n_critic)
    groups = critic_groups(data.train, n_critic, int(c.split_seed))
    if len(groups) < batch.global_batch:
      raise DataError(f"data_root {c.data_root}: {len(data.train)} training clips make {len(groups)} groups of "
                      f"n_critic={n_critic}, fewer than one global batch ({batch.global_batch})")
    loader = make_loader(groups, [LoadCriticGroup(data.clip, data.normalization)], batch_size=batch.per_process,
                         seed=int(c.seed), worker_count=int(c.worker_count))
    info = DataInfo(steps_per_epoch=len(groups) // batch.global_batch, num_classes=len(data.classes))
    summary = {"classes": data.classes, "train_clips": len(data.train), "test_clips": len(data.test)}
    return TrainData(loader, info, samples_per_step=batch.global_batch * n_critic, sample_unit="real clips",
                     summary=summary)

  def planning_info(self) -> DataInfo:
    return DataInfo(PLANNING_STEPS_PER_EPOCH, int(self.config.model.num_classes) or PLANNING_NUM_CLASSES)

  def build(self, info: DataInfo, platform: str) -> "SpectrogramGanProgram":
    generator, discriminator = build_networks(self.config, info.num_classes)
    return SpectrogramGanProgram(self.config, generator, discriminator)


@dataclasses.dataclass(frozen=True, eq=False)
class SpectrogramGanProgram(Program):
  config: object
  generator: gan.Generator
  discriminator: gan.Discriminator

  def batch_spec(self, global_batch: int):
    n, shape = int(self.config.n_critic), (self.generator.n_mels, self.generator.frames)
    return {"spectrogram": jax.ShapeDtypeStruct((global_batch, n, *shape), jnp.float32),
            "label": jax.ShapeDtypeStruct((global_batch, n), jnp.int32)}

  def init_variables(self, rng, batch_spec):
    return step_lib.init_gan_variables(self.generator, self.discriminator, rng)

  def make_optimizer(self, total_micro_steps: int):
    """{"generator": tx, "discriminator": tx}: Adam (b1, b2 from the config, GAN-style) after a linear
    warm-up, optional clipping; each wrapped in MultiSteps when accumulating. The schedule returned (for
    logging) is the generator's."""
    c = self.config
    k = int(c.gradient_accumulation_steps)
    if k < 1:
      raise ConfigError(f"gradient_accumulation_steps={k}: expected an integer >= 1")

    def adam(learning_rate):
      warmup = int(c.warmup_steps)
      schedule = (optax.linear_schedule(0.0, float(learning_rate), warmup) if warmup > 0
                  else optax.constant_schedule(float(learning_rate)))
      tx = optax.adam(schedule, b1=float(c.adam_b1), b2=float(c.adam_b2))
      if float(c.grad_clip_norm) > 0:
        tx = optax.chain(optax.clip_by_global_norm(float(c.grad_clip_norm)), tx)
      return (optax.MultiSteps(tx, every_k_schedule=k) if k > 1 else tx), schedule

    g_tx, schedule = adam(c.learning_rate)
    d_tx, _ = adam(c.d_learning_rate)
    return {"generator": g_tx, "discriminator": d_tx}, schedule

  def init_state(self, rng, batch_spec, tx):
    state = super().init_state(rng, batch_spec, optax.identity())  # params, model_state, rng, counters
    opt_state = {name: tx[name].init(state.params[name]) for name in step_lib.NETWORKS}
    return state.replace(opt_state=opt_state)

  def train_step(self, state, batch, *, tx, phase):
    return step_lib.gan_train_step(state, batch, generator=self.generator, discriminator=self.discriminator,
                                   tx=tx, loss=self.config.gan_loss, ema_decay=float(self.config.ema_decay))
