"""The torch-free checkpoint reader: a zip-format torch file (written here in torch's layout, or by torch
itself when installed) reads back as numpy; pickled classes are never imported; bad files get one error."""
import collections
import io
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest

from vqax.errors import CheckpointError
from vqax.models.torch_checkpoint import Opaque, find_state_dict, load_torch_file


class _Storage:
  def __init__(self, array):
    self.array = array


def _fake_torch_modules(monkeypatch):
  """Names that torch's pickles refer to, so the writer below can pickle by reference without torch."""
  torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called: only pickled by name")
  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
  utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
  for name in ("FloatStorage", "LongStorage"):
    setattr(torch_mod, name, type(name, (), {"__module__": "torch", "__qualname__": name}))
  torch_mod._utils = utils_mod
  monkeypatch.setitem(sys.modules, "torch", torch_mod)
  monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)
  return torch_mod, utils_mod


def write_torch_zip(path, obj, monkeypatch, root="archive"):
  """torch.save's zip layout: <root>/data.pkl with persistent storage ids, <root>/data/<key> bytes."""
  torch_mod, utils_mod = _fake_torch_modules(monkeypatch)
  storages = []

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, _Storage):
        storages.append(obj.array)
        kind = torch_mod.FloatStorage if obj.array.dtype == np.float32 else torch_mod.LongStorage
        return ("storage", kind, str(len(storages) - 1), "cpu", obj.array.size)
      return None

    def reducer_override(self, obj):
      if isinstance(obj, np.ndarray):
        flat = np.ascontiguousarray(obj).reshape(-1)
        stride = tuple(s // obj.itemsize for s in np.ascontiguousarray(obj).strides)
        return utils_mod._rebuild_tensor_v2, (_Storage(flat), 0, obj.shape, stride, False,
                                              collections.OrderedDict())
      return NotImplemented

  buffer = io.BytesIO()
  Pickler(buffer, protocol=2).dump(obj)
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr(f"{root}/data.pkl", buffer.getvalue())
    archive.writestr(f"{root}/byteorder", "little")
    for i, array in enumerate(storages):
      archive.writestr(f"{root}/data/{i}", array.astype("<" + array.dtype.str[1:]).tobytes())
  monkeypatch.delitem(sys.modules, "torch")
  monkeypatch.delitem(sys.modules, "torch._utils")


class NotImportable:
  """Stands for a class the reader must not import (as the official model's classes)."""
  def __init__(self, x):
    self.x = x


def test_reads_state_dict_and_hyper_parameters_without_importing(tmp_path, monkeypatch):
  state = collections.OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3), steps=np.array([3, 4]))
  path = tmp_path / "model.ckpt"
  write_torch_zip(path, {"state_dict": state, "hyper_parameters": {"args": NotImportable(5)}, "epoch": 2},
                  monkeypatch)
  loaded = load_torch_file(path)
  np.testing.assert_array_equal(loaded["state_dict"]["w"], state["w"])
  np.testing.assert_array_equal(loaded["state_dict"]["steps"], state["steps"])
  assert loaded["epoch"] == 2
  args = loaded["hyper_parameters"]["args"]
  assert isinstance(args, Opaque) and args.qualname.endswith("NotImportable") and args.state == {"x": 5}
  assert set(find_state_dict(loaded)) == {"w", "steps"}


def test_bad_files_get_one_checkpoint_error(tmp_path, monkeypatch):
  with pytest.raises(CheckpointError, match="no such file"):
    load_torch_file(tmp_path / "missing.ckpt")
  (tmp_path / "text.ckpt").write_text("not a zip")
  with pytest.raises(CheckpointError, match="text.ckpt: not a zip-format torch checkpoint"):
    load_torch_file(tmp_path / "text.ckpt")
  good = tmp_path / "good.pt"
  write_torch_zip(good, {"w": np.ones((4, 4), np.float32)}, monkeypatch)
  (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:-60])
  with pytest.raises(CheckpointError, match="cut.pt"):
    load_torch_file(tmp_path / "cut.pt")
  write_torch_zip(tmp_path / "notdict.pt", [np.ones(2, np.float32)], monkeypatch)
  with pytest.raises(CheckpointError, match="expected a state dict"):
    find_state_dict(load_torch_file(tmp_path / "notdict.pt"), "notdict.pt")


def test_matches_torch_save_when_torch_is_installed(tmp_path):
  torch = pytest.importorskip("torch")
  state = {"a": torch.randn(3, 5), "b": torch.arange(12.0).reshape(3, 4).t(), "c": torch.ones(2).bfloat16()}
  torch.save({"state_dict": state, "hyper_parameters": {"lr": 1e-4}}, tmp_path / "x.ckpt")
  loaded = load_torch_file(tmp_path / "x.ckpt")["state_dict"]
  for key, value in state.items():
    np.testing.assert_array_equal(loaded[key], value.float().numpy())


def test_a_pickled_call_is_never_made(tmp_path, capsys):
  """A checkpoint that pickles a call (here print) loads it as an inert record; nothing runs."""
  class Evil:
    def __reduce__(self):
      return (print, ("pwned",))
  with zipfile.ZipFile(tmp_path / "evil.bin", "w") as archive:
    archive.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
  loaded = load_torch_file(tmp_path / "evil.bin")
  assert isinstance(loaded["w"], Opaque) and "pwned" not in capsys.readouterr().out
  with pytest.raises(CheckpointError, match="expected a state dict"):
    find_state_dict(loaded, "evil.bin")
