"""Read PyTorch zip-format checkpoints (`torch.save`, Lightning `.ckpt`) as numpy, without torch and
without running pickled code.

A torch file is a zip: `<root>/data.pkl` (a pickle of the saved object whose tensors are references to
storages) and `<root>/data/<key>` (each storage's raw little-endian bytes). The pickle is read with a
restricted unpickler: tensor and parameter rebuilders become numpy views of the storages, OrderedDict
and a few plain builtins are allowed, and every other global (argparse.Namespace, the official model's
own classes in Lightning's hyper_parameters, ...) becomes an inert `Opaque` record of its arguments and
state. Nothing named in the file is imported or called.
"""
import collections
import io
import pathlib
import pickle
import zipfile

import numpy as np

from vqax.errors import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",  # numpy has none: stored as uint16 and widened to float32 below
}

_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}


class Opaque:
  """A pickled object of a class we do not import: its qualified name, arguments and state, inert."""
  qualname = "?"

  def __new__(cls, *args, **kwargs):
    obj = object.__new__(cls)
    obj.args, obj.kwargs, obj.state = args, kwargs, None
    return obj

  def __init__(self, *args, **kwargs):
    pass

  def __setstate__(self, state):
    self.state = state

  def __repr__(self) -> str:
    return f"Opaque({self.qualname})"


class _Storage:
  def __init__(self, dtype, key: str):
    self.dtype, self.key = dtype, key


def _opaque_class(qualname: str):
  return type("Opaque", (Opaque,), {"qualname": qualname})


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, storages: dict):
    super().__init__(file)
    self._storages = storages

  def find_class(self, module, name):
    if (module, name) in _SAFE_GLOBALS:
      return _SAFE_GLOBALS[(module, name)]
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
      return lambda data, *_rest: data
    if module == "torch" and name in _STORAGE_DTYPES:
      return _STORAGE_DTYPES[name]
    return _opaque_class(f"{module}.{name}")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
      raise CheckpointError(f"unsupported persistent reference {pid!r} in a torch checkpoint")
    dtype, key = pid[1], str(pid[2])
    if key not in self._storages:
      raise CheckpointError(f"torch checkpoint refers to storage {key!r}, which the archive lacks")
    return _Storage(dtype, key)


def _rebuild_tensor(storage, offset, size, stride, *_rest):
  return ("tensor", storage, int(offset), tuple(size), tuple(stride))


def _materialize(obj, raw: dict):
  """Replace the tensor records the unpickler made with numpy arrays (bfloat16 -> float32)."""
  if isinstance(obj, tuple) and len(obj) == 5 and obj[0] == "tensor" and isinstance(obj[1], _Storage):
    _, storage, offset, size, stride = obj
    bf16 = isinstance(storage.dtype, str)
    dtype = np.dtype(np.uint16 if bf16 else storage.dtype)
    flat = np.frombuffer(raw[storage.key], dtype=dtype.newbyteorder("<"))
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else offset
    if extent > flat.size:
      raise CheckpointError(f"tensor of shape {size} needs {extent} elements of storage {storage.key}, "
                            f"which has {flat.size} (truncated checkpoint?)")
    array = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                            strides=[s * dtype.itemsize for s in stride]).copy()
    if bf16:
      array = (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(array.dtype.newbyteorder("="))
  if isinstance(obj, dict):
    return type(obj)((k, _materialize(v, raw)) for k, v in obj.items()) if isinstance(
        obj, collections.OrderedDict) else {k: _materialize(v, raw) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_materialize(v, raw) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_materialize(v, raw) for v in obj)
  return obj


def load_torch_file(path) -> object:
  """The object saved in a zip-format torch file, with tensors as numpy arrays; raises CheckpointError
  naming the file when it is missing, not a torch zip, truncated or malformed."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise CheckpointError(f"{path}: no such file")
  try:
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
      pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
      if not pickles:
        raise CheckpointError(f"{path}: a zip without <root>/data.pkl is not a torch checkpoint")
      root = pickles[0].split("/")[0]
      if f"{root}/byteorder" in names and archive.read(f"{root}/byteorder").strip() != b"little":
        raise CheckpointError(f"{path}: big-endian torch checkpoints are not supported")
      prefix = f"{root}/data/"
      raw = {n[len(prefix):]: archive.read(n) for n in names if n.startswith(prefix)}
      obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), raw).load()
  except CheckpointError:
    raise
  except zipfile.BadZipFile as e:
    raise CheckpointError(f"{path}: not a zip-format torch checkpoint ({e}; legacy pre-1.6 torch files "
                          "are not supported)") from None
  except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, AttributeError, OSError) as e:
    raise CheckpointError(f"{path}: cannot read the pickled checkpoint ({type(e).__name__}: {e})") from None
  return _materialize(obj, raw)


def find_state_dict(obj, path="checkpoint") -> dict:
  """The tensor dict of a loaded checkpoint: Lightning's obj['state_dict'], or obj itself when it is one."""
  if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict) or not obj or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise CheckpointError(f"{path}: expected a state dict (name -> tensor) or a Lightning checkpoint "
                          "with a 'state_dict'")
  return dict(obj)
