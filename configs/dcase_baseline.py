"""The DCASE2020 Task 2 baseline autoencoder as its own task, beside the VQ-VAE.

Train, then score:
  vqax train --config configs/dcase_baseline.py --workdir runs/baseline --data_root /path/to/dev_data
  vqax score --workdir runs/baseline
The official baseline trains one model per machine type: --machine_type fan (a comma list or "all" trains
one model on every type, each normalised with its own statistics, as the VQ-VAE task does).
Variant `:smoke` is seconds on a CPU, for tests.
"""
import ml_collections

from vqax.train.defaults import trainer_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = trainer_config("dcase_baseline")

  # Data: the DCASE layout <data_root>/<machine_type>/{train,test}/, the VQ-VAE task's front end and stats.
  c.data_root = "data/synth_dcase"
  c.machine_type = "all"
  c.norm_stats_path = ""  # default: <workdir>/norm_stats.json (computed on the training split)
  c.feature_cache_dir = ""
  c.resample = False
  c.stereo = "downmix"

  # Batch: clips per device x random context vectors per clip (16 x 32 = 512, the official batch size).
  c.batch_size = 16
  c.vectors_per_clip = 32

  # Model: the official sizes (vqax/models/dcase_baseline.py) on 5-frame x 64-mel context vectors.
  c.model.context_frames = 5
  c.model.hidden = (128, 128, 128, 128)
  c.model.bottleneck = 8

  # Plain Adam at a constant rate (the official baseline: Keras Adam, 1e-3, 100 epochs); the task's
  # make_optimizer uses no warm-up, decay, weight decay or clipping, and rejects non-zero values for them.
  c.epochs = 100
  c.learning_rate = 1e-3
  c.weight_decay = 0.0
  c.warmup_steps = 0
  c.grad_clip_norm = 0.0

  c.score = ml_collections.ConfigDict()
  c.score.max_fpr = 0.1

  if variant == "smoke":
    # Seconds on a CPU: a narrow model for tests (tests/test_dcase_baseline_task.py trains it for more epochs).
    c.batch_size = 8
    c.vectors_per_clip = 32
    c.epochs = 3
    c.learning_rate = 3e-3
    c.model.hidden = (32, 32)
    c.model.bottleneck = 4
    c.log_every_steps = 1
    c.checkpoint_every_steps = 4
  elif variant:
    raise ValueError(f"unknown variant {variant!r}: expected '' or 'smoke'")
  return c
