"""Hugging Face ViT checkpoints (`ViTForImageClassification` / `ViTModel`) -> Flax variables for `vit.ViT`.

Sources, read without torch and without running pickled code: a model folder (`config.json` +
`model.safetensors` or `pytorch_model.bin`), a `.safetensors` file, a zip-format torch `.bin/.pt/.pth`
state dict (`torch_state`), or an `.npz` of `param/<key>` arrays (the parity fixture) with a sidecar `.json`
holding `model_config`. Hub checkpoints use the transformers v4 names (vit.encoder.layer.N.attention.
attention.query ...), transformers v5 renamed them (vit.layers.N.attention.q_proj ...): both are accepted,
v4 names are rewritten by the fixture's ordered rules (`V4_TO_V5`).

Conversion is strict: every key must be used and every Flax leaf filled with the shape `ViT.init` gives,
except (a) a ViTModel's pooler, which the classifier does not have (skipped), and (b) the head when the
checkpoint has none or another number of labels and `num_classes` asks for a new one (the seed's
ignore_mismatched_sizes): it is drawn fresh with HF's init. Converted models are an orbax `variables/`
folder plus `vit_config.json` (the ViT settings), like `redimnet_convert`.
"""
import dataclasses
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from vqax.errors import CheckpointError, ConfigError
from vqax.models import vit as vit_lib
from vqax.models.redimnet_convert import read_npz
from vqax.models.torch_checkpoint import find_state_dict, load_torch_file

VARIABLES_DIR = "variables"
CONFIG_FILE = "vit_config.json"
# transformers v4 (hub) -> v5 names, applied in this order (shared/fixtures/vit_tiny_parity.json).
V4_TO_V5 = (("encoder.layer.", "layers."), ("attention.query", "q_proj"), ("attention.key", "k_proj"),
            ("attention.value", "v_proj"), ("attention.output.dense", "attention.o_proj"),
            ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"))
# Settings that describe how a model runs, not its weights: never stored in vit_config.json.
_RUN_FIELDS = ("dtype", "param_dtype", "remat_policy", "input_adapter", "parent", "name")
_LAYER_KEY = re.compile(r"^vit\.layers\.(\d+)\.(.+)$")
_PER_LAYER = {  # v5 suffix -> (Flax path under encoder/layers, is a Linear weight)
    "attention.q_proj.weight": (("attention", "q_proj", "kernel"), True),
    "attention.q_proj.bias": (("attention", "q_proj", "bias"), False),
    "attention.k_proj.weight": (("attention", "k_proj", "kernel"), True),
    "attention.k_proj.bias": (("attention", "k_proj", "bias"), False),
    "attention.v_proj.weight": (("attention", "v_proj", "kernel"), True),
    "attention.v_proj.bias": (("attention", "v_proj", "bias"), False),
    "attention.o_proj.weight": (("attention", "o_proj", "kernel"), True),
    "attention.o_proj.bias": (("attention", "o_proj", "bias"), False),
    "layernorm_before.weight": (("layernorm_before", "scale"), False),
    "layernorm_before.bias": (("layernorm_before", "bias"), False),
    "layernorm_after.weight": (("layernorm_after", "scale"), False),
    "layernorm_after.bias": (("layernorm_after", "bias"), False),
    "mlp.fc1.weight": (("fc1", "kernel"), True),
    "mlp.fc1.bias": (("fc1", "bias"), False),
    "mlp.fc2.weight": (("fc2", "kernel"), True),
    "mlp.fc2.bias": (("fc2", "bias"), False),
}
_SINGLE = {  # v5 key -> (Flax path, how the torch array becomes the Flax one)
    "vit.embeddings.cls_token": (("embeddings", "cls_token"), lambda a: a),
    "vit.embeddings.position_embeddings": (("embeddings", "position_embeddings"), lambda a: a),
    "vit.embeddings.patch_embeddings.projection.weight":
        (("embeddings", "patch_embeddings", "kernel"), lambda a: a.transpose(2, 3, 1, 0)),  # OIHW -> HWIO
    "vit.embeddings.patch_embeddings.projection.bias": (("embeddings", "patch_embeddings", "bias"), lambda a: a),
    "vit.layernorm.weight": (("final_norm", "scale"), lambda a: a),
    "vit.layernorm.bias": (("final_norm", "bias"), lambda a: a),
    "classifier.weight": (("head", "kernel"), lambda a: a.T),
    "classifier.bias": (("head", "bias"), lambda a: a),
}
_POOLER = ("vit.pooler.dense.weight", "vit.pooler.dense.bias")


def to_v5_names(state_dict: dict) -> dict:
  """v4 (hub) or v5 keys -> v5 keys; a bare ViTModel's keys (no 'vit.' prefix) get the prefix."""
  out = {}
  for key, value in state_dict.items():
    if not key.startswith(("vit.", "classifier.")):
      key = "vit." + key
    for old, new in V4_TO_V5:
      key = key.replace(old, new)
    out[key] = value
  return out


def vit_from_hf_config(hf_config: dict, **overrides) -> vit_lib.ViT:
  """A `ViT` with the architecture of a transformers `ViTConfig` dict (config.json); `overrides` replace
  fields (num_classes, dtype, remat_policy, input_adapter ...). ConfigError for variants not ported."""
  act = hf_config.get("hidden_act", "gelu")
  if act != "gelu":
    raise ConfigError(f"ViT config hidden_act={act!r}: only 'gelu' (exact erf GELU) is ported")
  if not hf_config.get("qkv_bias", True):
    raise ConfigError("ViT config qkv_bias=False is not ported (the Flax layers always carry biases)")
  image_size = hf_config.get("image_size", 224)
  num_labels = hf_config.get("num_labels", len(hf_config.get("id2label") or {}) or 2)
  settings = dict(hidden_size=hf_config.get("hidden_size", 768), num_layers=hf_config.get("num_hidden_layers", 12),
                  num_heads=hf_config.get("num_attention_heads", 12), mlp_dim=hf_config.get("intermediate_size", 3072),
                  patch_size=hf_config.get("patch_size", 16), num_channels=hf_config.get("num_channels", 3),
                  image_size=image_size, layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
                  num_classes=num_labels)
  return vit_from_settings({**settings, **overrides})


def vit_from_settings(settings: dict, **overrides) -> vit_lib.ViT:
  """`ViT(**settings, **overrides)` with image_size normalised and the result validated."""
  settings = {**settings, **overrides}
  size = settings.get("image_size", (224, 224))
  settings["image_size"] = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
  fields = {f.name for f in dataclasses.fields(vit_lib.ViT)}
  unknown = sorted(set(settings) - fields)
  if unknown:
    raise ConfigError(f"unknown ViT settings {unknown}")
  return vit_lib.validate(vit_lib.ViT(**settings))


def weight_settings(model: vit_lib.ViT) -> dict:
  """The fields that shape the weights (what `vit_config.json` stores), JSON-ready."""
  out = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in _RUN_FIELDS}
  out["image_size"] = list(out["image_size"])
  return out


def _set(tree: dict, path, value):
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def convert_state_dict(state_dict: dict, model: vit_lib.ViT, *, seed: int = 0) -> dict:
  """HF state dict (v4 or v5 names, numpy arrays) -> {'params': ...} for `model`.

  The head comes from the checkpoint when its shape fits `model.num_classes`, else (or when absent) it is
  drawn fresh from `seed`. CheckpointError names the first key that is unexpected, missing or misshapen.
  """
  sd = {k: np.asarray(v, np.float32) for k, v in to_v5_names(state_dict).items()}
  abstract = vit_lib.abstract_variables(model)["params"]
  want = {tuple(str(getattr(k, "key", k)) for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
  head_fits = ("classifier.weight" in sd
               and tuple(sd["classifier.weight"].shape) == (model.num_classes, model.hidden_size))
  params: dict = {}
  layers: dict = {}
  for key, array in sd.items():
    if key in _POOLER or (key.startswith("classifier.") and not head_fits):
      continue
    match = _LAYER_KEY.match(key)
    if match and match.group(2) in _PER_LAYER:
      index = int(match.group(1))
      if index >= model.num_layers:
        raise CheckpointError(f"state_dict key {key!r}: layer {index} but the model has {model.num_layers}")
      path, linear = _PER_LAYER[match.group(2)]
      layers.setdefault(path, {})[index] = array.T if linear else array
    elif key in _SINGLE:
      path, to_flax = _SINGLE[key]
      _set(params, path, to_flax(array))
    else:
      raise CheckpointError(f"state_dict key {key!r} is not part of a ViT classifier "
                            f"(after v4->v5 renaming)")
  for path, rows in layers.items():
    missing = sorted(set(range(model.num_layers)) - set(rows))
    if missing:
      raise CheckpointError(f"state_dict has no layer {missing[0]} entry for encoder/layers/{'/'.join(path)}")
    _set(params, ("encoder", "layers", *path), np.stack([rows[i] for i in range(model.num_layers)]))
  if not head_fits:
    head_key = jax.random.key(seed)
    _set(params, ("head", "kernel"),
         np.asarray(0.02 * jax.random.normal(head_key, (model.hidden_size, model.num_classes), jnp.float32)))
    _set(params, ("head", "bias"), np.zeros((model.num_classes,), np.float32))
  got = {tuple(path_keys(p)): leaf.shape for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
  for path in sorted(set(want) | set(got)):
    name = "/".join(path)
    if path not in got:
      raise CheckpointError(f"Flax parameter {name} was not filled by any state_dict key")
    if path not in want:
      raise CheckpointError(f"converted parameter {name} does not exist in the Flax ViT")
    if tuple(got[path]) != tuple(want[path]):
      raise CheckpointError(f"Flax parameter {name} got shape {tuple(got[path])}, the model expects "
                            f"{tuple(want[path])} (does the config match the checkpoint?)")
  return {"params": params}


def path_keys(path) -> list[str]:
  return [str(getattr(k, "key", k)) for k in path]


def to_single_channel(variables: dict) -> dict:
  """3-channel patch kernel -> 1 channel by summing over input channels.

  A 1-channel spectrogram repeated over 3 channels (the seed's input) meets the summed kernel exactly, so
  a pretrained model runs on native 1-channel inputs (`input_adapter="native"`, `num_channels=1`).
  """
  params = jax.tree.map(lambda a: a, variables["params"])  # shallow copy of the nesting
  kernel = params["embeddings"]["patch_embeddings"]["kernel"]
  params["embeddings"]["patch_embeddings"]["kernel"] = kernel.sum(axis=2, keepdims=True)
  return {**variables, "params": params}


# ----------------------------------------------------------------------------------------------------------
# Readers


def read_safetensors(path) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  try:
    return load_file(str(path))
  except (SafetensorError, OSError, ValueError, TypeError) as e:
    raise CheckpointError(f"{path}: cannot be read as safetensors ({e})") from None


def read_checkpoint(src) -> tuple[dict, dict]:
  """(state_dict, hf_config) from a model folder or a weights file (config from a sidecar, see below).

  A folder needs config.json and model.safetensors or pytorch_model.bin. A single file takes its config
  from `config.json` beside it, or for `.npz` from `<name>.json`'s 'model_config' key.
  """
  src = pathlib.Path(src)
  if src.is_dir():
    config_file = src / "config.json"
    weights = next((src / n for n in ("model.safetensors", "pytorch_model.bin") if (src / n).is_file()), None)
    if weights is None:
      raise CheckpointError(f"{src}: a Hugging Face model folder needs model.safetensors or pytorch_model.bin")
  elif src.is_file():
    weights = src
    config_file = src.parent / "config.json"
  else:
    raise CheckpointError(f"{src}: no such file or folder")
  if weights.suffix == ".npz":  # param/<key> arrays + sidecar model_config: the reader ReDimNet's use
    return read_npz(weights)
  if not config_file.is_file():
    raise CheckpointError(f"{src}: no {config_file.name} beside it with the ViT config")
  try:
    hf_config = json.loads(config_file.read_text())
  except ValueError as e:
    raise CheckpointError(f"{config_file}: not JSON ({e})") from None
  if not isinstance(hf_config, dict):
    raise CheckpointError(f"{config_file}: expected a JSON object with the ViT config")
  if weights.suffix == ".safetensors":
    state_dict = read_safetensors(weights)
  else:
    state_dict = find_state_dict(load_torch_file(weights), weights)
  return state_dict, hf_config


# ----------------------------------------------------------------------------------------------------------
# Converted checkpoints


def save_converted(variables: dict, model: vit_lib.ViT, out_dir) -> pathlib.Path:
  """Write `variables/` (orbax) and `vit_config.json` into `out_dir` (an earlier conversion is replaced)."""
  out_dir = pathlib.Path(out_dir).absolute()
  out_dir.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(out_dir / VARIABLES_DIR, jax.tree.map(np.asarray, variables), force=True)
  (out_dir / CONFIG_FILE).write_text(json.dumps(weight_settings(model), indent=1) + "\n")
  return out_dir


def load_converted(out_dir, **run_settings) -> tuple[dict, vit_lib.ViT]:
  """(variables, model) from `save_converted`; `run_settings` set dtype / remat_policy / input_adapter."""
  out_dir = pathlib.Path(out_dir).absolute()
  config_file = out_dir / CONFIG_FILE
  if not config_file.is_file() or not (out_dir / VARIABLES_DIR).is_dir():
    raise CheckpointError(f"{out_dir}: expected {CONFIG_FILE} and {VARIABLES_DIR}/ from a ViT conversion")
  model = vit_from_settings(json.loads(config_file.read_text()), **run_settings)
  abstract = vit_lib.abstract_variables(model)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      variables = checkpointer.restore(out_dir / VARIABLES_DIR, abstract)
  except Exception as e:  # orbax raises several types for missing/mismatched trees
    raise CheckpointError(f"{out_dir / VARIABLES_DIR}: does not hold variables for {CONFIG_FILE} ({e})") from None
  return variables, model


def convert_vit(src, out_dir, *, num_classes: int | None = None, seed: int = 0) -> pathlib.Path:
  """HF checkpoint (folder or file) -> converted orbax folder `out_dir`; `num_classes` replaces the head."""
  state_dict, hf_config = read_checkpoint(src)
  overrides = {} if num_classes is None else {"num_classes": int(num_classes)}
  model = vit_from_hf_config(hf_config, **overrides)
  variables = convert_state_dict(state_dict, model, seed=seed)
  return save_converted(variables, model, out_dir)
