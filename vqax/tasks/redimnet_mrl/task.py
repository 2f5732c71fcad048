"""ReDimNet speaker embeddings with a Matryoshka AAM-softmax head (shared/SPEC.md sections 2-3).

Phases (lengths in epochs from the config):
  "frozen_backbone": only the head (projection + class weights) trains; the backbone runs in inference
                     mode without gradients, so its parameters and BatchNorm statistics stay bit-identical.
  "full":            everything trains.
The backbone starts from `init_from` (a `vqax convert redimnet` folder) when set, else from random init.
"""
import dataclasses
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from vqax.data import speakers
from vqax.errors import CheckpointError, ConfigError, DataError
from vqax.models import mrl
from vqax.models.precision import memory_settings
from vqax.models.redimnet import SIZES, config_to_json, redimnet
from vqax.ops import forms
from vqax.train.task import BatchSizes, DataInfo, Phase, Program, Task, TrainData

log = logging.getLogger(__name__)

SPEAKERS_FILE = "speakers.json"  # in the workdir: label -> speaker folder name
PLANNING_NUM_CLASSES = 5994  # VoxCeleb2 dev speakers (shared/SPEC.md section 3): what a plan assumes


def backbone_config(config) -> dict:
  """The official model_config of model.size with model.overrides applied (normalised, JSON form)."""
  m = config.model
  if m.size not in SIZES:
    raise ConfigError(f"model.size={m.size!r}: expected one of {', '.join(SIZES)}")
  overrides = m.get("overrides") or {}
  overrides = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)
  return config_to_json({**SIZES[m.size], **overrides})


def build_model(config, num_classes: int, platform: str | None = None) -> mrl.MatryoshkaSpeakerModel:
  """The speaker model with `num_classes` class weights, layer forms for `platform` (default: JAX's)."""
  memory = memory_settings(config)
  model_config = backbone_config(config)
  layer_forms = forms.resolve(config.model.get("layer_forms", "auto"), platform or jax.default_backend())
  backbone = redimnet(config.model.size, **model_config, dtype=memory.dtype, remat_policy=memory.remat_policy,
                      layer_forms=layer_forms)
  head = mrl.MatryoshkaHead(int(config.model.projection_dim), int(num_classes), dtype=memory.dtype)
  return mrl.MatryoshkaSpeakerModel(backbone, head)


def validate_config(config) -> None:
  """Range checks that need no data, so a bad value fails before any long work."""
  for name in ("batch_size", "epochs"):
    if int(config[name]) <= 0:
      raise ConfigError(f"{name}={config[name]}: expected a positive integer")
  if int(config.model.projection_dim) <= 0:
    raise ConfigError(f"model.projection_dim={config.model.projection_dim}: expected a positive integer")
  if int(config.model.num_classes) < 0:
    raise ConfigError(f"model.num_classes={config.model.num_classes}: expected an integer >= 0")
  if config.model.layer_forms not in forms.LAYER_FORMS:
    raise ConfigError(f"model.layer_forms={config.model.layer_forms!r}: expected one of "
                      f"{', '.join(forms.LAYER_FORMS)}")
  for name in ("freeze_backbone_epochs", "margin_ramp_start_epoch", "margin_ramp_end_epoch"):
    if int(config[name]) < 0:
      raise ConfigError(f"{name}={config[name]}: expected an integer >= 0")
  if config.freeze_backbone_epochs > config.epochs:
    raise ConfigError(f"freeze_backbone_epochs={config.freeze_backbone_epochs} exceeds epochs={config.epochs}")
  if float(config.segment_seconds) <= 0 or float(config.min_seconds) < 0:
    raise ConfigError("segment_seconds must be > 0 and min_seconds >= 0")
  dims = tuple(int(d) for d in config.mrl_dims)
  if not dims or list(dims) != sorted(set(dims)) or dims[0] <= 0 or dims[-1] > int(config.model.projection_dim):
    raise ConfigError(f"mrl_dims={tuple(config.mrl_dims)}: expected increasing dims in 1..model.projection_dim="
                      f"{config.model.projection_dim}")
  weights = tuple(float(w) for w in config.mrl_weights)
  if len(weights) != len(dims) or min(weights) < 0 or sum(weights) <= 0:
    raise ConfigError(f"mrl_weights={tuple(config.mrl_weights)}: expected {len(dims)} non-negative weights, "
                      f"not all zero (one per mrl_dims entry)")
  if not 0.0 <= float(config.margin) < np.pi / 2 or float(config.scale) <= 0:
    raise ConfigError(f"margin={config.margin} must be in [0, pi/2) and scale={config.scale} positive")
  if config.nonfinite not in ("skip", "halt"):
    raise ConfigError(f"nonfinite={config.nonfinite!r}: expected skip or halt")
  memory_settings(config)
  backbone_config(config)


def load_backbone(init_from, config) -> dict:
  """Host copies of converted backbone variables {'params', 'batch_stats'}; CheckpointError unless they
  were converted from the architecture `config` asks for (checked before the weights are read)."""
  from vqax.models.redimnet_convert import MODEL_CONFIG_FILE, load_converted
  config_file = pathlib.Path(init_from) / MODEL_CONFIG_FILE
  if not config_file.is_file():
    raise CheckpointError(f"init_from={init_from}: no {MODEL_CONFIG_FILE} (expected a `vqax convert redimnet` "
                          f"output folder)")
  expected, found = backbone_config(config), config_to_json(json.loads(config_file.read_text()))
  if expected != found:
    differing = sorted(k for k in expected if expected[k] != found.get(k))
    raise CheckpointError(f"init_from={init_from}: converted from a different ReDimNet than model.size="
                          f"{config.model.size} (differs in {', '.join(differing)}); set model.size to match")
  variables, _ = load_converted(init_from)
  return jax.device_get(dict(variables))


class ReDimNetMRLTask(Task):
  name = "redimnet_mrl"
  commands = "vqax.tasks.redimnet_mrl.commands"

  def __init__(self, config):
    validate_config(config)
    super().__init__(config)
    self.segment_samples = segment_samples(config)
    self.backbone_variables = load_backbone(config.init_from, config) if config.init_from else None

  def prepare_data(self, workdir, batch: BatchSizes) -> TrainData:
    c = self.config
    utterances, names = speakers.list_utterances(c.data_root)
    min_samples = int(round(float(c.min_seconds) * speakers.SAMPLE_RATE))
    # Header checks of every file up front, so a bad one fails (or is skipped and counted) before training.
    utterances, bad, short = speakers.check_utterances(utterances, min_samples=min_samples, resample=bool(c.resample),
                                                       skip_bad_files=bool(c.skip_bad_files))
    if short:
      log.info("left out %d utterances shorter than min_seconds=%s", short, c.min_seconds)
    if not utterances:
      raise DataError(f"data_root {c.data_root}: no usable utterances ({len(bad)} bad files skipped, {short} "
                      f"shorter than min_seconds={c.min_seconds})")
    num_classes = int(c.model.num_classes) or len(names)  # 0: one class per speaker folder
    if len(names) > num_classes:
      raise DataError(f"data_root {c.data_root}: {len(names)} speakers but model.num_classes={num_classes}")
    if jax.process_index() == 0:
      path = pathlib.Path(workdir) / SPEAKERS_FILE
      path.write_text(json.dumps({"data_root": str(c.data_root), "speakers": names}, indent=1))
    if len(utterances) < batch.global_batch:
      raise DataError(f"data_root {c.data_root}: {len(utterances)} utterances, fewer than one global batch "
                      f"({batch.global_batch})")
    loader = speakers.train_loader(
        utterances, batch_size=batch.per_process, segment_samples=self.segment_samples, seed=int(c.seed),
        min_samples=min_samples, resample=bool(c.resample), skip_bad_files=bool(c.skip_bad_files),
        worker_count=int(c.worker_count))
    summary = {"speakers": len(names), "utterances": len(utterances), "num_classes": num_classes,
               "bad_files": bad, "short_files": short}  # bad_files as in the VQ-VAE task (the CLI counts them)
    info = DataInfo(steps_per_epoch=len(utterances) // batch.global_batch, num_classes=num_classes)
    return TrainData(loader, info, samples_per_step=batch.global_batch, sample_unit="segments", summary=summary)

  def planning_info(self) -> DataInfo:
    # A plan reads no data: the class-weight matrix is sized for VoxCeleb2 dev unless model.num_classes says.
    info = super().planning_info()
    return dataclasses.replace(info, num_classes=int(self.config.model.num_classes) or PLANNING_NUM_CLASSES)

  def build(self, info: DataInfo, platform: str) -> "ReDimNetMRLProgram":
    return ReDimNetMRLProgram(self.config, build_model(self.config, info.num_classes, platform),
                              info.steps_per_epoch, self.segment_samples, self.backbone_variables)


def segment_samples(config) -> int:
  return int(round(float(config.segment_seconds) * speakers.SAMPLE_RATE))


@dataclasses.dataclass(frozen=True, eq=False)
class ReDimNetMRLProgram(Program):
  config: object
  model: mrl.MatryoshkaSpeakerModel
  steps_per_epoch: int
  segment_samples: int
  backbone_variables: dict | None = None  # converted official weights (init_from)

  @property
  def dims(self) -> tuple[int, ...]:
    return tuple(int(d) for d in self.config.mrl_dims)

  @property
  def dim_weights(self) -> tuple[float, ...]:
    return tuple(float(w) for w in self.config.mrl_weights)

  def batch_spec(self, global_batch: int):
    return {"wave": jax.ShapeDtypeStruct((global_batch, self.segment_samples), jnp.float32),
            "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32)}

  def init_variables(self, rng, batch_spec):
    wave = jnp.zeros((1, self.segment_samples), jnp.float32)
    if self.backbone_variables is None:
      return dict(self.model.init(rng, wave))
    # Converted backbone: only the head is initialised (no random draws for the backbone at all).
    head = self.model.head.clone(parent=None).init(rng, jnp.zeros((1, self.model.backbone.embed_dim), jnp.float32))
    return {name: {"backbone": jax.tree.map(jnp.asarray, self.backbone_variables[name]), "head": head[name]}
            for name in ("params", "batch_stats")}

  def phases(self, total_steps: int) -> list[Phase]:
    frozen_end = min(int(self.config.freeze_backbone_epochs) * self.steps_per_epoch, total_steps)
    phases = [Phase("frozen_backbone", 0, frozen_end, lambda path: path[0] == "head")] if frozen_end else []
    if frozen_end < total_steps:
      phases.append(Phase("full", frozen_end, total_steps))
    return phases

  def margin(self, step):
    c = self.config
    return mrl.margin_schedule(step, margin=float(c.margin), steps_per_epoch=self.steps_per_epoch,
                               ramp_start_epoch=int(c.margin_ramp_start_epoch),
                               ramp_end_epoch=int(c.margin_ramp_end_epoch))

  def loss_fn(self, params, model_state, batch, rng, step, phase: Phase):
    variables = {"params": params, **model_state}
    (z, _), updates = self.model.apply(
        variables, batch["wave"], train=True, freeze_backbone=phase.name == "frozen_backbone",
        mutable=["batch_stats"], rngs={"specaug": rng, "dropout": jax.random.fold_in(rng, 1)})
    margin = self.margin(step)
    loss, metrics = mrl.matryoshka_aam_loss(z, params["head"][mrl.CLASS_WEIGHTS], batch["label"], self.dims,
                                            self.dim_weights, margin=margin, scale=float(self.config.scale))
    return loss.astype(jnp.float32), (dict(model_state, **updates), dict(metrics, margin=margin))
