"""ViT classifier of log-mel spectrograms with a layer-unfreezing schedule and optional GAN augmentation.

One trainer phase per unfreezing stage (`stages`): the step of a stage differentiates only the units the
schedule has unfrozen so far, and updates each group of them with its own optimizer state (frozen layers
cost no gradient memory; never-unfrozen ones no optimizer memory either). The input adapter is a model
setting: "resize_rgb" (the seed: bilinear to image_size, repeated over 3 channels) or "native" (1 channel at
the spectrogram's own size, position embeddings interpolated). `init_from` starts from a `vqax convert vit`
folder. With `augment.per_class = N` and `augment.gan_workdir`, N spectrograms per class from that GAN's EMA
generator join the training clips (generated once, in the workdir).
"""
import dataclasses
import json
import pathlib

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqax.data import class_folders as cf
from vqax.data.pipeline import make_loader
from vqax.errors import CheckpointError, ConfigError, DataError
from vqax.models import vit as vit_lib
from vqax.models.precision import memory_settings
from vqax.tasks import class_spectrograms as data_lib
from vqax.tasks.vit_classifier import stages as stages_lib
from vqax.train import distributed
from vqax.train import optimizer as optimizer_lib
from vqax.train.step import keep_if_finite
from vqax.train.task import (
  PLANNING_STEPS_PER_EPOCH,
  BatchSizes,
  DataInfo,
  Phase,
  Program,
  Task,
  TrainData,
)

PLANNING_NUM_CLASSES = 2  # the seed's two classes: what a plan assumes unless model.num_classes says
INPUT_ADAPTERS = ("resize_rgb", "native")
SYNTHETIC_FILE = "synthetic.npy"  # in the workdir: the GAN spectrograms trained on, classifier units
# Settings that shape the weights: a converted checkpoint must agree with the config on these.
WEIGHT_FIELDS = ("hidden_size", "num_layers", "num_heads", "mlp_dim", "patch_size")


def model_settings(config) -> dict:
  """The ViT fields the config describes (variant + overrides + adapter), before the class count."""
  m = config.model
  if m.variant not in vit_lib.VARIANTS:
    raise ConfigError(f"model.variant={m.variant!r}: expected one of {', '.join(vit_lib.VARIANTS)}")
  if m.input_adapter not in INPUT_ADAPTERS:
    raise ConfigError(f"model.input_adapter={m.input_adapter!r}: expected one of {', '.join(INPUT_ADAPTERS)}")
  overrides = m.overrides.to_dict() if hasattr(m.overrides, "to_dict") else dict(m.overrides)
  settings = {**vit_lib.VARIANTS[m.variant], **overrides, "input_adapter": m.input_adapter}
  stored = _converted_settings(config.init_from) if config.init_from else {}
  if "image_size" in stored and "image_size" not in overrides:  # the grid its position embeddings are for
    overrides["image_size"] = settings["image_size"] = tuple(stored["image_size"])
  if m.input_adapter == "native":
    settings["num_channels"] = 1
    if "image_size" not in overrides:  # native: positions stored for the spectrogram's own grid
      settings["image_size"] = data_lib.clip_config(config).shape
  else:
    settings["num_channels"] = 3
  return settings


def _converted_settings(init_from) -> dict:
  from vqax.models.vit_convert import CONFIG_FILE
  path = pathlib.Path(init_from) / CONFIG_FILE
  return json.loads(path.read_text()) if path.is_file() else {}


def build_model(config, num_classes: int) -> vit_lib.ViT:
  memory = memory_settings(config)
  return vit_lib.vit(config.model.variant, **model_settings(config), num_classes=int(num_classes),
                     dtype=memory.dtype, remat_policy=memory.remat_policy)


def validate_config(config) -> None:
  for name in ("batch_size", "epochs", "eval_batch_size"):
    if int(config[name]) <= 0:
      raise ConfigError(f"{name}={config[name]}: expected a positive integer")
  if int(config.model.num_classes) == 1:
    raise ConfigError("model.num_classes=1: a classifier needs at least 2 classes (0: the class folders)")
  if int(config.augment.per_class) < 0:
    raise ConfigError(f"augment.per_class={config.augment.per_class}: expected an integer >= 0")
  if int(config.augment.per_class) and not config.augment.gan_workdir:
    raise ConfigError("augment.per_class > 0 needs augment.gan_workdir (a trained spectrogram_gan workdir)")
  if config.nonfinite not in ("skip", "halt"):
    raise ConfigError(f"nonfinite={config.nonfinite!r}: expected skip or halt")
  data_lib.validate_data_fields(config)
  model = build_model(config, int(config.model.num_classes) or PLANNING_NUM_CLASSES)
  stages_lib.check_last_stage(config.unfreeze_schedule, model.num_layers, int(config.last_stage))
  stages_lib.build_stages(model, config.unfreeze_schedule, int(config.epochs), int(config.last_stage))


def load_init(init_from, model: vit_lib.ViT) -> dict:
  """Host params of a `vqax convert vit` folder for `model`: 3-channel patch kernels summed for the native
  adapter; the head dropped (drawn fresh) when its class count differs. CheckpointError on other mismatches."""
  from vqax.models import vit_convert
  config_file = pathlib.Path(init_from) / vit_convert.CONFIG_FILE
  if not config_file.is_file():
    raise CheckpointError(f"init_from={init_from}: no {vit_convert.CONFIG_FILE} (expected a `vqax convert vit` "
                          "output folder)")
  stored = json.loads(config_file.read_text())
  differing = [f for f in WEIGHT_FIELDS if stored.get(f) != getattr(model, f)]
  if list(stored.get("image_size", [])) != list(model.image_size):
    differing.append("image_size")
  if differing:
    raise CheckpointError(f"init_from={init_from}: converted from another ViT than the config's model (differs in "
                          f"{', '.join(differing)}: {', '.join(f'{f}={stored.get(f)}' for f in differing)})")
  variables, converted = vit_convert.load_converted(init_from)
  if model.num_channels == 1 and converted.num_channels == 3:
    variables = vit_convert.to_single_channel(variables)
  params = jax.device_get(dict(variables["params"]))
  if converted.num_classes != model.num_classes:
    params.pop("head")
  return params


@dataclasses.dataclass(frozen=True)
class SyntheticRecord:
  """Row `index` of a generated-spectrogram file (already in the classifier's units)."""
  path: str
  index: int
  label: int


@dataclasses.dataclass
class LoadExample(grain.transforms.Map):
  """A clip record (decoded, standardised) or a synthetic record -> {"spectrogram", "label"}."""
  clip: cf.ClipConfig
  normalization: cf.Normalization

  def map(self, record):
    if isinstance(record, SyntheticRecord):
      spec = np.asarray(np.load(record.path, mmap_mode="r")[record.index], np.float32)
    else:
      spec = self.normalization.apply(cf.clip_spectrogram(record, self.clip))
    return {"spectrogram": spec, "label": np.int32(record.label)}


def synthetic_records(config, workdir, data: data_lib.ClassData) -> list[SyntheticRecord]:
  """N generated spectrograms per class from augment.gan_workdir's EMA generator, saved in the workdir."""
  n = int(config.augment.per_class)
  if not n:
    return []
  from vqax.tasks.spectrogram_gan.generation import load_generator
  trained = load_generator(config.augment.gan_workdir)
  if list(trained.classes) != list(data.classes):
    raise DataError(f"augment.gan_workdir {config.augment.gan_workdir}: the GAN was trained on classes "
                    f"{trained.classes}, the classifier's data_root has {data.classes}")
  shape = (trained.generator.n_mels, trained.generator.frames)
  if shape != tuple(data.clip.shape):
    raise DataError(f"augment.gan_workdir {config.augment.gan_workdir}: the GAN makes {list(shape)} spectrograms, "
                    f"the classifier's clips are {list(data.clip.shape)}")
  labels = np.repeat(np.arange(len(data.classes)), n)
  path = pathlib.Path(workdir).absolute() / SYNTHETIC_FILE
  if jax.process_index() == 0:
    specs = data.normalization.apply(trained.log_mels(labels, seed=int(config.augment.seed)))
    np.save(path, specs)
  distributed.barrier("synthetic spectrograms written")
  return [SyntheticRecord(str(path), i, int(label)) for i, label in enumerate(labels)]


class ViTClassifierTask(Task):
  name = "vit_classifier"
  commands = "vqax.tasks.vit_classifier.commands"

  def __init__(self, config):
    validate_config(config)
    super().__init__(config)
    self.init_params = None
    if config.init_from:
      self.init_params = load_init(config.init_from, build_model(config, int(config.model.num_classes) or
                                                                 PLANNING_NUM_CLASSES))

  def prepare_data(self, workdir, batch: BatchSizes) -> TrainData:
    c = self.config
    data = data_lib.prepare(c, workdir)
    synthetic = synthetic_records(c, workdir, data)
    records = list(data.train) + synthetic
    if len(records) < batch.global_batch:
      raise DataError(f"data_root {c.data_root}: {len(records)} training clips, fewer than one global batch "
                      f"({batch.global_batch})")
    loader = make_loader(records, [LoadExample(data.clip, data.normalization)], batch_size=batch.per_process,
                         seed=int(c.seed), worker_count=int(c.worker_count))
    info = DataInfo(steps_per_epoch=len(records) // batch.global_batch, num_classes=len(data.classes))
    summary = {"classes": data.classes, "train_clips": len(data.train), "synthetic": len(synthetic),
               "test_clips": len(data.test)}
    return TrainData(loader, info, samples_per_step=batch.global_batch, summary=summary)

  def planning_info(self) -> DataInfo:
    return DataInfo(PLANNING_STEPS_PER_EPOCH, int(self.config.model.num_classes) or PLANNING_NUM_CLASSES)

  def build(self, info: DataInfo, platform: str) -> "ViTClassifierProgram":
    model = build_model(self.config, info.num_classes)
    init_params = self.init_params
    if init_params is not None and "head" in init_params and \
        init_params["head"]["kernel"].shape[-1] != info.num_classes:
      init_params = {k: v for k, v in init_params.items() if k != "head"}
    stages = stages_lib.build_stages(model, self.config.unfreeze_schedule, int(self.config.epochs),
                                     int(self.config.last_stage))
    return ViTClassifierProgram(self.config, model, info.steps_per_epoch, stages, init_params)


@dataclasses.dataclass(frozen=True, eq=False)
class ViTClassifierProgram(Program):
  config: object
  model: vit_lib.ViT
  steps_per_epoch: int
  stages: tuple
  init_params: dict | None = None

  def batch_spec(self, global_batch: int):
    shape = data_lib.clip_config(self.config).shape
    return {"spectrogram": jax.ShapeDtypeStruct((global_batch, *shape), jnp.float32),
            "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32)}

  def init_variables(self, rng, batch_spec):
    x = jnp.zeros((1, *batch_spec["spectrogram"].shape[1:]), jnp.float32)
    variables = dict(self.model.init(rng, x))
    variables.pop("intermediates", None)
    if self.init_params is not None:  # converted weights; the head stays fresh when it was dropped
      variables["params"] = {**variables["params"], **jax.tree.map(jnp.asarray, self.init_params)}
    return variables

  def stage_start_step(self, stage) -> int:
    return stage.start_epoch * self.steps_per_epoch

  def phases(self, total_steps: int) -> list[Phase]:
    phases = []
    for i, stage in enumerate(self.stages):
      end = self.stage_start_step(self.stages[i + 1]) if i + 1 < len(self.stages) else total_steps
      phases.append(Phase(stage.name, min(self.stage_start_step(stage), total_steps), min(end, total_steps),
                          lambda path, partition=stage.partition: _trains(path, partition)))
    return [p for p in phases if p.end_step > p.start_step] or phases[-1:]

  def make_optimizer(self, total_micro_steps: int):
    """{stage name: AdamW over that stage's new units}, each following the run's warm-up + cosine schedule
    from its stage's first update on (clipping is joint, in the step)."""
    c = self.config
    k = int(c.gradient_accumulation_steps)
    if k < 1:
      raise ConfigError(f"gradient_accumulation_steps={k}: expected an integer >= 1")
    schedule = optimizer_lib.learning_rate_schedule(c, max(total_micro_steps // k, 1))
    txs = {}
    for stage in self.stages:
      offset = self.stage_start_step(stage) // k
      tx = optax.adamw(lambda count, offset=offset: schedule(count + offset), weight_decay=float(c.weight_decay))
      txs[stage.name] = optax.MultiSteps(tx, every_k_schedule=k) if k > 1 else tx
    return txs, schedule

  def init_state(self, rng, batch_spec, tx):
    state = super().init_state(rng, batch_spec, optax.identity())
    opt_state = {s.name: tx[s.name].init(s.group.split(state.params)[0]) for s in self.stages}
    return state.replace(opt_state=opt_state)

  def loss_and_metrics(self, logits, labels):
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

  def train_step(self, state, batch, *, tx, phase):
    index = next(i for i, s in enumerate(self.stages) if s.name == phase.name)
    stage = self.stages[index]
    trainable, frozen = stage.partition.split(state.params)

    def loss_of(t):
      logits, _ = stage.partition.apply(self.model, t, frozen, batch["spectrogram"])
      return self.loss_and_metrics(logits, batch["label"])

    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    clip = float(self.config.grad_clip_norm)
    if clip > 0:
      scale = jnp.minimum(1.0, clip / (grad_norm + 1e-12))
      grads = jax.tree.map(lambda g: g * scale, grads)
    params, opt_state = state.params, dict(state.opt_state)
    for earlier in self.stages[:index + 1]:
      group = earlier.group
      group_params = group.split(state.params)[0]
      updates, new_opt = tx[earlier.name].update(stages_lib.take_group(grads, stage.partition, group),
                                                 state.opt_state[earlier.name], group_params)
      new_params = keep_if_finite(finite, optax.apply_updates(group_params, updates), group_params)
      params = stages_lib.put_group(params, group, new_params)
      opt_state[earlier.name] = keep_if_finite(finite, new_opt, state.opt_state[earlier.name])
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
    return new_state, dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)


def _trains(path, partition) -> bool:
  """Whether a full-params leaf has trainable parts in `partition` (the encoder's stacked leaves: any row)."""
  return bool(partition.trainable_layers) if path[0] == "encoder" else path[0] in partition.units
