"""What every training run holds from its first line to its last: stop signals and the workdir lock.

`@guarded` wraps the trainer's `train`: SIGTERM/Ctrl-C are caught from its first line (`stop_signals`),
and whatever the run takes through this module (the workdir lock) is given back when `train` returns or
raises, so a run that failed in-process (a test, a notebook) never keeps its workdir locked.
"""
import contextlib
import functools
import pathlib

from vqax import stop_signals
from vqax.train import workdir_lock

_scopes: list[contextlib.ExitStack] = []  # the guarded runs in progress (nested calls: innermost last)
_unscoped: list = []  # locks taken outside a guarded run: held until the process ends


def guarded(train):
  @functools.wraps(train)
  def wrapper(*args, **kwargs):
    with stop_signals.listening(), contextlib.ExitStack() as scope:
      _scopes.append(scope)
      try:
        return train(*args, **kwargs)
      finally:
        _scopes.pop()
  return wrapper


def lock_workdir(workdir) -> None:
  """Take `workdir`'s lock for this process until the guarded run ends (WorkdirBusyError if held).

  Before anything is written to the workdir. A folder that cannot be created is left to the trainer's
  own one-line error about it: nothing can be written there to collide with.
  """
  import jax
  try:
    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
    lock = workdir_lock.WorkdirLock(workdir, jax.process_index())
    lock.acquire()
  except workdir_lock.WorkdirBusyError:
    raise
  except OSError:
    return
  if _scopes:
    _scopes[-1].callback(lock.release)
  else:
    _unscoped.append(lock)
