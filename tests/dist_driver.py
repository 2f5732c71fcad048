"""Train a few steps on N devices from a fixed batch stream and write the results to .npz.

XLA fixes the CPU device count when its backend starts, so tests run this in a fresh interpreter:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/dist_driver.py --out r.npz vqvae:replicated
Tests also import `run` for the one-device reference in their own process.

Every run sees the same global batches (a seeded numpy stream) and may start from a given initial state
(--initial: the reference's, which saves compiling the init again), so runs on different device counts
may differ only by float reduction order. Runs are `model:layout`: model vqvae, redimnet (b0),
redimnet_tiny (b0's block families in one narrow stage: b0 takes minutes to compile on a small CPU) or
redimnet_f64 (b0 in float64 from log-mel input, see below); layout replicated, opt_state (ZeRO-1) or
params (ZeRO-3).

The ReDimNet runs use SGD with momentum, not the config's AdamW: a conv bias followed by BatchNorm has a
gradient that is zero but for float noise, and Adam scales that noise (1e-9) up to learning-rate-sized
steps of random sign, which no two reduction orders share. SGD keeps noise at its size, so the comparison
tests the step rather than Adam's amplifier. b0 at initialisation is ill-conditioned in float32 all the
same: on one device, merely permuting the examples of a batch moves its early-layer gradients by ~3e-3
(of ~1). redimnet_f64 therefore runs b0 in float64 (x64 on; the float32 front end, a per-example op, is
skipped by feeding log-mel features), where rounding is far below the 1e-5 bound and any difference left
would be the sharding's.
"""
import argparse
import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO = pathlib.Path(__file__).resolve().parents[1]

from conftest import smoke_config
from vqax.train.task import DataInfo, Phase, Program, Task
from vqax.train import sharding, trainer

STEPS = 3
GLOBAL_BATCH = 8
STEPS_PER_EPOCH = 10  # 3 steps stay inside the first phase: one compile per run
WAVE_SAMPLES = 2400  # 0.15 s at 16 kHz: 11 frames at hop 240
NUM_CLASSES = 4
# b0 from random input takes large first steps: a smaller rate keeps 3 steps out of the chaotic regime,
# where any two runs drift apart whatever their precision.
SGD_LEARNING_RATE = {"redimnet_tiny": 1e-2, "redimnet": 1e-3, "redimnet_f64": 1e-3}
# b0 (basic_resnet 2-D blocks, conv+att 1-D blocks, ASTP, BatchNorms) cut to one narrow stage.
TINY_REDIMNET = dict(F=12, C=4, stages_setup=[[1, 1, 2, [[3, 3]], 4]])


class ReDimNetClassifierTask(Task):
  """ReDimNet-b0 with a softmax head: the smallest task that trains its BatchNorm statistics."""
  name = "redimnet_cls"

  def __init__(self, config, dtype=jnp.float32, **overrides):
    super().__init__(config)
    self.dtype, self.overrides = dtype, overrides

  def build(self, info, platform):
    return ReDimNetClassifier(self.config, self.dtype, self.overrides)


class ReDimNetClassifier(Program):
  def __init__(self, config, dtype, overrides):
    from vqax.models.redimnet import redimnet
    self.config = config
    self.model = redimnet("b0", num_classes=NUM_CLASSES, dtype=dtype, param_dtype=dtype, **overrides)
    self.from_features = dtype != jnp.float32  # skip the float32 front end

  def input_shape(self, batch: int) -> tuple[int, ...]:
    return (batch, self.model.F, WAVE_SAMPLES // self.model.hop_length + 1) if self.from_features else (
        batch, WAVE_SAMPLES)

  def batch_spec(self, global_batch: int):
    return {"wave": jax.ShapeDtypeStruct(self.input_shape(global_batch), self.model.dtype),
            "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32)}

  def _apply(self, variables, x, **kwargs):
    if self.from_features:
      return self.model.apply(variables, x, method=lambda m, x, train: m.embed_features(x, train), **kwargs)
    return self.model.apply(variables, x, **kwargs)

  def init_variables(self, rng, batch):
    variables = self.model.init(rng, jnp.zeros(self.input_shape(2), self.model.dtype),
                                method=(lambda m, x: m.embed_features(x)) if self.from_features else None)
    # flax starts BatchNorm statistics in float32 whatever the dtype; the step returns them in dtype.
    return jax.tree.map(lambda x: x.astype(self.model.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        dict(variables))

  def phases(self, total_steps):
    return [Phase("all", 0, total_steps)]

  def loss_fn(self, params, model_state, batch, rng, step, phase):
    (_, aux), updated = self._apply({"params": params, **model_state}, batch["wave"], train=True,
                                    mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(aux["logits"], batch["label"]).mean()
    return loss, (dict(updated), {})


def setup(model: str, layout: str):
  """(config, task) for a run; layout picks the state sharding."""
  config = smoke_config("unused", phase1_epochs=0, batch_size=1, shard_params=layout == "params",
                        shard_opt_state=layout == "opt_state")
  if model == "vqvae":
    from vqax.tasks.vqvae.task import VQVAETask
    return config, VQVAETask(config)
  if model == "redimnet":
    return config, ReDimNetClassifierTask(config)
  if model == "redimnet_tiny":
    return config, ReDimNetClassifierTask(config, **TINY_REDIMNET)
  if model == "redimnet_f64":
    return config, ReDimNetClassifierTask(config, dtype=jnp.float64)
  raise ValueError(f"unknown model {model!r}")


def batches(program, n: int = STEPS, global_batch: int = GLOBAL_BATCH) -> list[dict]:
  """n host batches of random values shaped by the task's batch_spec (labels in [0, NUM_CLASSES))."""
  rng = np.random.default_rng(0)

  def draw(spec):
    if jnp.issubdtype(spec.dtype, jnp.integer):
      return rng.integers(0, NUM_CLASSES, spec.shape).astype(spec.dtype)
    return (rng.standard_normal(spec.shape) * 0.1).astype(spec.dtype)
  return [jax.tree.map(draw, program.batch_spec(global_batch)) for _ in range(n)]


def run(spec: str, devices=None, n_steps: int = STEPS, global_batch: int = GLOBAL_BATCH,
        initial: dict | None = None) -> dict:
  """Train `spec` ("model:layout") for n_steps; returns flat host arrays ("initial/..." included) and timings.

  initial: a flat state as returned under "initial/" by an earlier run of the same model.
  """
  model, layout = spec.split(":")
  devices = devices if devices is not None else jax.devices()
  config, task = setup(model, layout)
  config.batch_size = global_batch // len(devices)
  t = trainer.make_trainer(config, task, DataInfo(STEPS_PER_EPOCH), mesh=sharding.make_mesh(devices))
  if model.startswith("redimnet"):
    t = with_optimizer(t, optax.sgd(SGD_LEARNING_RATE[model], momentum=0.9), global_batch)
  if initial is None:
    state = t.init_state()
  else:
    abstract = jax.eval_shape(t.init_state)
    state = jax.device_put(unflatten_like(abstract, initial), t.state_shardings)
  initial = flatten(state)
  step_fn = t.compile_train_step(t.phases[0])
  times = []
  for batch in batches(t.program, n_steps, global_batch):
    start = time.perf_counter()
    state, metrics = step_fn(state, sharding.global_batch(t.mesh, batch))
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  assert step_fn._cache_size() == 1, "the step recompiled"
  out = flatten(state)
  out.update({f"initial/{key}": value for key, value in initial.items()})
  out["loss"] = np.asarray(metrics["loss"])
  out["step_seconds"] = np.asarray(times)
  out["sharded_leaves"] = np.asarray(sum(not s.is_fully_replicated for s in jax.tree.leaves(t.state_shardings)))
  return out


def with_optimizer(t: trainer.Trainer, tx, global_batch: int) -> trainer.Trainer:
  """The same Trainer with another optimizer: its state, and so the state's shardings, change too."""
  abstract = jax.eval_shape(lambda rng: t.program.init_state(rng, t.program.batch_spec(global_batch), tx),
                            jax.random.PRNGKey(0))
  shardings = sharding.state_shardings(t.mesh, abstract, bool(t.config.shard_params), bool(t.config.shard_opt_state))
  return dataclasses.replace(t, tx=tx, state_shardings=shardings)


def flatten(tree) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return {jax.tree_util.keystr(path): np.array(leaf, copy=True) for path, leaf in leaves}  # no views of donated buffers


def unflatten_like(abstract, flat: dict):
  paths, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  return jax.tree_util.tree_unflatten(treedef, [flat[jax.tree_util.keystr(path)] for path, _ in paths])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--initial", help=".npz of <model>/initial/<leaf> arrays to start from")
  parser.add_argument("--steps", type=int, default=STEPS)
  parser.add_argument("runs", nargs="+", help="model:layout, e.g. vqvae:replicated redimnet:replicated")
  args = parser.parse_args(argv)
  if any(spec.startswith("redimnet_f64") for spec in args.runs):
    jax.config.update("jax_enable_x64", True)
  initial = dict(np.load(args.initial)) if args.initial else {}
  results = {}
  for spec in args.runs:
    prefix = spec.split(":")[0] + "/initial/"
    start = {k[len(prefix):]: v for k, v in initial.items() if k.startswith(prefix)} or None
    for key, value in run(spec, n_steps=args.steps, initial=start).items():
      results[f"{spec}/{key}"] = value
  np.savez(args.out, device_count=jax.device_count(), **results)


if __name__ == "__main__":
  main()
