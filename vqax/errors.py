"""User-facing errors.

A `VqaxError` is a mistake the user can fix (a path, an option, a file). The CLI prints its message as one
line and exits with status 2 instead of showing a traceback; anything else is a bug and keeps its traceback.
"""


class VqaxError(Exception):
  """A one-line, actionable error about user input (file, option or config value)."""


class ConfigError(VqaxError):
  """A config value or command-line option is invalid."""


class DataError(VqaxError):
  """A data file or folder is missing, empty, corrupt or has the wrong format."""


class CheckpointError(VqaxError):
  """A checkpoint cannot be used (missing, corrupt, or written by a different model config)."""
