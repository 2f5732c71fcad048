"""Compiled memory of the ViT fine-tuning step per unfreezing stage and of the GAN step, plain vs memory_saver.

  PYTHONPATH=. .venv/bin/python tools/bench_vit_gan_memory.py [--json out.json] [--vit-batch 12] [--gan-batch 24]

Shapes are the seed's: ViT-B/16 at 224 x 224 x 3 with a 2-class head (batch 12); GAN at 128 mels x 1292
frames, 2 classes (batch 24, one critic step per generator step). Each step is compiled ahead of time from
shapes on the default backend (nothing runs); peak = argument + output + temp - alias bytes of
`memory_analysis()`. memory_saver = bfloat16 compute (float32 weights and optimizer state) + remat "full"
per encoder layer / GAN block. XLA:CPU, GPU and TPU compile to different peaks: run it where you want numbers.
"""
import argparse
import functools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import optax

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vqax.models.gan import Discriminator, Generator
from vqax.models.vit import abstract_variables, vit
from vqax.models.vit_unfreeze import Partition
from vqax.train.gan_step import create_gan_state, gan_train_step

VARIANTS = {"plain": dict(dtype=jnp.float32, remat_policy="none"),
            "memory_saver": dict(dtype=jnp.bfloat16, remat_policy="full")}
STAGES = {"head": ["head"], "last 4 layers": ["head", "final_norm", 8, 9, 10, 11], "all": ["all"]}


def peak_bytes(compiled) -> dict:
  m = compiled.memory_analysis()
  peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  return {"peak": peak, "argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
          "temp": m.temp_size_in_bytes, "alias": m.alias_size_in_bytes}


def vit_step_memory(batch: int, variant: str, units) -> dict:
  model = vit("B/16", num_classes=2, **VARIANTS[variant])
  params = abstract_variables(model)["params"]
  partition = Partition.for_units(model, units)
  trainable, frozen = jax.eval_shape(partition.split, params)
  tx = optax.adamw(1e-4)
  opt_state = jax.eval_shape(tx.init, trainable)
  x = jax.ShapeDtypeStruct((batch, 224, 224, 3), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)

  def step(trainable, opt_state, frozen, x, y):
    def loss(t):
      logits, _ = partition.apply(model, t, frozen, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(trainable, opt_state, frozen, x, y).compile()
  trainable_count = sum(leaf.size for leaf in jax.tree.leaves(trainable))
  return {**peak_bytes(compiled), "trainable_params": int(trainable_count)}


def gan_step_memory(batch: int, variant: str) -> dict:
  gen = Generator(n_mels=128, frames=1292, num_classes=2, **VARIANTS[variant])
  disc = Discriminator(num_classes=2, **VARIANTS[variant])
  g_tx, d_tx = optax.adam(2e-4, b1=0.0, b2=0.9), optax.adam(2e-4, b1=0.0, b2=0.9)
  state = jax.eval_shape(functools.partial(create_gan_state, gen, disc, g_tx, d_tx), jax.random.key(0))
  batch_shapes = {"spectrogram": jax.ShapeDtypeStruct((1, batch, 128, 1292), jnp.float32),
                  "label": jax.ShapeDtypeStruct((1, batch), jnp.int32)}
  step = functools.partial(gan_train_step, generator=gen, discriminator=disc, g_tx=g_tx, d_tx=d_tx)
  compiled = jax.jit(step, donate_argnums=0).lower(state, batch_shapes, jax.random.key(0)).compile()
  return peak_bytes(compiled)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", default=None)
  parser.add_argument("--vit-batch", type=int, default=12)
  parser.add_argument("--gan-batch", type=int, default=24)
  args = parser.parse_args()
  results = {"jax": jax.__version__, "platform": jax.devices()[0].platform, "vit": {}, "gan": {}}
  gib = lambda n: f"{n / 2**30:.2f}"
  print(f"| ViT-B/16 step, batch {args.vit_batch} | trainable params | plain GiB | memory_saver GiB |")
  print("|---|---|---|---|")
  for stage, units in STAGES.items():
    row = {v: vit_step_memory(args.vit_batch, v, units) for v in VARIANTS}
    results["vit"][stage] = row
    print(f"| {stage} | {row['plain']['trainable_params']:,} | {gib(row['plain']['peak'])} | "
          f"{gib(row['memory_saver']['peak'])} |", flush=True)
  row = {v: gan_step_memory(args.gan_batch, v) for v in VARIANTS}
  results["gan"] = row
  print(f"\n| GAN step 128 x 1292, batch {args.gan_batch} | plain GiB | memory_saver GiB |\n|---|---|---|")
  print(f"| G + D + both Adam states | {gib(row['plain']['peak'])} | {gib(row['memory_saver']['peak'])} |")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
  main()
