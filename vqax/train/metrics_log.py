"""`<workdir>/metrics.jsonl`: one JSON line per logged step, kept as one clean curve across resumes.

A run killed at any moment may have logged steps past its last checkpoint (or half a line). On resume those
lines are dropped, so the resumed run appends exactly where the restored state continues and the file
matches an uninterrupted run's. Each line is flushed as written: a kill loses at most the line in flight.
"""
import contextlib
import json
import math
import os
import pathlib

from vqax.train.save_errors import WorkdirWriteError


class MetricsLog:
  """Append-only per-step scalars; `resume_step` drops everything logged after the restored step."""

  def __init__(self, path, *, resume_step: int, enabled: bool = True):
    self.path = pathlib.Path(path)
    self._file = None
    if not enabled:  # only process 0 writes
      return
    kept = [line for line in _read_lines(self.path) if line["step"] <= resume_step]
    tmp = self.path.with_name(self.path.name + ".tmp")
    tmp.write_text("".join(_encode(line) for line in kept))
    os.replace(tmp, self.path)  # atomic: a kill here leaves the old or the truncated file, never half of one
    self._file = open(self.path, "a", encoding="utf-8")

  def append(self, record: dict) -> None:
    if self._file is not None:
      try:
        self._file.write(_encode(record))
        self._file.flush()
      except OSError as e:  # disk full, read-only: stop with one line; the lines past the checkpoint go on resume
        raise WorkdirWriteError(f"could not write {self.path} ({e.strerror}); free space or make the workdir "
                                f"writable, then rerun the same command to resume from the last checkpoint") from None

  def close(self) -> None:
    if self._file is not None:
      with contextlib.suppress(OSError):  # a failed flush already stopped the run (append said why)
        self._file.close()
      self._file = None


def read_metrics(path) -> list[dict]:
  """The lines of a metrics.jsonl (a torn last line is skipped)."""
  return _read_lines(pathlib.Path(path))


def _read_lines(path: pathlib.Path) -> list[dict]:
  if not path.is_file():
    return []
  lines = []
  for text in path.read_text(encoding="utf-8").splitlines():
    try:
      line = json.loads(text)
    except json.JSONDecodeError:  # the line a kill cut short
      continue
    if isinstance(line, dict) and isinstance(line.get("step"), int):
      lines.append(line)
  return lines


def _encode(record: dict) -> str:
  # Strict JSON (NaN/Inf become null); floats keep every bit (repr round-trips).
  clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
  return json.dumps(clean, default=float) + "\n"
