"""The trainer's config fields, shared by every task's config file (`get_config()` starts from these).

Each task's config sets `task`, its data fields, its `model` group and whatever of these it trains with
differently; everything here means the same for every task.
"""
import ml_collections


def trainer_config(task: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = task  # a name in vqax/tasks/__init__.py REGISTRY
  c.seed = 0
  c.data_root = ""
  c.worker_count = 0  # grain worker processes (0: read in the main process's threads)
  c.skip_bad_files = False  # log each unreadable file once and train without it (counted in the summary)
  c.model = ml_collections.ConfigDict()
  # How the layers run: "auto" (XLA:CPU reformulations when compiling for the CPU, XLA's own layers on
  # GPU/TPU), "xla" or "cpu". Every choice computes the same function with the same parameters.
  c.model.layer_forms = "auto"

  # Schedule and optimiser: AdamW, linear warm-up then cosine decay over optimizer updates.
  c.epochs = 10
  c.batch_size = 16  # per device and micro-step; global = batch_size x devices (x accumulation per update)
  c.learning_rate = 1e-3
  c.warmup_steps = 100
  c.weight_decay = 1e-4
  c.grad_clip_norm = 1.0
  c.gradient_accumulation_steps = 1  # optax.MultiSteps; the schedule counts updates

  # Memory (shared/SPEC.md section 4).
  c.compute_dtype = "float32"  # or "bfloat16" (--use_amp); params and optimizer state stay float32
  c.remat_policy = "none"  # per-block jax.checkpoint policy (--use_gradient_checkpointing -> "full")
  c.memory_saver = False  # bfloat16 compute + remat in one switch

  # Parallelism and robustness.
  c.device = "auto"  # auto, cpu, gpu or tpu
  c.shard_params = False  # ZeRO-3/FSDP-style: shard parameters and optimizer state over the data axis
  c.shard_opt_state = False  # ZeRO-1-style: shard only the optimizer state (parameters stay replicated)
  # Multi-host (vqax/train/distributed.py); unset ("" / -1) falls back to VQAX_* / JAX_* environment variables.
  c.coordinator_address = ""  # host:port of process 0
  c.num_processes = -1
  c.process_id = -1
  c.nonfinite = "skip"  # non-finite loss/gradients: "skip" the update or "halt"

  # Logging and checkpoints.
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200  # also at every epoch end and at the end of training
  c.keep_checkpoints = 3
  return c
