"""Loading `get_config()` files, `--config.x=y` overrides and the seed scripts' flag names.

Configs are Python files, so they are only ever loaded from a path the user names on the command line
(or the repository's own configs/ folder); nothing loads code from data or checkpoint folders.
"""
import ast
import importlib.util
import json
import pathlib
from typing import Sequence

import ml_collections

from vqax.errors import ConfigError

REPO_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"

# Seed-script flags every task's config has (vqax.train.defaults) -> config field. Tasks add their own
# (`Task.flag_aliases`). Boolean flags take no value.
FLAG_ALIASES = {
    "batch_size": "batch_size", "epochs": "epochs", "data_root": "data_root",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "device": "device",
    "seed": "seed", "learning_rate": "learning_rate",
}
BOOLEAN_ALIASES = {"use_amp", "use_gradient_checkpointing", "memory_saver", "skip_bad_files"}


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:variant]` -> ConfigDict from its get_config(variant)."""
  path_text, _, variant = spec.partition(":")
  path = pathlib.Path(path_text)
  if not path.is_file() and (REPO_CONFIGS / path.name).is_file() and not path.parent.name:
    path = REPO_CONFIGS / path.name
  if not path.is_file():
    raise ConfigError(f"--config {path_text}: config file not found")
  module_spec = importlib.util.spec_from_file_location(f"vqax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  # A config is user code: whatever it raises (sys.exit included) is one line naming the file, not a traceback.
  def _describe_failure(error: BaseException) -> str:
    if isinstance(error, SystemExit):
      return f"it called sys.exit({error.code!r})"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__

  try:
    module_spec.loader.exec_module(module)
  except (Exception, SystemExit) as e:
    raise ConfigError(f"--config {path}: failed to load ({_describe_failure(e)})") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config {path}: defines no get_config()")
  call = f"get_config({variant!r})" if variant else "get_config()"
  try:
    config = module.get_config(variant) if variant else module.get_config()
  except ValueError as e:  # the configs' own way to refuse a variant: their message says it all
    raise ConfigError(f"--config {spec}: {e}") from None
  except (Exception, SystemExit) as e:
    raise ConfigError(f"--config {path}: {call} failed ({_describe_failure(e)})") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"--config {path}: {call} returned {type(config).__name__}, expected an "
                      f"ml_collections.ConfigDict")
  return config


def _parse_value(text: str, current, name: str):
  """Parse `text` to the type of the field's current value (ml_collections keeps types strict)."""
  if isinstance(current, bool):
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
      return True
    if lowered in ("0", "false", "no", "off"):
      return False
    raise ConfigError(f"--config.{name}={text}: expected true or false")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise ConfigError(f"--config.{name}={text}: expected an integer") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise ConfigError(f"--config.{name}={text}: expected a number") from None
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text if text.strip().startswith(("(", "[")) else f"({text},)")
    except (ValueError, SyntaxError):
      raise ConfigError(f"--config.{name}={text}: expected a comma-separated list like 64,128") from None
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)
  return text


def set_field(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
  node = config
  *parents, leaf = dotted.split(".")
  for part in parents:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise ConfigError(f"--config.{dotted}: no such config group {part!r}")
    node = node[part]
  if leaf not in node:
    raise ConfigError(f"--config.{dotted}: no such config field (known: {', '.join(sorted(node.keys()))})")
  with node.ignore_type():
    node[leaf] = _parse_value(text, node[leaf], dotted)


def apply_overrides(config: ml_collections.ConfigDict, args: Sequence[str], aliases=None,
                    boolean_aliases=()) -> ml_collections.ConfigDict:
  """Apply `--config.a.b=v` / `--config.a.b v` and the seed aliases (`--batch_size 8`, `--use_amp`).

  `aliases` / `boolean_aliases` add a task's own flag names. The config comes back locked: a field that
  does not exist can be neither set nor added later (a typo in `--config.x=y` is an error, never a no-op).
  """
  aliases = {**FLAG_ALIASES, **(aliases or {})}
  booleans = BOOLEAN_ALIASES | set(boolean_aliases)
  args = list(args)
  i = 0
  while i < len(args):
    arg = args[i]
    if not arg.startswith("--"):
      raise ConfigError(f"unexpected argument {arg!r}: options look like --config.field=value")
    name, has_value, value = arg[2:].partition("=")
    if name in booleans and not has_value:
      value, has_value = "true", True
    if not has_value:
      if i + 1 >= len(args):
        raise ConfigError(f"--{name}: expected a value")
      value = args[i + 1]
      i += 1
    i += 1
    if name.startswith("config."):
      set_field(config, name[len("config."):], value)
    elif name in aliases:
      set_field(config, aliases[name], value)
    elif name == "use_amp":
      set_field(config, "compute_dtype", "bfloat16" if _parse_value(value, True, name) else "float32")
    elif name == "use_gradient_checkpointing":
      from vqax.models.remat import DEFAULT_REMAT_POLICY
      set_field(config, "remat_policy", DEFAULT_REMAT_POLICY if _parse_value(value, True, name) else "none")
    elif name in booleans:
      set_field(config, name, value)
    else:
      raise ConfigError(f"unknown option --{name} (use --config.<field>=<value>)")
  config.lock()
  return config


def config_to_json(config) -> str:
  """JSON text of a ConfigDict (or of one of its values)."""
  value = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  return json.dumps(value, indent=1, sort_keys=True, default=list)


def config_from_json(text: str) -> ml_collections.ConfigDict:
  raw = json.loads(text)

  def tuples(node):
    if isinstance(node, dict):
      return {k: tuples(v) for k, v in node.items()}
    if isinstance(node, list):
      return tuple(node)
    return node
  return ml_collections.ConfigDict(tuples(raw))
