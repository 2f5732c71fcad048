"""Reading `.npy` arrays strictly: the header's shape and dtype must account for the file's size exactly.

`np.load` fails on a truncated file with a message that names no file ("cannot reshape array of size
...", or EOFError for a zero-byte one) and accepts trailing bytes silently. A size that disagrees with the
header is a corrupt file either way (a killed writer, a partial copy), so it is refused, naming the file.
"""
import os
import pathlib

import numpy as np

from vqax.audio.io import check_is_file, first_line
from vqax.errors import DataError


def load_npy(path) -> np.ndarray:
  """The array stored in `path` (no pickled objects), or DataError naming the file and what is wrong."""
  path = pathlib.Path(path)
  check_is_file(path, ".npy array")
  if path.stat().st_size == 0:
    raise DataError(f"{path}: empty .npy file (0 bytes)")
  try:
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
      shape, _, dtype = read_header(f)
      data_offset = f.tell()
      if dtype.hasobject:
        raise DataError(f"{path}: holds Python objects, not a plain numeric array")
      expected = data_offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
      actual = os.fstat(f.fileno()).st_size
      if actual != expected:
        raise DataError(f"{path}: truncated or corrupt .npy file: its header promises a {dtype} array of shape "
                        f"{list(shape)} ({expected} bytes), the file has {actual} bytes")
      f.seek(0)
      return np.load(f, allow_pickle=False)
  except DataError:
    raise
  except Exception as e:  # a bad magic string or header, a read error
    raise DataError(f"{path}: not a readable .npy array ({first_line(e)})") from None
