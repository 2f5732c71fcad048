"""The high-level API the CLI uses and notebooks can: train a config with its registered task.

  from vqax import config_loading, run
  config = config_loading.load_config("configs/vqvae_dcase.py:smoke")
  summary = run.train(config, "runs/smoke")

Out-of-device-memory steps stop with the planner's report (vqax.planning.oom); lower layers take the task
and the handler explicitly (`vqax.train.trainer.train`).
"""
from vqax import tasks
from vqax.planning.oom import handle_out_of_memory
from vqax.train import trainer


def train(config, workdir, *, task=None, **kwargs) -> dict:
  """`trainer.train` with the config's registered task and the planner's out-of-memory report."""
  kwargs.setdefault("on_out_of_memory", handle_out_of_memory)
  return trainer.train(config, workdir, task or tasks.create(config), **kwargs)
