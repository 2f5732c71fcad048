"""One training run per workdir: a second `vqax train` on the same folder refuses, naming the running one.

Each process of a run holds `<workdir>/.vqax_lock.process_<i>` (its JAX process index), so two hosts
started with the same index collide as well. Two mechanisms, because file systems differ:
  - an exclusive `flock` on the file: the kernel drops it when the holder exits, even under kill -9, so a
    crashed run never blocks a restart on the same machine (NFSv4 also honours it across hosts);
  - the holder's pid, host and start time written in the file, its mtime refreshed every
    `HEARTBEAT_S` seconds: where flock does not reach another host, an entry from another host refreshed
    within `STALE_AFTER_S` still refuses, and an entry from this host whose pid is gone is stale.
A released lock is emptied, not deleted (deleting a flocked file lets two runs lock two different files).
"""
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import pathlib
import socket
import sys
import threading
import time

import psutil

from vqax.errors import ConfigError

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
STALE_AFTER_S = 120.0


class WorkdirBusyError(ConfigError):
  """Another run holds this workdir."""


def lock_path(workdir, process_index: int) -> pathlib.Path:
  return pathlib.Path(workdir) / f".vqax_lock.process_{process_index}"


class WorkdirLock:
  """Held from `acquire` to `release` (or the process's end)."""

  def __init__(self, workdir, process_index: int = 0):
    self.workdir = pathlib.Path(workdir)
    self.path = lock_path(workdir, process_index)
    self.process_index = process_index
    self._fd = None
    self._stop = threading.Event()
    self._heartbeat = None

  def acquire(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise self._busy(_read_holder(fd), "is still running") from None
        log.warning("%s: file locks unsupported here (%s); relying on the pid/host entry", self.path, e.strerror)
      holder = _read_holder(fd)
      reason = self._live_elsewhere(holder)
      if reason:
        raise self._busy(holder, reason)
      if holder:
        log.info("%s: taking over the lock of a run that is gone (pid %s on %s)", self.path, holder.get("pid"),
                 holder.get("host"))
      _write_holder(fd, {"pid": os.getpid(), "host": socket.gethostname(), "process_index": self.process_index,
                         "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                         "started_unix": time.time(), "command": " ".join(sys.argv)[:500]})
    except BaseException:
      os.close(fd)  # closing drops the flock
      raise
    self._fd = fd
    self._heartbeat = threading.Thread(target=self._beat, name="vqax-workdir-lock", daemon=True)
    self._heartbeat.start()
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    self._stop.set()
    if self._heartbeat is not None:
      self._heartbeat.join()
    with contextlib.suppress(OSError):  # a full or read-only disk: the flock still goes with the descriptor
      os.ftruncate(self._fd, 0)
    os.close(self._fd)
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_S):
      with contextlib.suppress(OSError):
        os.utime(self._fd)

  def _live_elsewhere(self, holder: dict) -> str | None:
    """Why an entry whose flock we obtained still belongs to a live run (None: stale or empty)."""
    if not holder:
      return None
    if holder.get("host") != socket.gethostname():
      age = time.time() - os.stat(self.path).st_mtime
      if age < STALE_AFTER_S:
        return f"refreshed its lock {age:.0f} s ago"
      return None
    pid = holder.get("pid")
    if pid == os.getpid() or not isinstance(pid, int):
      return None
    try:
      process = psutil.Process(pid)
      alive = process.create_time() <= float(holder.get("started_unix", 0)) + 1.0  # not a reused pid
    except (psutil.NoSuchProcess, psutil.AccessDenied):
      alive = False
    return "is still running" if alive else None

  def _busy(self, holder: dict, reason: str) -> WorkdirBusyError:
    who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
           if holder else "a process that has not written its details yet")
    return WorkdirBusyError(
        f"--workdir {self.workdir} is in use by another vqax train ({who}; it {reason}); wait for it to end or "
        f"use another --workdir (if that run is gone, delete {self.path})")


def acquire(workdir, process_index: int = 0) -> WorkdirLock:
  """Lock `workdir` for this process of a run, or raise WorkdirBusyError (one line naming the holder)."""
  return WorkdirLock(workdir, process_index).acquire()


def _read_holder(fd) -> dict:
  try:
    text = os.pread(fd, 65536, 0).decode("utf-8", "replace")
    holder = json.loads(text) if text.strip() else {}
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _write_holder(fd, holder: dict) -> None:
  data = json.dumps(holder).encode()
  os.ftruncate(fd, 0)
  os.pwrite(fd, data, 0)
  os.fsync(fd)
