"""The task registry: a task's name -> its class, one line per task.

Everything specific to a task lives in its own package here (config checks, data, program, evaluation,
CLI subcommands); the trainer, the planner and the CLI find it through this table and name no task.
Adding a task: a package with a `Task` subclass (see vqax/train/task.py and docs/architecture.md) and one
line below. Entries are "module:Class" strings, imported on first use, so `vqax --help` stays fast.
"""
import importlib

from vqax import config_loading
from vqax.errors import ConfigError

REGISTRY = {
    "vqvae": "vqax.tasks.vqvae.task:VQVAETask",
    "redimnet_mrl": "vqax.tasks.redimnet_mrl.task:ReDimNetMRLTask",
    "dcase_baseline": "vqax.tasks.dcase_baseline.task:DcaseBaselineTask",
    "dreams": "vqax.tasks.dreams.task:DreaMSTask",
    "spectrogram_gan": "vqax.tasks.spectrogram_gan.task:SpectrogramGanTask",
    "vit_classifier": "vqax.tasks.vit_classifier.task:ViTClassifierTask",
}


def task_class(name):
  """The registered class of task `name`; ConfigError naming the known tasks otherwise."""
  if name not in REGISTRY:
    raise ConfigError(f"task={name!r}: expected one of {', '.join(sorted(REGISTRY))}")
  module_name, _, class_name = REGISTRY[name].partition(":")
  return getattr(importlib.import_module(module_name), class_name)


def create(config):
  """The task the config names (`config.task`), its config checked."""
  return task_class(config.get("task"))(config)


def apply_overrides(config, args):
  """`vqax train`-style options applied to `config` with its task's own flag aliases; returns it locked."""
  cls = task_class(config.get("task"))
  return config_loading.apply_overrides(config, args, cls.flag_aliases, cls.boolean_flags)


def flag_for(config, field: str) -> str:
  """The option that sets `field` on the command line: the seed alias where there is one."""
  aliases = {**config_loading.FLAG_ALIASES, **task_class(config.get("task")).flag_aliases}
  alias = next((flag for flag, target in aliases.items() if target == field), None)
  return f"--{alias}" if alias else f"--config.{field}"


def commands() -> list:
  """Every registered task's CLI subcommands (`vqax.commands.Command`), in registry order."""
  import dataclasses
  found = []
  for name in REGISTRY:
    module = task_class(name).commands
    if module:
      found.extend(dataclasses.replace(c, task=name) for c in importlib.import_module(module).COMMANDS)
  return found
