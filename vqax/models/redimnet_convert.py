"""Official ReDimNet weights (PyTorch `state_dict` + `model_config`) -> Flax variables for `ReDimNet`.

The official key layout is rebuilt from the model_config (`official_layout`), so conversion is strict both
ways: every state_dict key must be expected and consumed, every Flax leaf must be filled with the shape
`ReDimNet.init` would give it. Front-end buffers (pre-emphasis filter, window, mel filterbank) carry no
trainable state; they are checked against what the config implies, because a mismatch means the JAX front
end would compute different features.

Sources: an `.npz` with `param/<state_dict key>` arrays (model_config from a sidecar `.json` with a
`model_config` key, or given), or an official torch checkpoint {'model_config', 'state_dict'} (needs torch).
Converted models are saved as an orbax checkpoint `variables/` plus `model_config.json`.
"""
import dataclasses
import json
import pathlib
from typing import Callable, Mapping
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from vqax.audio.melbanks import MelBanks, hamming_window
from vqax.errors import CheckpointError, ConfigError
from vqax.models.conversion import check_converted_tree
from vqax.models.redimnet import (ReDimNet, config_to_json, conv_groups, melbank_kwargs,
                                   normalize_config, redimnet_from_config)

MODEL_CONFIG_FILE = "model_config.json"
VARIABLES_DIR = "variables"
# torchaudio builds its filterbank in float32; ours is float64 cast down (max diff ~5e-6 for b0's config).
_BUFFER_ATOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Entry:
  """One official state_dict tensor: its shape and where (and how) it lands in the Flax variables."""
  key: str
  shape: tuple[int, ...]
  collection: str | None = None  # 'params' / 'batch_stats'; None: checked or skipped, not stored
  path: tuple[str, ...] = ()
  to_flax: Callable[[np.ndarray], np.ndarray] = lambda a: a
  expected: Callable[[], np.ndarray] | None = None  # buffers that must equal what the config implies


def _conv_kernel(a):  # [out, in/groups, *k] -> [*k, in/groups, out]
  return np.transpose(a, tuple(range(2, a.ndim)) + (1, 0))


def _dense_kernel(a):  # Linear [out, in] or 1x1 conv [out, in, 1(, 1)] -> [in, out]
  return a.reshape(a.shape[0], a.shape[1]).T


class _Layout:
  """Collects `Entry`s while walking the architecture the way the official constructor does."""

  def __init__(self):
    self.entries: list[Entry] = []

  def add(self, key, shape, collection=None, path=(), to_flax=lambda a: a, expected=None):
    self.entries.append(Entry(key, tuple(shape), collection, tuple(path), to_flax, expected))

  def conv(self, key, path, out, in_per_group, kernel, bias=True):
    self.add(f"{key}.weight", (out, in_per_group, *kernel), "params", (*path, "kernel"), _conv_kernel)
    if bias:
      self.add(f"{key}.bias", (out,), "params", (*path, "bias"))

  def dense(self, key, path, out, inp, kernel_dims=0):
    """A Linear (kernel_dims 0) or a 1x1 Conv1d/Conv2d (kernel_dims 1/2), stored as a Flax Dense."""
    self.add(f"{key}.weight", (out, inp) + (1,) * kernel_dims, "params", (*path, "kernel"), _dense_kernel)
    self.add(f"{key}.bias", (out,), "params", (*path, "bias"))

  def batch_norm(self, key, path, n):
    self.add(f"{key}.weight", (n,), "params", (*path, "scale"))
    self.add(f"{key}.bias", (n,), "params", (*path, "bias"))
    self.add(f"{key}.running_mean", (n,), "batch_stats", (*path, "mean"))
    self.add(f"{key}.running_var", (n,), "batch_stats", (*path, "var"))
    self.add(f"{key}.num_batches_tracked", ())  # only drives PyTorch's momentum=None mode; unused

  def layer_norm(self, key, path, n):
    self.add(f"{key}.weight", (n,), "params", (*path, "scale"))
    self.add(f"{key}.bias", (n,), "params", (*path, "bias"))

  def weight1d(self, key, path, n, c):
    self.add(f"{key}.w", (1, n, c, 1), "params", (*path, "w"), lambda a: a.reshape(n, c))


def _convnext(lay, key, path, c, kernel_sizes, group_divisor):
  groups = conv_groups(c, group_divisor)
  for i, k in enumerate(kernel_sizes):
    lay.conv(f"{key}.dwconvs.{i}", (*path, f"dwconvs_{i}"), c, c // groups, k)
  lay.batch_norm(f"{key}.norm", (*path, "norm"), c * len(kernel_sizes))
  lay.dense(f"{key}.pwconv1", (*path, "pwconv1"), c, c * len(kernel_sizes), len(kernel_sizes[0]))


def _res_block(lay, key, path, c, f, group_divisor, use_fwse):
  groups = conv_groups(c, group_divisor)
  for n in (1, 2):
    lay.conv(f"{key}.conv{n}", (*path, f"conv{n}"), c, c // groups, (3, 3), bias=False)
    if group_divisor is not None:
      lay.dense(f"{key}.conv{n}pw", (*path, f"conv{n}pw"), c, c, 2)
    lay.batch_norm(f"{key}.bn{n}", (*path, f"bn{n}"), c)
  if use_fwse:
    se = min(64, max(c, 32))
    lay.dense(f"{key}.se.squeeze", (*path, "se", "squeeze"), se, f)
    lay.dense(f"{key}.se.exitation", (*path, "se", "exitation"), f, se)


def _transformer(lay, key, path, h, n_mlp):
  for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
    lay.dense(f"{key}.attention.{name}", (*path, "attention", name), h, h)
  lay.layer_norm(f"{key}.layer_norm", (*path, "layer_norm"), h)
  lay.dense(f"{key}.feed_forward.intermediate_dense", (*path, "feed_forward", "intermediate_dense"), n_mlp, h)
  lay.dense(f"{key}.feed_forward.output_dense", (*path, "feed_forward", "output_dense"), h, n_mlp)
  lay.layer_norm(f"{key}.final_layer_norm", (*path, "final_layer_norm"), h)


def _time_context(lay, key, path, channels, h, block_type):
  lay.dense(f"{key}.red_dim_conv.0", (*path, "red_dim_conv"), h, channels, 1)
  lay.layer_norm(f"{key}.red_dim_conv.1", (*path, "red_dim_norm"), h)
  tcm = lambda i: (f"{key}.tcm.{i}", (*path, f"tcm_{i}"))
  if block_type == "conv+att":
    for i, k in enumerate((7, 19, 31, 59)):
      _convnext(lay, *tcm(i), h, ((k,),), 1)
    _transformer(lay, *tcm(4), h, h)
  elif block_type == "att":
    k, p = tcm(0)
    lay.conv(f"{k}.conv", (*p, "conv"), h, 1, (59,))
    lay.layer_norm(f"{k}.norm", (*p, "norm"), h)
    _transformer(lay, *tcm(1), h, 2 * h)
  elif block_type == "conv":
    for i in range(4):
      _convnext(lay, *tcm(i), h, ((7,), (15,), (31,)), 1)
  else:  # "fc"
    lay.dense(*tcm(0), 2 * h, h, 1)
    lay.layer_norm(*tcm(1), 2 * h)
    lay.dense(*tcm(3), h, 2 * h, 1)
  lay.dense(f"{key}.exp_dim_conv", (*path, "exp_dim_conv"), channels, h, 1)


def _front_end(lay, model: ReDimNet):
  spec = MelBanks(n_mels=model.F, hop_length=model.hop_length, **melbank_kwargs(model.spec_params))
  if spec.do_preemph:
    lay.add("spec.torchfbank.1.flipped_filter", (1, 1, 2), expected=lambda: np.array([[[-0.97, 1.0]]]))
  half = (spec.n_fft - spec.win_length) // 2
  lay.add("spec.torchfbank.2.spectrogram.window", (spec.win_length,),
          expected=lambda: hamming_window(spec.win_length, spec.n_fft)[half:half + spec.win_length])
  lay.add("spec.torchfbank.2.mel_scale.fb", (spec.n_fft // 2 + 1, model.F), expected=spec.mel_matrix)


def official_layout(model_config: dict) -> list[Entry]:
  """Every tensor of the official `ReDimNetWrap(**model_config).state_dict()`, with its Flax destination."""
  model = redimnet_from_config(model_config)
  lay = _Layout()
  F, C = model.F, model.C
  _front_end(lay, model)
  bb = ("backbone",)
  lay.conv("backbone.stem.0", (*bb, "stem_conv"), C, 1, (3, 3))
  lay.layer_norm("backbone.stem.1", (*bb, "stem_norm"), C)
  c, f = C, F
  for i, (stride, num_blocks, conv_exp, _k, att_block_red) in enumerate(model.stages_setup):
    key, path = f"backbone.stage{i}", (*bb, f"stage{i}")
    lay.weight1d(f"{key}.0", (*path, "aggregate"), i + 1, F * C if i > 0 else 1)
    lay.conv(f"{key}.2", (*path, "freq_conv"), stride * c * conv_exp, c, (stride, 1))
    c, f = stride * c, f // stride
    for j in range(num_blocks):
      block_key, block_path = f"{key}.{3 + j}.conv_block", (*path, f"block{j}")
      if model.block_2d_type.startswith("convnext_like"):
        _convnext(lay, block_key, block_path, c * conv_exp, ((3, 3),), model.group_divisor)
      else:
        _res_block(lay, block_key, block_path, c * conv_exp, f, model.group_divisor,
                   model.block_2d_type == "basic_resnet_fwse")
    index = 3 + num_blocks
    if conv_exp != 1:
      squeeze_groups = conv_groups(c, model.group_divisor)
      lay.conv(f"{key}.{index}.0", (*path, "squeeze", "conv"), c, c * conv_exp // squeeze_groups, (3, 3))
      lay.batch_norm(f"{key}.{index}.1", (*path, "squeeze", "norm"), c)
      lay.dense(f"{key}.{index}.3", (*path, "squeeze", "pwconv"), c, c, 2)
      index += 1
    index += 1  # to1d
    if att_block_red is not None:
      _time_context(lay, f"{key}.{index}", (*path, "time_context"), F * C, (F * C) // att_block_red,
                    model.block_1d_type)
  num_stages = len(model.stages_setup)
  lay.weight1d("backbone.fin_wght1d", (*bb, "fin_wght1d"), num_stages + 1, F * C)
  pool_dim = F * C
  if model.out_channels is not None:
    lay.dense("backbone.mfa.0", (*bb, "mfa_conv"), model.out_channels, F * C, 1)
    lay.batch_norm("backbone.mfa.1", (*bb, "mfa_norm"), model.out_channels)
    pool_dim = model.out_channels
  if model.pooling_func == "ASTP":
    lay.dense("pool.linear1", ("pool", "linear1"), 128, pool_dim * (3 if model.global_context_att else 1), 1)
    lay.dense("pool.linear2", ("pool", "linear2"), pool_dim, 128, 1)
  lay.batch_norm("bn", ("bn",), 2 * pool_dim)
  lay.dense("linear", ("linear",), model.embed_dim, 2 * pool_dim)
  if model.emb_bn:
    lay.batch_norm("bn2", ("bn2",), model.embed_dim)
  if model.num_classes is not None:
    lay.dense("cls_head.2", ("cls_head",), model.num_classes, model.embed_dim)
  return lay.entries


def _abstract_variables(model: ReDimNet) -> dict:
  """Shapes/dtypes of `model.init` without computing anything (cheap for every size)."""
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16000), jnp.float32))


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model_config: dict) -> dict:
  """Official state_dict (name -> array) -> {'params': ..., 'batch_stats': ...} for `ReDimNet`.

  Raises CheckpointError naming the first key that is missing, unexpected, or of the wrong shape.
  """
  model = redimnet_from_config(model_config)
  entries = official_layout(model_config)
  expected_keys = {e.key for e in entries}
  unexpected = sorted(set(state_dict) - expected_keys)
  if unexpected:
    raise CheckpointError(f"state_dict key {unexpected[0]!r} is not part of ReDimNet for this model_config "
                          f"({len(unexpected)} unexpected keys)")
  variables: dict = {}
  for entry in entries:
    if entry.key not in state_dict:
      raise CheckpointError(f"state_dict key {entry.key!r} is missing "
                            f"(model_config expects shape {entry.shape})")
    array = np.asarray(state_dict[entry.key])
    if tuple(array.shape) != entry.shape:
      raise CheckpointError(f"state_dict key {entry.key!r} has shape {tuple(array.shape)}, "
                            f"model_config expects {entry.shape}")
    if entry.expected is not None:
      diff = float(np.max(np.abs(array.astype(np.float64) - entry.expected())))
      if diff > _BUFFER_ATOL:
        raise CheckpointError(f"state_dict buffer {entry.key!r} differs from what model_config implies "
                              f"(max abs diff {diff:.3g}); the JAX front end would compute other features")
    if entry.collection is not None:
      _set(variables, (entry.collection, *entry.path), entry.to_flax(array.astype(np.float32)))
  check_converted_tree(variables, _abstract_variables(model))
  return variables



# ----------------------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------------------


def read_npz(path, model_config: dict | None = None) -> tuple[dict, dict]:
  """`param/<key>` arrays of an .npz -> (state_dict, model_config).

  model_config comes from the argument, else from the sidecar `<name>.json`'s 'model_config' key.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise CheckpointError(f"{path}: no such file")
  try:
    # allow_pickle=False: an array of Python objects would unpickle (run) code; refuse it.
    with np.load(path, allow_pickle=False) as archive:
      state_dict = {k[len("param/"):]: archive[k] for k in archive.files if k.startswith("param/")}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # not an .npz, truncated, object arrays
    raise CheckpointError(f"{path}: cannot be read as an .npz of plain arrays ({e})") from None
  if not state_dict:
    raise CheckpointError(f"{path}: no 'param/<state_dict key>' arrays")
  if model_config is None:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
      raise CheckpointError(f"{path}: no model_config given and no sidecar {sidecar.name} "
                            "with a 'model_config' key")
    model_config = json.loads(sidecar.read_text()).get("model_config")
    if not isinstance(model_config, dict):
      raise CheckpointError(f"{sidecar}: expected a 'model_config' object")
  return state_dict, model_config


def read_torch(path, model_config: dict | None = None) -> tuple[dict, dict]:
  """Official release checkpoint {'model_config', 'state_dict'} -> (state_dict as numpy, model_config)."""
  try:
    import torch  # optional: only needed to read PyTorch checkpoints
  except ImportError:
    raise ConfigError(f"{path}: reading a PyTorch checkpoint needs torch (pip install 'vqax[torch]'), "
                      "or convert it to .npz with 'param/<key>' arrays first") from None
  path = pathlib.Path(path)
  if not path.is_file():
    raise CheckpointError(f"{path}: no such file")
  try:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # corrupt file, or pickled objects that weights_only refuses
    raise CheckpointError(f"{path}: cannot be loaded as a weights-only torch checkpoint ({e})") from None
  if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
    raise CheckpointError(f"{path}: expected a dict with 'model_config' and 'state_dict'")
  model_config = checkpoint.get("model_config") if model_config is None else model_config
  if not isinstance(model_config, dict):
    raise CheckpointError(f"{path}: no 'model_config' in the checkpoint and none given")
  state_dict = {k: (v.float() if v.is_floating_point() else v).detach().cpu().numpy()
                for k, v in checkpoint["state_dict"].items()}
  return state_dict, model_config


def read_official(path, model_config: dict | None = None) -> tuple[dict, dict]:
  """Dispatch on the file suffix: .npz, otherwise a torch checkpoint."""
  if pathlib.Path(path).suffix == ".npz":
    return read_npz(path, model_config)
  return read_torch(path, model_config)


# ----------------------------------------------------------------------------------------------------------
# Converted checkpoints
# ----------------------------------------------------------------------------------------------------------


def save_converted(variables: dict, model_config: dict, out_dir) -> pathlib.Path:
  """Write `variables/` (orbax) and `model_config.json` (normalised official config) into `out_dir`.

  An earlier conversion in the same folder is overwritten.
  """
  out_dir = pathlib.Path(out_dir).absolute()
  out_dir.mkdir(parents=True, exist_ok=True)
  config = config_to_json(model_config)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(out_dir / VARIABLES_DIR, jax.tree.map(np.asarray, variables), force=True)
  (out_dir / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
  return out_dir


def load_converted(out_dir) -> tuple[dict, dict]:
  """(variables, model_config) from `save_converted`; build the model with `redimnet_from_config`."""
  out_dir = pathlib.Path(out_dir).absolute()
  config_file = out_dir / MODEL_CONFIG_FILE
  if not config_file.is_file() or not (out_dir / VARIABLES_DIR).is_dir():
    raise CheckpointError(f"{out_dir}: expected {MODEL_CONFIG_FILE} and {VARIABLES_DIR}/ "
                          "from a ReDimNet conversion")
  model_config = json.loads(config_file.read_text())
  abstract = _abstract_variables(redimnet_from_config(model_config))
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      variables = checkpointer.restore(out_dir / VARIABLES_DIR, abstract)
  except Exception as e:  # orbax raises several types for missing/mismatched trees
    raise CheckpointError(f"{out_dir / VARIABLES_DIR}: does not hold variables for its model_config "
                          f"({e})") from None
  return variables, model_config


def convert_redimnet_file(src_path, out_dir, model_config: dict | None = None) -> pathlib.Path:
  """Official checkpoint (.npz or torch) -> converted orbax checkpoint in `out_dir`; returns `out_dir`."""
  state_dict, model_config = read_official(src_path, model_config)
  model_config = normalize_config(model_config)
  variables = convert_state_dict(state_dict, model_config)
  return save_converted(variables, model_config, out_dir)
