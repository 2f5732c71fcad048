"""DCASE2020 Task 2 baseline autoencoder (`vqax.models.dcase_baseline`), trained by the generic trainer.

Data: the DCASE layout's training clips through the project's front end and per-machine-type normalisation
(`vqax.tasks.dcase_clips`, shared with the VQ-VAE task). A step takes `batch_size` clips per device and
`vectors_per_clip` random context vectors (`model.context_frames` stacked 64-mel frames,
`vqax.eval.references.context_vectors`) of each, so an epoch visits every clip once; 16 x 32 = 512 vectors,
the official batch size. Clips are read by a host-side grain loader; only batches go to the device.

Loss: mean squared reconstruction error, BatchNorm statistics in `model_state`. Optimiser: plain Adam at a
constant `learning_rate` as the official baseline (Keras Adam, 1e-3): `make_optimizer` is overridden, so the
shared AdamW's warm-up, cosine decay, weight decay and clipping do not apply (the config sets them to 0 and
the task rejects other values rather than ignore them).
"""
import dataclasses

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqax.data import dcase_loader
from vqax.data.pipeline import make_loader
from vqax.errors import ConfigError
from vqax.eval.references import context_vectors
from vqax.models.dcase_baseline import DcaseBaselineAE
from vqax.models.precision import memory_settings
from vqax.tasks.dcase_clips import feature_config, training_clips
from vqax.train.task import BatchSizes, DataInfo, Program, Task, TrainData

# Settings the shared AdamW schedule has that plain Adam at a constant rate does not.
UNUSED_OPTIMIZER_FIELDS = ("weight_decay", "warmup_steps", "grad_clip_norm")


def input_dim(config) -> int:
  return int(config.model.context_frames) * feature_config(config).n_mels


def build_model(config) -> DcaseBaselineAE:
  memory = memory_settings(config)
  m = config.model
  return DcaseBaselineAE(input_dim=input_dim(config), hidden=tuple(int(h) for h in m.hidden),
                         bottleneck=int(m.bottleneck), dtype=memory.dtype, remat_policy=memory.remat_policy)


def validate_config(config) -> None:
  """Range checks that need no data, so a bad value fails before any long work."""
  for name in ("batch_size", "vectors_per_clip", "epochs"):
    if int(config[name]) <= 0:
      raise ConfigError(f"{name}={config[name]}: expected a positive integer")
  m = config.model
  if int(m.context_frames) <= 0 or int(m.bottleneck) <= 0 or not all(int(h) > 0 for h in m.hidden):
    raise ConfigError("model.context_frames, model.bottleneck and model.hidden sizes must be positive")
  for name in UNUSED_OPTIMIZER_FIELDS:
    if float(config[name]) != 0:
      raise ConfigError(f"{name}={config[name]}: the dcase_baseline task trains with plain Adam at a constant "
                        "learning rate (the official baseline); expected 0")
  if config.get("stereo", "downmix") not in ("downmix", "reject"):
    raise ConfigError(f"stereo={config.stereo!r}: expected downmix or reject")
  if config.nonfinite not in ("skip", "halt"):
    raise ConfigError(f"nonfinite={config.nonfinite!r}: expected skip or halt")
  memory_settings(config)


@dataclasses.dataclass
class SampleContextVectors(grain.transforms.RandomMap):
  """{"features": [n_mels, T]} -> {"vectors": [count, frames * n_mels]}: random context vectors of the clip
  (without repeats when it has enough)."""
  frames: int
  count: int

  def random_map(self, element, rng: np.random.Generator):
    vectors = context_vectors(element["features"], self.frames)
    rows = rng.choice(len(vectors), self.count, replace=len(vectors) < self.count)
    return {"vectors": vectors[rows]}


class DcaseBaselineTask(Task):
  name = "dcase_baseline"
  flag_aliases = {"machine_type": "machine_type", "norm_stats_path": "norm_stats_path",
                  "vectors_per_clip": "vectors_per_clip"}
  fit_fields = ("batch_size", "vectors_per_clip")
  commands = "vqax.tasks.dcase_baseline.commands"

  def __init__(self, config):
    validate_config(config)
    super().__init__(config)
    self.feature_config = feature_config(config)

  def prepare_data(self, workdir, batch: BatchSizes) -> TrainData:
    c = self.config
    clips = training_clips(c, workdir, self.feature_config)
    records, norm_stats = clips.records, clips.norm_stats
    clips.features = None  # the loader reads clips again per step: the data set never stays in memory
    ops = [dcase_loader.LoadNormalizedFeatures(norm_stats, self.feature_config, c.feature_cache_dir or None),
           SampleContextVectors(int(c.model.context_frames), int(c.vectors_per_clip))]
    loader = make_loader(records, ops, batch_size=batch.per_process, seed=int(c.seed), shuffle=True,
                         num_epochs=None, worker_count=int(c.worker_count))
    return TrainData(loader, DataInfo(max(1, len(records) // batch.global_batch)),
                     samples_per_step=batch.global_batch * int(c.vectors_per_clip), sample_unit="vectors",
                     summary=clips.summary())

  def build(self, info: DataInfo, platform: str) -> "DcaseBaselineProgram":
    return DcaseBaselineProgram(self.config, build_model(self.config))


@dataclasses.dataclass(frozen=True, eq=False)
class DcaseBaselineProgram(Program):
  config: object
  model: DcaseBaselineAE

  def batch_spec(self, global_batch: int):
    shape = (global_batch, int(self.config.vectors_per_clip), self.model.input_dim)
    return {"vectors": jax.ShapeDtypeStruct(shape, jnp.float32)}

  def init_variables(self, rng, batch_spec):
    return dict(self.model.init(rng, jnp.zeros((2, self.model.input_dim), jnp.float32), train=False))

  def loss_fn(self, params, model_state, batch, rng, step, phase):
    x = batch["vectors"].reshape(-1, self.model.input_dim)
    y, updates = self.model.apply({"params": params, **model_state}, x, train=True, mutable=["batch_stats"])
    loss = jnp.mean((y - x) ** 2)
    return loss.astype(jnp.float32), (dict(model_state, **updates), {"recon_loss": loss})

  def make_optimizer(self, total_micro_steps: int):
    """Adam at a constant learning rate, as the official baseline (accumulation still by MultiSteps)."""
    schedule = optax.constant_schedule(float(self.config.learning_rate))
    tx = optax.adam(schedule)
    k = int(self.config.gradient_accumulation_steps)
    if k < 1:
      raise ConfigError(f"gradient_accumulation_steps={k}: expected an integer >= 1")
    return (optax.MultiSteps(tx, every_k_schedule=k) if k > 1 else tx), schedule
