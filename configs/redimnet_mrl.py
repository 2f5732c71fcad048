"""ReDimNet + Matryoshka AAM-softmax speaker embeddings (shared/SPEC.md sections 2-3).

Fine-tune a converted official checkpoint on VoxCeleb2 dev (wav/flac; convert the m4a release first):
  vqax convert redimnet b2.pt --out runs/b2_converted
  vqax train --config configs/redimnet_mrl.py --workdir runs/mrl_b2 --data_root /data/vox2_dev \
      --config.model.size=b2 --config.init_from=runs/b2_converted
  vqax eval-sv --workdir runs/mrl_b2 --trials /data/vox1/veri_test2.txt --data_root /data/vox1/wav
Variants: `:demo` (a few minutes on a CPU, synthetic speakers: `vqax synth speakers --out data/synth_speakers`)
and `:smoke` (seconds, for tests). Any field can be overridden with --config.<field>=<value>.
"""
import ml_collections

from vqax.train.defaults import trainer_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = trainer_config("redimnet_mrl")

  # Data: <data_root>/<speaker>/[<video or chapter>/]<utt>.{wav,flac}; labels are the speaker folders.
  c.data_root = "data/voxceleb2_dev"
  c.segment_seconds = 2.0  # random training crop (WeSpeaker's 200 frames); shorter files are repeat-padded
  c.min_seconds = 0.0  # files shorter than this are left out of training (0: keep all)
  c.resample = False  # resample other rates to 16 kHz instead of rejecting the file

  # Model: ReDimNet backbone (b0...b6, optionally with some official model_config keys overridden) and
  # the Matryoshka head: BatchNorm + Linear 192 -> projection_dim.
  c.model.size = "b0"
  c.model.overrides = ml_collections.ConfigDict()  # e.g. {"F": 40, "stages_setup": ...} for tiny variants
  c.model.projection_dim = 256
  c.model.num_classes = 0  # 0: the number of speaker folders (VoxCeleb2 dev: 5,994)
  c.init_from = ""  # folder written by `vqax convert redimnet` (backbone weights; must match model.size)
  c.mrl_dims = (64, 128, 192, 256)  # nested prefixes of the projection trained by the Matryoshka loss
  c.mrl_weights = (1.0, 1.0, 1.0, 1.0)  # c_m in the loss sum c_m * CE_m / sum c_m

  # AAM-softmax; the margin ramps exponentially from 0 between the two epochs (WeSpeaker's schedule;
  # end <= start disables the ramp).
  c.margin = 0.2
  c.scale = 30.0
  c.margin_ramp_start_epoch = 0
  c.margin_ramp_end_epoch = 10

  # Stage 1 trains only the head (projection + class weights) with the backbone frozen, stage 2 everything.
  c.epochs = 40
  c.freeze_backbone_epochs = 5

  c.batch_size = 128  # per device
  c.learning_rate = 1e-3
  c.warmup_steps = 2000
  c.weight_decay = 0.01
  c.grad_clip_norm = 5.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000

  # Verification (vqax eval-sv / embed): whole utterances, padded by repetition up to length buckets that
  # grow by bucket_ratio (one compile per bucket); max_seconds > 0 crops longer files (centre).
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 16
  c.eval.bucket_ratio = 1.25
  c.eval.max_seconds = 0.0
  c.eval.mean = "none"  # subtract a mean embedding: "none", "trials" (all trial files) or a cohort folder
  c.eval.cohort_size = 2000  # files drawn from the cohort folder for its mean

  if variant == "demo":
    # A few minutes on a 2-core CPU: a narrow ReDimNet on `vqax synth speakers` data.
    c.data_root = "data/synth_speakers"
    c.model.overrides = tiny_redimnet(F=48, C=8)
    c.segment_seconds = 1.5
    c.batch_size = 16
    c.epochs = 12
    c.freeze_backbone_epochs = 1
    c.margin_ramp_start_epoch = 1
    c.margin_ramp_end_epoch = 6
    c.learning_rate = 3e-3
    c.warmup_steps = 20
    c.log_every_steps = 10
    c.checkpoint_every_steps = 200
    c.eval.max_seconds = 4.0
    c.eval.bucket_ratio = 2.0
  elif variant == "smoke":
    # Seconds on CPU: full b0 compiles for minutes there, so a two-stage ReDimNet of the same kind.
    c.data_root = "data/synth_speakers"
    c.model.overrides = tiny_redimnet(F=40, C=8)
    c.segment_seconds = 1.0
    c.batch_size = 8
    c.epochs = 6
    c.freeze_backbone_epochs = 1
    c.margin_ramp_start_epoch = 1
    c.margin_ramp_end_epoch = 3
    c.learning_rate = 3e-3
    c.warmup_steps = 5
    c.log_every_steps = 5
    c.checkpoint_every_steps = 1000
    c.eval.batch_size = 8
    c.eval.max_seconds = 2.0
    c.eval.bucket_ratio = 2.0
  elif variant:
    raise ValueError(f"unknown variant {variant!r}: expected '', 'demo' or 'smoke'")
  return c


def tiny_redimnet(F: int, C: int) -> ml_collections.ConfigDict:
  """model_config overrides for a small ReDimNet: dense 2-D convs, one block per stage, "fc" time context."""
  return ml_collections.ConfigDict({
      "F": F, "C": C, "group_divisor": None, "block_1d_type": "fc",
      "stages_setup": ((1, 1, 1, ((3, 3),), None), (2, 1, 1, ((3, 3),), 4), (2, 1, 1, ((3, 3),), 4)),
  })
