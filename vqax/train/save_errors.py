"""Telling a refused write (disk full, read-only, quota) apart from a bug, and what is left after one.

orbax and tensorstore report a failed write in their own words ("RESOURCE_EXHAUSTED: ... No space left on
device [os_error_code='28']"), sometimes chained under other exceptions; the OS error is what the user can
act on, so it is dug out and named. A refused write is not a bug: one line, not a traceback.
"""
import contextlib
import errno
import logging
import os
import pathlib
import re
import shutil

from vqax.errors import VqaxError

log = logging.getLogger(__name__)

WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG)
_OS_CODE = re.compile(r"os_error_code='?(\d+)")


class WorkdirWriteError(VqaxError):
  """The workdir refused a write (full, read-only): the run stops with one line; checkpoints stay intact."""


def write_failure(error: BaseException) -> str | None:
  """The OS reason ("No space left on device") when `error` (or one it was raised from) is a refused
  write; None for anything else."""
  seen = set()
  pending = [error]
  while pending:
    e = pending.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
      return os.strerror(e.errno)
    match = _OS_CODE.search(str(e))
    if match and int(match.group(1)) in WRITE_ERRNOS:
      return os.strerror(int(match.group(1)))
    for code in WRITE_ERRNOS:
      if os.strerror(code) in str(e):
        return os.strerror(code)
    pending += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
  return None


class held_logs(contextlib.AbstractContextManager):
  """Hold what `logger_name` logs during a save (orbax's worker threads log each failed write at ERROR
  before the save raises): dropped when the save failed on a refused write, which is said in one line,
  passed on unchanged otherwise."""

  def __init__(self, logger_name: str = "absl"):
    self._logger = logging.getLogger(logger_name)
    self._records = []
    self.drop = False

  def filter(self, record) -> bool:
    self._records.append(record)
    return False

  def __enter__(self):
    self._logger.addFilter(self)
    return self

  def __exit__(self, *exc):
    self._logger.removeFilter(self)
    if not self.drop:
      for record in self._records:
        self._logger.handle(record)
    return False


def remove_partial_step(directory, step: int) -> None:
  """Delete what a failed save of `step` left (orbax's temporary folders): it frees the space it took, and
  is never a step orbax would restore anyway."""
  for partial in pathlib.Path(directory).glob(f"{step}.orbax-checkpoint-tmp*"):
    shutil.rmtree(partial, ignore_errors=True)


def kept_message(directory) -> str:
  """What a failed save leaves: the newest committed step (orbax's numbered folders), which resumes as is."""
  steps = sorted(int(p.name) for p in pathlib.Path(directory).iterdir() if p.name.isdigit())
  if steps:
    return (f"the previous checkpoint (step {steps[-1]}) is intact: free space or make the folder writable, "
            f"then rerun the same command to resume from it")
  return "no earlier checkpoint exists: free space or make the folder writable, then rerun the same command"
