"""TensorBoard event files kept as one clean curve across kills and resumes.

tensorboardX buffers events and flushes them every couple of minutes, so a run killed with -9 leaves
holes (steps never flushed) and, once resumed from an older checkpoint, duplicates (steps written again).
`metrics.jsonl` holds the same scalars, written line by line and cut back to the restored step
(`metrics_log`), so on resume the event files are rebuilt from it: one file holding every step up to the
restored one exactly once, replacing the old files; the resumed writer appends the steps after it in its
own file. Wall times are kept from the old events where they exist.

Event files are TFRecord files: per record a little-endian u64 length, its masked CRC32C (u32), the
serialised `Event`, the data's masked CRC32C. `read_events` stops at the first torn or unparsable record
(the tail of a killed writer).
"""
import math
import os
import pathlib
import socket
import struct

from tensorboardX.proto import event_pb2, summary_pb2
from tensorboardX.record_writer import masked_crc32c

REBUILT_SUFFIX = ".vqax-rebuilt"


def event_files(log_dir) -> list[pathlib.Path]:
  """The event files of a log folder, in the order TensorBoard reads them (by name)."""
  folder = pathlib.Path(log_dir)
  return sorted(p for p in folder.glob("*tfevents*") if p.is_file()) if folder.is_dir() else []


def read_events(path) -> list:
  """The `Event`s of one file, up to the first torn or corrupt record."""
  data = pathlib.Path(path).read_bytes()
  events, offset = [], 0
  while offset + 12 <= len(data):
    header = data[offset:offset + 8]
    (length,) = struct.unpack("<Q", header)
    if struct.unpack("<I", data[offset + 8:offset + 12])[0] != masked_crc32c(header):
      break
    end = offset + 12 + length + 4
    if end > len(data):
      break
    event = event_pb2.Event()
    try:
      event.ParseFromString(data[offset + 12:offset + 12 + length])
    except Exception:  # protobuf's DecodeError: a corrupt record ends the readable part
      break
    events.append(event)
    offset = end
  return events


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value), ...] over all event files of a folder, in file order."""
  series = {}
  for path in event_files(log_dir):
    for event in read_events(path):
      if event.HasField("summary"):
        for value in event.summary.value:
          if value.HasField("simple_value"):
            series.setdefault(value.tag, []).append((event.step, value.simple_value))
  return series


def rebuild_from_metrics(log_dir, metrics_path, resume_step: int) -> bool:
  """Make `log_dir` hold exactly the scalars of `metrics_path` up to `resume_step`, each step once.

  Nothing is rewritten when the event files already hold exactly those (tag, step) pairs. Returns whether
  it rewrote. The new file is written in full before the old ones are removed: a kill in between leaves
  duplicates that the next start rebuilds away, never a lost step.
  """
  log_dir = pathlib.Path(log_dir)
  files = event_files(log_dir)
  if not files:
    return False
  lines = [line for line in _metric_lines(metrics_path) if line["step"] <= resume_step]
  wanted = {(tag, line["step"]) for line in lines for tag in _scalars(line)}
  wall_times, found, clean = {}, set(), True
  for path in files:
    for event in read_events(path):
      if not event.HasField("summary"):
        continue
      wall_times.setdefault(event.step, event.wall_time)
      for value in event.summary.value:
        key = (value.tag, event.step)
        clean = clean and key not in found
        found.add(key)
  if clean and found == wanted:
    return False
  first_time = min(wall_times.values(), default=os.stat(files[0]).st_mtime)
  target = log_dir / f"events.out.tfevents.{int(first_time)}.{socket.gethostname()}{REBUILT_SUFFIX}"
  tmp = target.with_name(target.name + ".tmp")
  with open(tmp, "wb") as f:
    _write_record(f, event_pb2.Event(wall_time=first_time, file_version="brain.Event:2"))
    wall_time = first_time
    for line in lines:
      wall_time = wall_times.get(line["step"], wall_time)
      values = [summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in _scalars(line).items()]
      _write_record(f, event_pb2.Event(wall_time=wall_time, step=line["step"],
                                       summary=summary_pb2.Summary(value=values)))
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, target)
  for path in files:
    if path != target:
      path.unlink()
  return True


def _metric_lines(path) -> list[dict]:
  from vqax.train.metrics_log import read_metrics
  return read_metrics(path)


def _scalars(line: dict) -> dict[str, float]:
  """The numeric fields of a metrics line (null is a non-finite value the line could not hold as such)."""
  out = {}
  for key, value in line.items():
    if key == "step" or isinstance(value, (str, bool)):
      continue
    if value is None:
      out[key] = math.nan
    elif isinstance(value, (int, float)):
      out[key] = float(value)
  return out


def _write_record(f, event) -> None:
  data = event.SerializeToString()
  header = struct.pack("<Q", len(data))
  f.write(header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data)))

