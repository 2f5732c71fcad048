"""DreaMS self-supervised pre-training on tandem mass spectra (pluskal-lab/DreaMS; issue 23).

Each training example is a pair of spectra from one LC-MS run. The step masks ~30 % of each spectrum's
peaks (drawn by intensity, inside the jitted step), predicts their m/z bins (focal loss) and whether the
first spectrum elutes before the second (retention order): total 0.8 * mask + 0.2 * order
(`vqax.models.dreams_objectives`). One phase trains everything but the frozen Fourier frequency table,
which the phase's trainable mask keeps bit-identical (no update, no weight decay).
The model starts from `init_from` (a `vqax convert dreams` folder) when set, else from random init.
"""
import dataclasses
import json
import logging
import pathlib

import jax
import jax.numpy as jnp

from vqax.data import spectra as spectra_lib
from vqax.errors import CheckpointError, ConfigError, DataError
from vqax.models import dreams as dreams_lib
from vqax.models import dreams_objectives as objectives
from vqax.models.precision import memory_settings
from vqax.ops import forms
from vqax.train.task import BatchSizes, DataInfo, Phase, Program, Task, TrainData

log = logging.getLogger(__name__)

# Fields of c.model that are DreaMS module fields; how it runs (dtype, remat, layer forms for the platform)
# is set by build_model.
RUN_FIELDS = ("dtype", "param_dtype", "remat_policy", "layer_forms", "parent", "name")
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(dreams_lib.DreaMS) if f.name not in RUN_FIELDS)
ATTENTION_BACKENDS = {"xla": None, "cudnn": "cudnn"}
FROZEN_FOURIER = ("fourier_enc", "b")


def model_fields(config) -> dict:
  """The DreaMS fields of `config.model` (attention_backend spelled 'xla' or 'cudnn' there)."""
  m = config.model
  fields = {name: m[name] for name in MODEL_FIELDS if name in m}
  backend = fields.get("attention_backend", "xla")
  if backend not in ATTENTION_BACKENDS:
    raise ConfigError(f"model.attention_backend={backend!r}: expected one of {', '.join(ATTENTION_BACKENDS)}")
  fields["attention_backend"] = ATTENTION_BACKENDS[backend]
  return fields


def build_model(config, platform: str | None = None) -> dreams_lib.DreaMS:
  """The DreaMS the config describes, computing in its compute dtype with its remat policy and the layer
  forms of `platform` (default: JAX's)."""
  memory = memory_settings(config)
  setting = config.model.get("layer_forms", "auto")  # workdirs from before layer_forms have none: auto
  if setting not in forms.LAYER_FORMS:
    raise ConfigError(f"model.layer_forms={setting!r}: expected one of {', '.join(forms.LAYER_FORMS)}")
  model = dreams_lib.DreaMS(**model_fields(config), dtype=memory.dtype, remat_policy=memory.remat_policy,
                            layer_forms=forms.resolve(setting, platform or jax.default_backend()))
  dreams_lib.validate(model)  # a bad size fails here, as a ConfigError, before anything is traced
  return model


def validate_config(config) -> None:
  """Range checks that need no data, so a bad value fails before any long work."""
  for name in ("batch_size", "epochs", "max_peaks_n", "min_n_masks"):
    if int(config[name]) <= 0:
      raise ConfigError(f"{name}={config[name]}: expected a positive integer")
  if not 0 < float(config.frac_masks) < 1:
    raise ConfigError(f"frac_masks={config.frac_masks}: expected a fraction in (0, 1)")
  if not 0 <= float(config.ret_order_loss_w) <= 1:
    raise ConfigError(f"ret_order_loss_w={config.ret_order_loss_w}: expected a weight in [0, 1]")
  if float(config.focal_loss_gamma) < 0:
    raise ConfigError(f"focal_loss_gamma={config.focal_loss_gamma}: expected >= 0")
  if not 0 <= float(config.mz_shift_aug_p) <= 1 or float(config.mz_shift_aug_max) < 0:
    raise ConfigError(f"mz_shift_aug_p={config.mz_shift_aug_p} must be in [0, 1] and mz_shift_aug_max="
                      f"{config.mz_shift_aug_max} >= 0")
  if config.nonfinite not in ("skip", "halt"):
    raise ConfigError(f"nonfinite={config.nonfinite!r}: expected skip or halt")
  if not config.model.mz_head:
    raise ConfigError("model.mz_head=False: pre-training needs the masked m/z head")
  if float(config.ret_order_loss_w) > 0 and not config.model.ro_head:
    raise ConfigError("model.ro_head=False with ret_order_loss_w > 0: set ret_order_loss_w=0 or keep the head")
  build_model(config)


def list_spectra_files(data_root) -> list[pathlib.Path]:
  """data_root itself (one spectra file) or every .mgf/.mzML/.hdf5 file under the folder, sorted."""
  root = pathlib.Path(data_root)
  if root.is_file():
    return [root]
  if not root.is_dir():
    raise DataError(f"data_root {root}: no such file or folder (expected a spectra file or a folder of "
                    f"{', '.join(spectra_lib.FORMATS)} files)")
  files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in spectra_lib.FORMATS)
  if not files:
    raise DataError(f"data_root {root}: no spectra files ({', '.join(spectra_lib.FORMATS)})")
  return files


def read_spectra_files(data_root, *, skip_bad_spectra: bool, skip_bad_files: bool = False) -> dict:
  """{'spectra', 'files', 'bad_spectra' (one line each), 'bad_files'} of every file under data_root."""
  spectra, bad_spectra, bad_files, files = [], [], [], list_spectra_files(data_root)
  for path in files:
    try:
      result = spectra_lib.read_spectra(path, skip_bad_spectra=skip_bad_spectra)
    except DataError as e:
      if not skip_bad_files:
        raise
      log.warning("skipping bad file: %s", e)
      bad_files.append(str(e))
      continue
    for reason in result.skipped_reasons:
      log.warning("skipping bad spectrum: %s", reason)
    spectra.extend(result.spectra)
    bad_spectra.extend(result.skipped_reasons)
  return {"spectra": spectra, "files": [str(p) for p in files], "bad_spectra": bad_spectra,
          "bad_files": bad_files}


def load_init(init_from, model: dreams_lib.DreaMS) -> dict:
  """Host copies of converted official parameters; CheckpointError unless they were converted from the
  architecture the config asks for (checked before the weights are read)."""
  from vqax.models.dreams_convert import CONFIG_FILE, load_converted
  config_file = pathlib.Path(init_from) / CONFIG_FILE
  if not config_file.is_file():
    raise CheckpointError(f"init_from={init_from}: no {CONFIG_FILE} (expected a `vqax convert dreams` output "
                          f"folder)")
  found = json.loads(config_file.read_text())
  shape_fields = ("d_peak", "d_fourier", "n_layers", "n_heads", "ff_peak_depth", "ff_fourier_depth",
                  "ff_fourier_d", "ff_out_depth", "ffs_bias", "transformer_bias", "pre_norm", "hot_mz_bin_size",
                  "max_mz", "fourier_x_min", "mz_head", "ro_head")
  differing = [f for f in shape_fields if f in found and found[f] != getattr(model, f)]
  if differing:
    raise CheckpointError(f"init_from={init_from}: converted from a different DreaMS (differs in "
                          f"{', '.join(f'model.{f}={found[f]!r}' for f in differing)}); set those fields to match")
  variables, _ = load_converted(init_from)
  return jax.device_get(dict(variables))


class DreaMSTask(Task):
  name = "dreams"
  flag_aliases = {"max_peaks_n": "max_peaks_n", "skip_bad_spectra": "skip_bad_spectra"}
  boolean_flags = frozenset({"skip_bad_spectra"})
  fit_fields = ("batch_size", "max_peaks_n")
  commands = "vqax.tasks.dreams.commands"
  demo_config = str(pathlib.Path(__file__).resolve().parents[3] / "configs" / "dreams.py") + ":demo"
  demo_data_root = "data/synth_spectra/train"

  @classmethod
  def make_demo_data(cls, data_root: str) -> None:
    from vqax.data.synth_spectra import generate_spectra
    root = pathlib.Path(data_root)
    if root.name != "train":
      raise ConfigError(f"--data_root {root}: the dreams demo trains on a folder named train (the synthetic set "
                        f"goes to its parent, with the held-out test/ runs beside it)")
    generate_spectra(root.parent, seed=0)  # a no-op when the same set is already there

  @classmethod
  def evaluate_demo(cls, workdir: str):
    from vqax.tasks.dreams.evaluation import evaluate_workdir
    config = json.loads((pathlib.Path(workdir) / "config.json").read_text())
    root = pathlib.Path(config["data_root"])
    held_out = root.parent / "test" if (root.parent / "test").is_dir() else root
    return evaluate_workdir(workdir, held_out)

  def __init__(self, config):
    validate_config(config)
    super().__init__(config)
    self.init_variables = load_init(config.init_from, build_model(config)) if config.init_from else None

  def prepare_data(self, workdir, batch: BatchSizes) -> TrainData:
    c = self.config
    read = read_spectra_files(c.data_root, skip_bad_spectra=bool(c.skip_bad_spectra),
                              skip_bad_files=bool(c.skip_bad_files))
    spectra = read["spectra"]
    runs = spectra_lib.group_runs(spectra)
    n_pairs = sum(len(idx) for idx in runs.values())
    if n_pairs < batch.global_batch:
      raise DataError(f"data_root {c.data_root}: {n_pairs} spectra with retention times in runs of two or more "
                      f"({len(spectra)} read), fewer than one global batch ({batch.global_batch})")
    loader = spectra_lib.retention_order_loader(
        spectra, batch_size=batch.per_process, seed=int(c.seed), max_peaks_n=int(c.max_peaks_n),
        mz_shift_p=float(c.mz_shift_aug_p), mz_shift_max=float(c.mz_shift_aug_max),
        worker_count=int(c.worker_count))
    summary = {"files": len(read["files"]), "spectra": len(spectra), "training_spectra": n_pairs, "runs": len(runs),
               "bad_spectra": read["bad_spectra"], "bad_files": read["bad_files"]}
    if jax.process_index() == 0:
      skipped = f"; skipped {len(read['bad_spectra'])} bad spectra" if read["bad_spectra"] else ""
      print(f"[vqax] dreams: {len(spectra)} spectra from {len(read['files'])} files, {n_pairs} in {len(runs)} "
            f"LC-MS runs with retention times{skipped}", flush=True)
    info = DataInfo(steps_per_epoch=n_pairs // batch.global_batch)
    return TrainData(loader, info, samples_per_step=batch.global_batch, sample_unit="pairs", summary=summary)

  def build(self, info: DataInfo, platform: str) -> "DreaMSProgram":
    return DreaMSProgram(self.config, build_model(self.config, platform), self.init_variables)


@dataclasses.dataclass(frozen=True, eq=False)
class DreaMSProgram(Program):
  config: object
  model: dreams_lib.DreaMS
  converted: dict | None = None  # official weights (init_from)

  def batch_spec(self, global_batch: int):
    n = int(self.config.max_peaks_n) + 1
    return {"spec": jax.ShapeDtypeStruct((global_batch, 2, n, 2), jnp.float32),
            "ro_label": jax.ShapeDtypeStruct((global_batch,), jnp.float32)}

  def init_variables(self, rng, batch_spec):
    if self.converted is not None:
      return {"params": jax.tree.map(jnp.asarray, self.converted["params"])}
    return dict(dreams_lib.init_variables(self.model, rng, int(self.config.max_peaks_n)))

  def phases(self, total_steps: int) -> list[Phase]:
    trainable = bool(self.model.fourier_trainable)
    return [Phase("full", 0, total_steps, lambda path: trainable or tuple(path) != FROZEN_FOURIER)]

  def loss_fn(self, params, model_state, batch, rng, step, phase: Phase):
    c = self.config
    loss, metrics = objectives.dreams_pretraining_loss(
        self.model, params, batch, rng, train=True, frac_masks=float(c.frac_masks), min_n_masks=int(c.min_n_masks),
        gamma=float(c.focal_loss_gamma), ro_weight=float(c.ret_order_loss_w))
    return loss.astype(jnp.float32), (model_state, metrics)

