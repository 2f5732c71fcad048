"""Official DreaMS weights (Lightning `.ckpt`, a torch state-dict file, or an `.npz` of `param/<key>`
arrays) -> Flax variables for `vqax.models.dreams.DreaMS`, and an orbax folder holding them.

Torch files are read by `vqax.models.torch_checkpoint` (no torch, no pickled code run). The model's
fields come from the checkpoint's own arguments where it has them (Lightning `hyper_parameters['args']`,
or the `.npz`'s sidecar json `model_config.parsed_args_after_DreaMS_init`), else from the tensor shapes
(every size but `n_heads`, which shapes cannot tell; pass it). Conversion is strict both ways: every
state-dict key is consumed, every Flax leaf filled with the shape `init` gives it.

Official layout -> Flax (torch Linear weight [out, in] is a Flax kernel [in, out]):
  fourier_enc.b [1, F] (and its alias 'fourier_enc.Fourier frequencies') -> fourier_enc/b [F]
  {ff_peak,ff_fourier,ff_out}.ff.{3 l}      -> <mlp>/dense_{l} (Linear, Dropout, ReLU per hidden layer)
  transformer_encoder.atts.{i}.weights [4d, d] = [Wq; Wk; Wv; Wo] -> layers/attention/{query,key,value}
      kernel [L, d, H, d/H] and out kernel [L, H, d/H, d] (head h = channels [h d/H, (h+1) d/H))
  transformer_encoder.ffs.{i}.{in,out}_proj -> layers/ffn_{in,out}
  transformer_encoder.scales.{2i, 2i+1, 2L} -> layers/attention_norm, layers/ffn_norm, final_norm
  ro_out.weight [1, 2d] -> ro_out/kernel [2d, 1]
"""
import dataclasses
import json
import pathlib
import re
from typing import Mapping
import zipfile

import jax
import numpy as np
import orbax.checkpoint as ocp

from vqax.errors import CheckpointError
from vqax.models.conversion import check_converted_tree
from vqax.models.dreams import DreaMS, init_variables
from vqax.models.torch_checkpoint import Opaque, find_state_dict, load_torch_file

CONFIG_FILE = "dreams_config.json"
VARIABLES_DIR = "variables"
# How a model runs (dtype, layer forms) is the caller's, not the checkpoint's.
_FIELD_NAMES = {f.name for f in dataclasses.fields(DreaMS)} - {"parent", "name", "dtype", "param_dtype", "layer_forms"}


# ----------------------------------------------------------------------------------------------------------
# Model fields from official arguments or from the tensors
# ----------------------------------------------------------------------------------------------------------


def fields_from_args(args: Mapping) -> dict:
  """DreaMS fields from the official argparse arguments (train_argparse names)."""
  if args.get("graphormer_parametrized"):
    raise CheckpointError("graphormer_parametrized checkpoints are not ported (only the pre-training "
                          "non-parametrized Graphormer bias)")
  if args.get("fourier_strategy", "lin_float_int") != "lin_float_int":
    raise CheckpointError(f"fourier_strategy {args['fourier_strategy']!r} is not ported (only lin_float_int)")
  if args.get("charge_feature") or args.get("vanilla_transformer") or args.get("d_mz_token"):
    raise CheckpointError("charge_feature / vanilla_transformer / d_mz_token checkpoints are not ported")
  fields = {k: args[k] for k in ("d_peak", "d_fourier", "n_layers", "n_heads", "ff_peak_depth",
                                 "ff_fourier_depth", "ff_fourier_d", "ff_out_depth", "pre_norm", "dropout",
                                 "att_dropout", "residual_dropout", "ff_dropout", "fourier_trainable",
                                 "graphormer_mz_diffs", "hot_mz_bin_size") if args.get(k) is not None}
  if "no_ffs_bias" in args:
    fields["ffs_bias"] = not args["no_ffs_bias"]
  if "no_transformer_bias" in args:
    fields["transformer_bias"] = not args["no_transformer_bias"]
  if args.get("fourier_min_freq"):
    fields["fourier_x_min"] = args["fourier_min_freq"]
  dformat = args.get("dformat")
  if isinstance(dformat, Mapping):
    fields["max_mz"] = float(dformat.get("max_mz", 1000.0))
    if not args.get("fourier_min_freq") and "max_tbxic_stdev" in dformat:
      fields["fourier_x_min"] = float(dformat["max_tbxic_stdev"])
  if "train_objective" in args:
    fields["mz_head"] = args["train_objective"] == "mask_mz_hot"
  if "ret_order_loss_w" in args:
    fields["ro_head"] = bool(args["ret_order_loss_w"])
  return fields


def fields_from_state_dict(state_dict: Mapping[str, np.ndarray], n_heads: int = 8) -> dict:
  """Every size the tensors determine (all but n_heads)."""
  def mlp(prefix):
    ids = sorted(int(m.group(1)) for k in state_dict if (m := re.fullmatch(rf"{prefix}\.ff\.(\d+)\.weight", k)))
    return ids
  try:
    layers = sorted({int(m.group(1)) for k in state_dict
                     if (m := re.fullmatch(r"transformer_encoder\.atts\.(\d+)\.weights", k))})
    fourier, peak, out = mlp("ff_fourier"), mlp("ff_peak"), mlp("ff_out")
    d_model = state_dict["transformer_encoder.atts.0.weights"].shape[1]
    n_scales = len({k.split(".")[2] for k in state_dict if k.startswith("transformer_encoder.scales.")})
    fields = dict(
        n_layers=len(layers), n_heads=n_heads,
        d_fourier=state_dict[f"ff_fourier.ff.{fourier[-1]}.weight"].shape[0],
        d_peak=state_dict[f"ff_peak.ff.{peak[-1]}.weight"].shape[0],
        ff_fourier_depth=len(fourier), ff_peak_depth=len(peak),
        ff_fourier_d=state_dict[f"ff_fourier.ff.{fourier[0]}.weight"].shape[0],
        ffs_bias="ff_peak.ff.0.bias" in state_dict,
        transformer_bias="transformer_encoder.atts.0.biases" in state_dict,
        pre_norm=n_scales == 2 * len(layers) + 1,
        mz_head=bool(out), ro_head="ro_out.weight" in state_dict,
        graphormer_mz_diffs=True)  # shapes cannot tell; the pre-training config has it
  except (KeyError, IndexError) as e:
    raise CheckpointError(f"not a DreaMS state dict: cannot find {e}") from None
  if d_model != fields["d_fourier"] + fields["d_peak"]:
    raise CheckpointError(f"attention width {d_model} != d_peak {fields['d_peak']} + d_fourier "
                          f"{fields['d_fourier']}")
  if out:
    fields["ff_out_depth"] = len(out)
    bins = state_dict[f"ff_out.ff.{out[-1]}.weight"].shape[0]
    fields["hot_mz_bin_size"] = 1000.0 / bins  # dformat A max_mz 1000
  return fields


# ----------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------


class _Converter:
  def __init__(self, state_dict: Mapping[str, np.ndarray]):
    self.state_dict = state_dict
    self.used: set[str] = set()
    self.variables: dict = {"params": {}}

  def take(self, key: str) -> np.ndarray:
    if key not in self.state_dict:
      raise CheckpointError(f"state dict key {key!r} is missing")
    self.used.add(key)
    return np.asarray(self.state_dict[key], np.float32)

  def put(self, path: tuple[str, ...], value: np.ndarray) -> None:
    node = self.variables["params"]
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value

  def mlp(self, key: str, path: str, depth: int, bias: bool) -> None:
    for layer in range(depth):
      self.put((path, f"dense_{layer}", "kernel"), self.take(f"{key}.ff.{3 * layer}.weight").T)
      if bias:
        self.put((path, f"dense_{layer}", "bias"), self.take(f"{key}.ff.{3 * layer}.bias"))


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model: DreaMS) -> dict:
  """Official DreaMS state dict (name -> array) -> Flax variables for `model`.

  Raises CheckpointError naming the first missing, unexpected or mis-shaped tensor.
  """
  c = _Converter(state_dict)
  d, heads, L = model.d_model, model.n_heads, model.n_layers
  b = c.take("fourier_enc.b").reshape(-1)
  if "fourier_enc.Fourier frequencies" in state_dict:
    alias = c.take("fourier_enc.Fourier frequencies").reshape(-1)
    if alias.shape != b.shape or not np.array_equal(alias, b):
      raise CheckpointError("'fourier_enc.Fourier frequencies' differs from 'fourier_enc.b' (one parameter "
                            "registered twice by the official code)")
  c.put(("fourier_enc", "b"), b)
  c.mlp("ff_fourier", "ff_fourier", model.ff_fourier_depth, model.ffs_bias)
  c.mlp("ff_peak", "ff_peak", model.ff_peak_depth, model.ffs_bias)
  stacks: dict[tuple[str, ...], list] = {}
  for i in range(L):
    key = f"transformer_encoder.atts.{i}"
    w = c.take(f"{key}.weights")
    if w.shape != (4 * d, d):
      raise CheckpointError(f"{key}.weights has shape {w.shape}, expected {(4 * d, d)}")
    layer = {("attention", name, "kernel"): w[j * d:(j + 1) * d].T.reshape(d, heads, d // heads)
             for j, name in enumerate(("query", "key", "value"))}
    layer[("attention", "out", "kernel")] = w[3 * d:].T.reshape(heads, d // heads, d)
    if model.transformer_bias:
      bias = c.take(f"{key}.biases")
      for j, name in enumerate(("query", "key", "value")):
        layer[("attention", name, "bias")] = bias[j * d:(j + 1) * d].reshape(heads, d // heads)
      layer[("attention", "out", "bias")] = bias[3 * d:]
    for proj, name in (("in_proj", "ffn_in"), ("out_proj", "ffn_out")):
      layer[(name, "kernel")] = c.take(f"transformer_encoder.ffs.{i}.{proj}.weight").T
      if model.transformer_bias:
        layer[(name, "bias")] = c.take(f"transformer_encoder.ffs.{i}.{proj}.bias")
    for j, name in enumerate(("attention_norm", "ffn_norm")):
      scale = f"transformer_encoder.scales.{2 * i + j}"
      layer[(name, "scale")], layer[(name, "bias")] = c.take(f"{scale}.weight"), c.take(f"{scale}.bias")
    for path, value in layer.items():
      stacks.setdefault(path, []).append(value)
  for path, values in stacks.items():
    c.put(("layers", *path), np.stack(values))
  if model.pre_norm:
    c.put(("final_norm", "scale"), c.take(f"transformer_encoder.scales.{2 * L}.weight"))
    c.put(("final_norm", "bias"), c.take(f"transformer_encoder.scales.{2 * L}.bias"))
  if model.mz_head:
    c.mlp("ff_out", "ff_out", model.ff_out_depth, True)
  if model.ro_head:
    c.put(("ro_out", "kernel"), c.take("ro_out.weight").T)
  unexpected = sorted(set(state_dict) - c.used)
  if unexpected:
    raise CheckpointError(f"state dict key {unexpected[0]!r} is not part of this DreaMS config "
                          f"({len(unexpected)} unexpected keys)")
  check_converted_tree(c.variables, jax.eval_shape(lambda: init_variables(model, jax.random.key(0), 4)))
  return c.variables



# ----------------------------------------------------------------------------------------------------------
# Reading official files
# ----------------------------------------------------------------------------------------------------------


def _plain(obj):
  """Opaque records (argparse.Namespace, DataFormatA, ...) -> their state dicts, recursively."""
  if isinstance(obj, Opaque):
    state = obj.state if isinstance(obj.state, dict) else {}
    return {"__class__": obj.qualname, **{k: _plain(v) for k, v in state.items()}}
  if isinstance(obj, dict):
    return {k: _plain(v) for k, v in obj.items()}
  return obj


def read_official(path, n_heads: int | None = None) -> tuple[dict, dict]:
  """(state_dict, official args or {}) from an .npz (+ sidecar .json), a Lightning .ckpt or a state dict."""
  path = pathlib.Path(path)
  if path.suffix == ".npz":
    if not path.is_file():
      raise CheckpointError(f"{path}: no such file")
    try:
      with np.load(path, allow_pickle=False) as archive:  # no pickled objects: they would run code
        state_dict = {k[len("param/"):]: archive[k] for k in archive.files if k.startswith("param/")}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      raise CheckpointError(f"{path}: cannot be read as an .npz of plain arrays ({e})") from None
    if not state_dict:
      raise CheckpointError(f"{path}: no 'param/<state dict key>' arrays")
    sidecar = path.with_suffix(".json")
    args = {}
    if sidecar.is_file():
      args = json.loads(sidecar.read_text()).get("model_config", {}).get("parsed_args_after_DreaMS_init", {})
    return state_dict, args
  obj = load_torch_file(path)
  state_dict = find_state_dict(obj, str(path))
  args = {}
  if isinstance(obj, dict) and isinstance(obj.get("hyper_parameters"), dict):
    hparams = _plain(obj["hyper_parameters"])
    args = hparams.get("args", {}) if isinstance(hparams.get("args"), dict) else {}
    if isinstance(args.get("dformat"), dict) and args["dformat"].get("__class__", "").endswith("DataFormatA"):
      args["dformat"] = {"max_mz": 1000.0, "max_tbxic_stdev": 1e-4, **args["dformat"]}  # class-level values
  return state_dict, args


def model_for(state_dict: Mapping, args: Mapping, n_heads: int | None = None, **run_fields) -> DreaMS:
  """The DreaMS that holds `state_dict`: sizes from the tensors, the rest from args; run fields
  (dtype, remat_policy, ...) from the caller."""
  fields = fields_from_state_dict(state_dict, n_heads or 8)
  fields.update(fields_from_args(args))
  if n_heads is not None:
    fields["n_heads"] = n_heads
  return DreaMS(**fields, **run_fields)


# ----------------------------------------------------------------------------------------------------------
# Converted folders
# ----------------------------------------------------------------------------------------------------------


def save_converted(variables: dict, model: DreaMS, out_dir) -> pathlib.Path:
  """Write `variables/` (orbax) and `dreams_config.json` (the model's fields) into `out_dir`."""
  out_dir = pathlib.Path(out_dir).absolute()
  out_dir.mkdir(parents=True, exist_ok=True)
  fields = {name: getattr(model, name) for name in sorted(_FIELD_NAMES)}
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(out_dir / VARIABLES_DIR, jax.tree.map(np.asarray, variables), force=True)
  (out_dir / CONFIG_FILE).write_text(json.dumps(fields, indent=1) + "\n")
  return out_dir


def load_converted(out_dir, **run_fields) -> tuple[dict, DreaMS]:
  """(variables, model) from `save_converted`; run_fields (dtype, remat_policy, ...) override."""
  out_dir = pathlib.Path(out_dir).absolute()
  config_file = out_dir / CONFIG_FILE
  if not config_file.is_file() or not (out_dir / VARIABLES_DIR).is_dir():
    raise CheckpointError(f"{out_dir}: expected {CONFIG_FILE} and {VARIABLES_DIR}/ from a DreaMS conversion")
  fields = json.loads(config_file.read_text())
  unknown = set(fields) - _FIELD_NAMES
  if unknown:
    raise CheckpointError(f"{config_file}: unknown DreaMS fields {sorted(unknown)}")
  model = DreaMS(**{**fields, **run_fields})
  abstract = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), 4))
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      variables = checkpointer.restore(out_dir / VARIABLES_DIR, abstract)
  except Exception as e:  # orbax raises several types for missing or mismatched trees
    raise CheckpointError(f"{out_dir / VARIABLES_DIR}: does not hold variables for its config ({e})") from None
  return variables, model


def convert_dreams_file(src_path, out_dir, n_heads: int | None = None) -> pathlib.Path:
  """Official checkpoint -> converted orbax folder `out_dir` (the `vqax convert dreams` command's body)."""
  state_dict, args = read_official(src_path)
  model = model_for(state_dict, args, n_heads)
  return save_converted(convert_state_dict(state_dict, model), model, out_dir)
