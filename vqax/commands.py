"""A CLI subcommand that a task contributes (`Task.commands` names a module with a COMMANDS list).

`name` is a verb ("score") or a verb and a kind ("synth dcase", "convert redimnet"): kinds of one verb from
several tasks share one `vqax VERB` parser. A plain verb that several tasks define (`embed`) acts on a
trained workdir: `vqax VERB --workdir W ...` runs the command of the task W was trained with. Handlers import
what they need when they run, so building the parser stays cheap.
"""
import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Command:
  name: str
  help: str
  add_arguments: Callable  # (argparse.ArgumentParser) -> None
  run: Callable  # (argparse.Namespace, list[str] extra arguments) -> result (ignored by the CLI)
  task: str | None = None  # the registered task it belongs to (set by vqax.tasks.commands)


def describe_manifest(manifest) -> str:
  """'N files' from a synthetic generator's manifest, for the one line `vqax synth` prints."""
  if isinstance(manifest, dict):
    for key in ("total_clips", "n_files", "total_files", "num_files"):
      if key in manifest:
        return f"{manifest[key]} files"
  return "done"
