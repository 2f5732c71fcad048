"""Parity of the Flax ViT with Hugging Face's ViTForImageClassification (shared/fixtures/vit_tiny_parity.*).

The fixture is a seeded tiny HF ViT (perturbed LayerNorms and biases, sharpened attention) with its
state dict (v5 names), input pixels, logits, CLS state and forward-hook outputs. The converted Flax model
must match every one within 1e-5 (observed float32-vs-float64 noise in the reference: <= 1.6e-6). The
same weights under v4 (hub) names, as safetensors and as a zip-format torch file, convert identically.
"""
import json
import pickle
import sys
import types
import zipfile

import jax
import numpy as np
import pytest
from conftest import shared_path

from vqax.errors import CheckpointError
from vqax.models import vit_convert

ATOL = 1e-5


@pytest.fixture(scope="module")
def fixture():
  meta = json.loads(shared_path("fixtures", "vit_tiny_parity.json").read_text())
  with np.load(shared_path("fixtures", "vit_tiny_parity.npz")) as archive:
    arrays = {k: archive[k] for k in archive.files}
  return meta, arrays


@pytest.fixture(scope="module")
def converted(fixture):
  meta, arrays = fixture
  state_dict = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
  model = vit_convert.vit_from_hf_config(_hf_config(meta))
  return model, vit_convert.convert_state_dict(state_dict, model)


def _hf_config(meta):
  """config.json as HF writes it: the full dict (hidden_act, layer_norm_eps...) plus num_labels."""
  return {**meta["model_config_full_to_dict"], **meta["model_config"]}


def _run(model, variables, pixels_nchw):
  apply = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))
  with jax.default_matmul_precision("highest"):
    (logits, aux), state = apply(variables, pixels_nchw.transpose(0, 2, 3, 1))
  return logits, aux, state["intermediates"]


def test_converted_tiny_vit_matches_hugging_face(fixture, converted):
  _meta, arrays = fixture
  model, variables = converted
  logits, aux, inter = _run(model, variables, arrays["input/pixel_values"])
  layers = inter["encoder"]["layers"]
  ours = {
      "output/logits": logits,
      "output/cls_hidden_state": aux["features"],
      "output/last_hidden_state": inter["last_hidden_state"][0],
      "feat/vit.layernorm": inter["last_hidden_state"][0],
      "feat/vit.embeddings.patch_embeddings": inter["embeddings"]["patch_tokens"][0],
      "feat/vit.embeddings": inter["embeddings"]["tokens"][0],
      # scanned layers: intermediates are stacked on the layer axis; row 0 is layer 0
      "feat/vit.layers.0.layernorm_before": layers["attention_input"][0][0],
      "feat/vit.layers.0.attention": layers["attention_output"][0][0],
      "feat/vit.layers.0.mlp.fc1": layers["fc1_output"][0][0],
      "feat/vit.layers.0": layers["output"][0][0],
  }
  assert set(ours) == {k for k in arrays if k.startswith(("output/", "feat/"))}
  for key, value in ours.items():
    np.testing.assert_allclose(np.asarray(value), arrays[key], rtol=0, atol=ATOL, err_msg=key)
  assert logits.dtype == np.float32


def _v4_state_dict(meta, arrays):
  return {meta["state_dict_v4_names"][k[len("param/"):]]: v for k, v in arrays.items() if k.startswith("param/")}


def _write_torch_zip(path, state_dict):
  """A file in torch.save's zip layout, written without torch: the pickle names torch's rebuild function and
  storage class exactly as torch does (fake modules stand in for torch while pickling only)."""
  class Storage:
    def __init__(self, key, array):
      self.key, self.array = key, array

  def rebuild(*args):  # never called here; pickled by reference as torch._utils._rebuild_tensor_v2
    raise AssertionError

  class FloatStorage:
    pass

  torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")
  rebuild.__module__, rebuild.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
  FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
  utils_mod._rebuild_tensor_v2, torch_mod.FloatStorage, torch_mod._utils = rebuild, FloatStorage, utils_mod

  class Tensor:
    def __init__(self, key, array):
      self.storage, self.array = Storage(key, array), array

    def __reduce__(self):
      strides = tuple(s // self.array.itemsize for s in self.array.strides)
      return rebuild, (self.storage, 0, self.array.shape, strides, False, {})

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, Storage):
        return ("storage", FloatStorage, obj.key, "cpu", obj.array.size)
      return None

  import collections
  import io
  tensors = collections.OrderedDict((k, Tensor(str(i), np.ascontiguousarray(v, np.float32)))
                                    for i, (k, v) in enumerate(state_dict.items()))
  saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
  sys.modules.update({"torch": torch_mod, "torch._utils": utils_mod})
  try:
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(tensors)
  finally:
    for name, module in saved.items():
      if module is None:
        sys.modules.pop(name)
      else:
        sys.modules[name] = module
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", buffer.getvalue())
    archive.writestr("archive/byteorder", "little")
    for tensor in tensors.values():
      archive.writestr(f"archive/data/{tensor.storage.key}", tensor.array.tobytes())


def test_v4_names_as_safetensors_and_torch_zip_convert_identically(fixture, converted, tmp_path):
  from safetensors.numpy import save_file
  meta, arrays = fixture
  _model, reference = converted
  v4 = _v4_state_dict(meta, arrays)
  assert any(".encoder.layer." in k for k in v4)
  (tmp_path / "config.json").write_text(json.dumps(_hf_config(meta)))
  save_file(v4, str(tmp_path / "model.safetensors"))
  _write_torch_zip(tmp_path / "pytorch_model.bin", v4)
  for source in (tmp_path / "model.safetensors", tmp_path / "pytorch_model.bin", tmp_path):
    state_dict, hf_config = vit_convert.read_checkpoint(source)
    variables = vit_convert.convert_state_dict(state_dict, vit_convert.vit_from_hf_config(hf_config))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), variables, reference)


def test_conversion_save_load_roundtrip_and_new_head(fixture, tmp_path):
  meta, arrays = fixture
  np.savez(tmp_path / "tiny.npz", **{k: v for k, v in arrays.items() if k.startswith("param/")})
  (tmp_path / "tiny.json").write_text(json.dumps({"model_config": meta["model_config"]}))
  out = vit_convert.convert_vit(tmp_path / "tiny.npz", tmp_path / "converted")
  variables, model = vit_convert.load_converted(out)
  logits, _aux, _ = _run(model, variables, arrays["input/pixel_values"])
  np.testing.assert_allclose(np.asarray(logits), arrays["output/logits"], atol=ATOL)
  # A 2-class head (the seed's) replaces the 5-label classifier; the backbone is kept.
  out2 = vit_convert.convert_vit(tmp_path / "tiny.npz", tmp_path / "two", num_classes=2)
  variables2, model2 = vit_convert.load_converted(out2)
  assert model2.num_classes == 2 and variables2["params"]["head"]["kernel"].shape == (64, 2)
  np.testing.assert_array_equal(variables2["params"]["encoder"]["layers"]["fc1"]["kernel"],
                                variables["params"]["encoder"]["layers"]["fc1"]["kernel"])


def test_conversion_errors_name_the_key(fixture, converted):
  meta, arrays = fixture
  model, _ = converted
  state_dict = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
  with pytest.raises(CheckpointError, match="vit.layers.1.mlp.fc2.weight|layer 1"):
    vit_convert.convert_state_dict({k: v for k, v in state_dict.items() if k != "vit.layers.1.mlp.fc2.weight"},
                                   model)
  with pytest.raises(CheckpointError, match="'vit.extra.weight'"):
    vit_convert.convert_state_dict({**state_dict, "vit.extra.weight": np.zeros(3)}, model)
  wrong = vit_convert.vit_from_hf_config({**meta["model_config"], "intermediate_size": 96})
  with pytest.raises(CheckpointError, match="fc1/(kernel|bias) got shape"):
    vit_convert.convert_state_dict(state_dict, wrong)


def test_single_channel_kernel_equals_repeated_gray_input(converted):
  """The summed 1-channel kernel on a native spectrogram == the 3-channel model on it repeated (resize_rgb at
  the stored size), so pretrained weights serve 1-channel inputs."""
  model, variables = converted
  spec = np.random.default_rng(0).standard_normal((2, 32, 32)).astype(np.float32)
  rgb = model.clone(input_adapter="resize_rgb")
  native = model.clone(input_adapter="native", num_channels=1)
  with jax.default_matmul_precision("highest"):
    a, _ = rgb.apply(variables, spec)
    b, _ = native.apply(vit_convert.to_single_channel(variables), spec)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
