"""A trained classifier workdir: its model, predictions and penultimate features, accuracy on the held-out
files of its split."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vqax.data import class_folders as cf
from vqax.models import vit as vit_lib
from vqax.tasks import class_spectrograms as data_lib
from vqax.tasks.vit_classifier.task import build_model
from vqax.train.checkpointing import restore_trained


@dataclasses.dataclass
class TrainedClassifier:
  config: object
  model: vit_lib.ViT
  params: dict
  classes: list[str]
  normalization: cf.Normalization  # the units the classifier reads
  step: int
  batch: int = 32

  def __post_init__(self):
    def run(params, x):
      logits, aux = self.model.apply({"params": params}, x)
      return jnp.argmax(logits, -1), aux["features"]
    self._run = jax.jit(run)

  def predict(self, spectrograms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes [N], penultimate features [N, D]) of standardised spectrograms [N, n_mels, frames]."""
    predictions, features = [], []
    for i in range(0, len(spectrograms), self.batch):
      part = spectrograms[i:i + self.batch]
      padded = np.zeros((self.batch, *part.shape[1:]), np.float32)
      padded[:len(part)] = part  # one compile whatever the count
      p, f = jax.device_get(self._run(self.params, padded))
      predictions.append(p[:len(part)])
      features.append(f[:len(part)])
    return np.concatenate(predictions), np.concatenate(features).astype(np.float64)


def load_classifier(workdir) -> TrainedClassifier:
  config, state, step = restore_trained(workdir, "vit_classifier", "evaluate")
  classes, normalization, _, _ = data_lib.read_classes(workdir)
  model = build_model(config, len(classes)).clone(dtype=jnp.float32, remat_policy="none")
  return TrainedClassifier(config, model, jax.tree.map(jnp.asarray, state["params"]), classes, normalization,
                           int(step), int(config.eval_batch_size))


def test_arrays(config, normalization: cf.Normalization):
  """(spectrograms, labels) of the held-out files of `config`'s split, in the given units."""
  _, test, _, clip = data_lib.list_split(config)
  return cf.load_arrays(test, clip, normalization)


def accuracy(classifier: TrainedClassifier, spectrograms, labels) -> float:
  predictions, _ = classifier.predict(spectrograms)
  return float(np.mean(predictions == labels))
