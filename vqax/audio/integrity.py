"""Is an audio file whole? Cheap checks for what libsndfile lets through or reports only mid-decode.

libsndfile trusts what is on disk over what the header promises: a wav whose data chunk says 160,000
frames but holds 50,000 opens as a 50,000-frame file, silently. A truncated FLAC opens with its promised
length and fails only when the decoder reaches the missing part. Both are corrupt files; these checks find
them without decoding the whole file:
  wav   the data chunk's declared size against the bytes that follow it on disk (a RIFF walk, ~100 bytes);
  other seek to the last promised frames and decode them (the codec seeks; a truncated stream fails).
Non-finite samples can only be stored by the float subtypes; `scan_float_samples` reads those through.
"""
import os
import struct

import numpy as np
import soundfile as sf

from vqax.errors import DataError

FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # streaming writers leave the data size unset
_PCM_FORMATS = (1, 3, 0xFFFE)  # PCM, IEEE float, extensible: one block_align per frame
_TAIL_FRAMES = 16


def check_complete(path, sound_file: sf.SoundFile, *, decode_tail: bool = True) -> None:
  """DataError naming `path` when its header promises more audio than the file holds.

  decode_tail=False skips the tail decode of compressed formats, for a caller about to decode the whole
  file (it checks the decoded length with `check_decoded_length`).
  """
  if sound_file.format in ("WAV", "WAVEX"):
    _check_wav_data_chunk(path)
  elif decode_tail and sound_file.frames > 0 and sound_file.seekable():
    _check_tail_decodes(path, sound_file)


def explain_failed_decode(path) -> None:
  """After a decode error: raise the DataError of a cut-short file if that is what it is (else nothing)."""
  try:
    with sf.SoundFile(str(path)) as sound_file:
      check_complete(path, sound_file)
  except DataError:
    raise
  except Exception:  # not even the header opens: the caller's "not a readable audio file" stands
    pass


def check_decoded_length(path, sound_file: sf.SoundFile, decoded_frames: int) -> None:
  """DataError when a whole-file decode gave fewer frames than the header promised."""
  if decoded_frames < sound_file.frames:
    raise DataError(f"{path}: truncated or corrupt {sound_file.format} file: the header promises "
                    f"{sound_file.frames} frames, {decoded_frames} could be decoded")


def scan_float_samples(path, sound_file: sf.SoundFile, block_frames: int = 1 << 16) -> None:
  """DataError when a float-subtype file holds NaN or Inf samples (integer subtypes cannot)."""
  if sound_file.subtype not in FLOAT_SUBTYPES:
    return
  sound_file.seek(0)
  for block in sound_file.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
    if not np.all(np.isfinite(block)):
      raise DataError(f"{path}: audio contains NaN or Inf samples")
  sound_file.seek(0)


def _check_tail_decodes(path, sound_file: sf.SoundFile) -> None:
  frames = sound_file.frames
  tail = min(_TAIL_FRAMES, frames)
  try:
    sound_file.seek(frames - tail)
    got = sound_file.read(tail, dtype="float32", always_2d=True).shape[0]
    sound_file.seek(0)
  except sf.LibsndfileError:
    got = -1
  if got != tail:
    raise DataError(f"{path}: truncated or corrupt {sound_file.format} file: the header promises {frames} frames "
                    f"but the last ones cannot be decoded")


def _check_wav_data_chunk(path) -> None:
  with open(path, "rb") as f:
    riff = f.read(12)
    if len(riff) < 12 or riff[8:12] != b"WAVE" or riff[:4] not in (b"RIFF", b"RIFX"):
      return  # RF64, W64 and the like: libsndfile's own length stands
    order = "<" if riff[:4] == b"RIFF" else ">"
    file_size = os.fstat(f.fileno()).st_size
    block_align = format_tag = None
    while True:
      head = f.read(8)
      if len(head) < 8:
        return  # no data chunk: libsndfile has already refused such a file
      chunk_id, size = head[:4], struct.unpack(order + "I", head[4:])[0]
      if chunk_id == b"fmt ":
        fmt = f.read(min(size, 16))
        if len(fmt) >= 14:
          format_tag, _, _, _, block_align = struct.unpack(order + "HHIIH", fmt[:14])
        f.seek(size - len(fmt) + (size & 1), os.SEEK_CUR)
      elif chunk_id == b"data":
        if size in _UNKNOWN_SIZES:
          return
        stored = file_size - f.tell()
        if stored < size:
          raise DataError(f"{path}: truncated wav file: the header promises "
                          f"{_amount(size, block_align, format_tag)} but the file holds "
                          f"{_amount(stored, block_align, format_tag)}")
        return
      else:
        f.seek(size + (size & 1), os.SEEK_CUR)


def _amount(n_bytes: int, block_align, format_tag) -> str:
  if block_align and format_tag in _PCM_FORMATS:
    return f"{n_bytes // block_align} frames"
  return f"{n_bytes} bytes of audio"
