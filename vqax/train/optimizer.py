"""AdamW with warm-up + cosine decay, gradient clipping, and optax.MultiSteps accumulation.

The schedule counts optimizer updates: MultiSteps only advances the inner optimizer's count on the k-th
micro-step, so accumulation does not stretch or shrink the schedule.
"""
import optax

from vqax.errors import ConfigError


def learning_rate_schedule(config, total_updates: int) -> optax.Schedule:
  warmup = min(int(config.warmup_steps), max(total_updates - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(config.learning_rate), warmup_steps=warmup,
      decay_steps=max(total_updates, warmup + 1), end_value=float(config.learning_rate) * 0.01)


def make_optimizer(config, total_micro_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  k = int(config.gradient_accumulation_steps)
  if k < 1:
    raise ConfigError(f"gradient_accumulation_steps={k}: expected an integer >= 1")
  schedule = learning_rate_schedule(config, max(total_micro_steps // k, 1))
  tx = optax.chain(
      optax.clip_by_global_norm(float(config.grad_clip_norm)) if config.grad_clip_norm else optax.identity(),
      optax.adamw(schedule, weight_decay=float(config.weight_decay)),
  )
  if k > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=k)
  return tx, schedule
