"""`vqax` command line: a thin layer over importable functions (tests and notebooks use the same ones).

  vqax train --config FILE[:variant] --workdir DIR [--config.x=y ...] [--batch_size 8 ...]
  vqax plan --config FILE [--budget 8GiB]   per-device memory of the train step, compiled from shapes
  vqax demo [--task vqvae]                  the task's synthetic data -> train -> evaluate (`make demo`)
  vqax synth KIND --out DIR                 synthetic data sets (dcase, speakers, ...)
  ...and each task's own commands (score, eval-sv, embed, convert KIND): see `vqax --help`.
User mistakes end with one line `vqax: error: ...` and exit status 2; no traceback.
"""
import argparse
import functools
import json
import logging
import os
import pathlib
import sys

from vqax import tasks
from vqax.errors import VqaxError
from vqax.ops import host_allocator
from vqax import stop_signals

# Defaults name the package's own configs by absolute path: a configs/ folder in the current directory
# (a dataset, a stranger's checkout) is never run unless the user names it with --config.
REPO_CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "vqvae_dcase.py")


def _train_arguments(p):
  p.add_argument("--config", default=REPO_CONFIG, help="config file, optionally :variant")
  p.add_argument("--workdir", required=True, help="checkpoints, logs and results go here")
  p.add_argument("--max_steps", type=int, default=None, help="stop after this global step")
  p.add_argument("--no_progress", action="store_true", help="no progress bar (logs only)")


@stop_signals.stops_cleanly  # from the first moment, before JAX is imported
def cmd_train(args, extra):
  from vqax import config_loading, platforms, run
  config = tasks.apply_overrides(config_loading.load_config(args.config), extra)
  platforms.select_platform(config)
  summary = run.train(config, args.workdir, max_steps=args.max_steps, progress=not args.no_progress)
  last = summary["history"][-1] if summary["history"] else {}
  print(f"[vqax] trained to step {summary['final_step']}/{summary['total_steps']}"
        + (f", loss {last['loss']:.4f}" if "loss" in last else "")
        + (f"; skipped {summary['nonfinite_steps']} non-finite steps" if summary["nonfinite_steps"] else "")
        + (f"; skipped {len(summary['data'].get('bad_files', []))} bad files" if summary["data"].get("bad_files") else ""))
  return summary


def _demo_arguments(p):
  p.add_argument("--task", default="vqvae", help=f"one of {', '.join(tasks.REGISTRY)} that has a demo")
  p.add_argument("--data_root", default=None, help="default: the task's demo data folder")
  p.add_argument("--workdir", default="runs/demo")
  p.add_argument("--config", default=None, help="default: the task's demo config")


@stop_signals.stops_cleanly
def cmd_demo(args, extra):
  """Synthetic data (made once) -> train -> evaluate, for any task with a demo."""
  from vqax import config_loading, platforms, run
  cls = tasks.task_class(args.task)
  if cls.demo_config is None:
    from vqax.errors import ConfigError
    raise ConfigError(f"--task {args.task}: this task has no demo")
  data_root = args.data_root or cls.demo_data_root
  cls.make_demo_data(data_root)
  config = config_loading.load_config(args.config or cls.demo_config)
  config.data_root = data_root
  config = tasks.apply_overrides(config, extra)
  platforms.select_platform(config)
  run.train(config, args.workdir)
  return cls.evaluate_demo(args.workdir)


def _generic_commands():
  from vqax.commands import Command
  from vqax.planning import plan_command
  return [Command("train", "train a model from a config (resumes from --workdir)", _train_arguments, cmd_train),
          Command("plan", "compiled memory per device of the train step (no data, no training)",
                  plan_command.add_arguments, plan_command.run),
          Command("demo", "a task's synthetic data -> train -> evaluate (the `make demo` job)", _demo_arguments,
                  cmd_demo)]


def build_parser():
  """(parser, {command or (verb, kind): handler}) for the generic commands and every task's own."""
  parser = argparse.ArgumentParser(prog="vqax", description=__doc__.split("\n\n")[0])
  parser.add_argument("-v", "--verbose", action="store_true")
  sub = parser.add_subparsers(dest="command", required=True)
  handlers, kinds, by_verb = {}, {}, {}
  for command in _generic_commands() + tasks.commands():
    by_verb.setdefault(command.name, []).append(command)
  for name, commands in by_verb.items():
    verb, _, kind = name.partition(" ")
    if kind:
      if verb not in kinds:
        kinds[verb] = sub.add_parser(verb, help=f"{verb} (one of several kinds)").add_subparsers(
            dest="kind", required=True)
      p = kinds[verb].add_parser(kind, help=commands[0].help)
      handlers[(verb, kind)] = commands[0].run
      commands[0].add_arguments(p)
    elif len(commands) == 1:
      p = sub.add_parser(verb, help=commands[0].help)
      handlers[verb] = commands[0].run
      commands[0].add_arguments(p)
    else:  # several tasks define it: the trained workdir's task decides (see vqax.commands)
      p = sub.add_parser(verb, help=f"{verb} with a trained model (options depend on the workdir's task: "
                                    f"{', '.join(c.task for c in commands)})")
      p.add_argument("--workdir", required=True)
      handlers[verb] = functools.partial(_run_for_workdir_task, verb, {c.task: c for c in commands})
  return parser, handlers


def _run_for_workdir_task(verb, by_task, args, extra):
  """Parse the rest of the command line with the options of the task `--workdir` was trained with."""
  from vqax.errors import ConfigError
  config_path = pathlib.Path(args.workdir) / "config.json"
  if not config_path.is_file():
    raise ConfigError(f"--workdir {args.workdir}: no config.json (is this a vqax training folder?)")
  trained = json.loads(config_path.read_text()).get("task")
  if trained not in by_task:
    raise ConfigError(f"--workdir {args.workdir}: `vqax {verb}` is not defined for task {trained!r} (it is for "
                      f"{', '.join(by_task)})")
  command = by_task[trained]
  parser = argparse.ArgumentParser(prog=f"vqax {verb}", description=command.help)
  command.add_arguments(parser)
  task_args, task_extra = parser.parse_known_args(["--workdir", args.workdir] + list(extra))
  task_args.command = verb
  return command.run(task_args, task_extra)


def main(argv=None) -> int:
  if host_allocator.keep_memory_requested():
    # Before JAX starts its threads: XLA:CPU's per-step buffers then reuse their pages (see host_allocator).
    host_allocator.keep_freed_host_memory()
  parser, handlers = build_parser()
  args, extra = parser.parse_known_args(argv)
  logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="[vqax] %(message)s")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  handler = handlers.get((args.command, getattr(args, "kind", None))) or handlers[args.command]
  try:
    handler(args, extra)
  except stop_signals.StopRequested as e:  # a clean stop, not an error
    print(f"[vqax] {e}", flush=True)
    return 0
  except VqaxError as e:
    print(f"vqax: error: {e}", file=sys.stderr)
    return 2
  return 0


def entry() -> None:
  """The `vqax` executable: on CPU hosts, huge pages for XLA's host buffers (restarts once, see
  host_allocator), then main."""
  host_allocator.restart_with_huge_pages()
  sys.exit(main())


if __name__ == "__main__":
  entry()
