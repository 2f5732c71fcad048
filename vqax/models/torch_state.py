"""Reading PyTorch `torch.save` files (zip format) into numpy without torch and without running pickled code.

A `.bin`/`.pt`/`.pth` file written by `torch.save` (torch >= 1.6) is a zip archive: `<name>/data.pkl`, a
pickle of the saved object in which every tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)` and every storage a persistent id ('storage', <dtype>Storage, key, location, numel) naming
the raw little-endian bytes in `<name>/data/<key>`. `pickle.load` would import and call whatever the file
names; here the unpickler resolves only the names below to our own numpy functions and refuses any other
(the same allow-list idea as `torch.load(weights_only=True)`), so a hostile file cannot run code.
"""
import collections
import io
import pathlib
import pickle
import zipfile

import ml_dtypes
import numpy as np

from vqax.errors import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}


class _StorageType:
  """Stands in for `torch.<X>Storage` in a persistent id: only its dtype matters."""

  def __init__(self, name: str):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  """numpy twin of torch._utils._rebuild_tensor_v2: a strided view of the storage, copied out."""
  del requires_grad, backward_hooks, metadata
  size, stride = tuple(size), tuple(stride)
  if not size:
    return np.array(storage[storage_offset])
  itemsize = storage.dtype.itemsize
  if storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.shape[0] and all(size):
    raise CheckpointError("a tensor reaches past the end of its storage (truncated or corrupt file)")
  view = np.lib.stride_tricks.as_strided(storage[storage_offset:], size, tuple(s * itemsize for s in stride))
  return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    # protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1'); encode has no side effects.
    ("_codecs", "encode"): __import__("codecs").encode,
}


class _SafeUnpickler(pickle.Unpickler):
  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, little_endian: bool, source: str):
    super().__init__(file)
    self._archive, self._prefix, self._little, self._source = archive, prefix, little_endian, source
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    raise CheckpointError(f"{self._source}: refers to {module}.{name}, which a weights-only reader does not "
                          "load (only tensors, dicts, lists and plain values are allowed)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise CheckpointError(f"{self._source}: unexpected persistent id {pid!r} (not a torch storage)")
    _, storage_type, key, _location, _numel = pid
    if key not in self._storages:
      try:
        raw = self._archive.read(f"{self._prefix}/data/{key}")
      except KeyError:
        raise CheckpointError(f"{self._source}: storage data/{key} is missing from the archive") from None
      dtype = storage_type.dtype.newbyteorder("<" if self._little else ">")
      if len(raw) % dtype.itemsize:
        raise CheckpointError(f"{self._source}: storage data/{key} has {len(raw)} bytes, not a whole number "
                              f"of {storage_type.dtype} items")
      self._storages[key] = np.frombuffer(raw, dtype).astype(storage_type.dtype)
    return self._storages[key]


def load_torch_file(path) -> object:
  """The object `torch.save` wrote to `path`, with tensors as numpy arrays. CheckpointError if unreadable."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise CheckpointError(f"{path}: no such file")
  if not zipfile.is_zipfile(path):
    raise CheckpointError(f"{path}: not a zip-format torch.save file (files from torch < 1.6 or other "
                          "pickles are not read; re-save with a current torch, or use safetensors)")
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
      if len(pickles) != 1:
        raise CheckpointError(f"{path}: expected one <name>/data.pkl in the archive, found {len(pickles)}")
      prefix = pickles[0][:-len("/data.pkl")]
      names = set(archive.namelist())
      order = archive.read(f"{prefix}/byteorder").decode().strip() if f"{prefix}/byteorder" in names else "little"
      unpickler = _SafeUnpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix, order == "little",
                                 str(path))
      return unpickler.load()
  except CheckpointError:
    raise
  except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError) as e:
    raise CheckpointError(f"{path}: corrupt torch.save file ({e})") from None


def read_torch_state_dict(path, key: str | None = None) -> dict[str, np.ndarray]:
  """A flat {name: array} state dict from a torch file: the saved dict itself, or its entry `key`
  (e.g. 'state_dict' or 'model' in training checkpoints)."""
  obj = load_torch_file(path)
  if key is not None:
    if not isinstance(obj, dict) or key not in obj:
      raise CheckpointError(f"{path}: no {key!r} entry in the saved object")
    obj = obj[key]
  if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise CheckpointError(f"{path}: expected a state dict (names -> tensors)")
  return dict(obj)
