"""SIGTERM and Ctrl-C end a training run cleanly at any moment, start-up included.

A signal only sets a flag (`listening`). Where the run is decides what the flag does:
  start-up (data scan, normalisation statistics, model build, restore): the phases call `check(where)`
    between units of work; it raises `StopRequested`, which `vqax train` prints as one line and exits 0.
    Nothing of the run is half-written at those points (every file written so far was written
    atomically), so the workdir resumes as it was.
  the loop (`training_loop`): the current step finishes, is checkpointed, and the run returns.
A signal arriving inside a long native call (an XLA compile) is seen when the call returns: the start-up
check after it, or the first step, stops the run. A second signal while the first is handled raises
KeyboardInterrupt at once (Ctrl-C twice: stop now).

`listening` is re-entrant: the CLI installs it before importing JAX, the trainer again for library use;
both share one flag. Handlers are restored when the outermost one exits, so notebooks and test runners keep
their own Ctrl-C behaviour.
"""
import contextlib
import functools
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
  """A stop signal arrived during start-up; the run ended before training (the CLI exits 0).

  Not a VqaxError: no handler of user errors may mistake it for a bad file and carry on.
  """

  def __init__(self, signal_name: str, where: str):
    self.signal_name, self.where = signal_name, where
    super().__init__(f"{signal_name} received during start-up ({where}): stopped before training; nothing was "
                     f"left half-written, rerun the same command to start or resume")


class _Listener:
  def __init__(self):
    self.signal_name = None  # set by the first stop signal
    self.in_loop = False
    self._depth = 0
    self._previous = {}

  def install(self):
    if self._depth == 0 and threading.current_thread() is threading.main_thread():
      for sig in STOP_SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    self._depth += 1

  def uninstall(self):
    self._depth -= 1
    if self._depth == 0:
      for sig, handler in self._previous.items():
        signal.signal(sig, handler)
      self._previous = {}
      self.signal_name, self.in_loop = None, False

  @property
  def active(self) -> bool:
    return self._depth > 0

  def _handle(self, signum, frame):
    if self.signal_name is not None:  # a second signal: stop now
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name


_listener = _Listener()


@contextlib.contextmanager
def listening():
  """Catch SIGTERM/SIGINT as a stop request for the duration (re-entrant; main thread only)."""
  _listener.install()
  try:
    yield _listener
  finally:
    _listener.uninstall()


def stops_cleanly(function):
  """Decorator: `function` runs inside `listening()`."""
  @functools.wraps(function)
  def wrapper(*args, **kwargs):
    with listening():
      return function(*args, **kwargs)
  return wrapper


def requested() -> str | None:
  """The name of the stop signal received, or None."""
  return _listener.signal_name if _listener.active else None


def check(where: str) -> None:
  """Between units of start-up work: raise StopRequested if a stop signal has arrived.

  A no-op outside `listening()`, inside the training loop (which saves first) and off the main thread
  (loader threads never stop a run; the loop does).
  """
  if (_listener.active and not _listener.in_loop and _listener.signal_name is not None
      and threading.current_thread() is threading.main_thread()):
    raise StopRequested(_listener.signal_name, where)


@contextlib.contextmanager
def training_loop():
  """The loop's view: yields the listener (`.signal_name`); start-up checks are off while it runs."""
  with listening() as listener:
    listener.in_loop = True
    try:
      yield listener
    finally:
      listener.in_loop = False
