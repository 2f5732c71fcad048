"""Linear probe on synthetic Gaussian classes: `vqax train --config .../config.py --workdir W`."""
from vqax.train.defaults import trainer_config


def get_config():
  c = trainer_config("linear_probe")
  c.num_points = 512
  c.features = 8
  c.model.num_classes = 2
  c.batch_size = 32
  c.epochs = 3
  c.learning_rate = 0.1
  c.warmup_steps = 2
  c.log_every_steps = 4
  c.checkpoint_every_steps = 6
  return c
