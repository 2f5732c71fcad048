"""Spectrograms from a trained GAN workdir: the EMA generator, conditioned on the classes asked for."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vqax.audio.features import LogMelConfig
from vqax.data.class_folders import Normalization
from vqax.errors import ConfigError
from vqax.models import gan
from vqax.tasks import class_spectrograms as data_lib
from vqax.tasks.spectrogram_gan.step import generate
from vqax.tasks.spectrogram_gan.task import build_networks
from vqax.train.checkpointing import restore_trained


@dataclasses.dataclass
class TrainedGenerator:
  """A GAN run's EMA generator with what is needed to read its output: classes, units, front end."""
  generator: gan.Generator
  params: dict
  classes: list[str]
  normalization: Normalization  # the GAN's output is in these standardised units
  features: LogMelConfig
  step: int

  def __post_init__(self):
    self._generate = jax.jit(lambda params, labels, rng: generate(self.generator, params, labels, rng))

  def spectrograms(self, labels, seed: int = 0, batch: int = 64) -> np.ndarray:
    """Standardised log-mels [N, n_mels, frames] for class indices `labels` [N] (host float32)."""
    labels = np.asarray(labels, np.int32)
    if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
      raise ConfigError(f"class index out of range: the GAN knows {len(self.classes)} classes")
    out = []
    for i in range(0, len(labels), batch):
      part = labels[i:i + batch]
      padded = np.zeros(batch, np.int32)
      padded[:len(part)] = part  # one compile whatever the count
      specs = self._generate(self.params, jnp.asarray(padded), jax.random.fold_in(jax.random.key(seed), i))
      out.append(np.asarray(specs)[:len(part)])
    shape = (self.generator.n_mels, self.generator.frames)
    return np.concatenate(out) if out else np.zeros((0, *shape), np.float32)

  def log_mels(self, labels, seed: int = 0) -> np.ndarray:
    """The same in the front end's units (10 log10 power): for WAV previews and other standardisations."""
    return self.normalization.invert(self.spectrograms(labels, seed))


def load_generator(workdir) -> TrainedGenerator:
  config, state, step = restore_trained(workdir, "spectrogram_gan", "generate from")
  classes, normalization, features, _ = data_lib.read_classes(workdir)
  generator, _ = build_networks(config, len(classes))
  generator = generator.clone(dtype=jnp.float32, remat_policy="none")  # evaluation: plain float32
  params = jax.tree.map(jnp.asarray, state["model_state"]["generator_ema"])
  return TrainedGenerator(generator, params, classes, normalization, features, int(step))
