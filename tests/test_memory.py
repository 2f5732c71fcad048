"""Memory options and the planner: remat exactness, accumulation = big batch, bfloat16, compiled peaks,
budget search, out-of-memory handling and memory in the logs.

XLA:CPU compiles dominate these tests: the model-level checks use the smoke size and -O0 code generation
(same float32 results, half the compile), and the planner compiles (shapes only) the smoke config except for
the one reference-size ordering check.
"""
import functools
import json
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import REPO, smoke_config
from vqax import run
from vqax import cli, config_loading
from vqax.planning import oom, planner
from vqax.models.precision import memory_settings
from vqax import tasks
from vqax.train.task import DataInfo, Phase, Program
from vqax.tasks.vqvae.task import VQVAETask
from vqax.train import monitoring, trainer
from vqax.train.optimizer import make_optimizer
from vqax.train.state import TrainState
from vqax.train.step import train_step

jit_o0 = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
SMOKE = str(REPO / "configs" / "vqvae_dcase.py") + ":smoke"
FULL = Phase("full", 0, 10**9)


def _patches(config, seed=0):
  shape = (int(config.batch_size), int(config.n_patches), 64, 64, 1)
  return {"patches": jax.random.normal(jax.random.key(seed), shape, jnp.float32)}


def _init(config, batch):
  # Jitted: an eager init dispatches (and compiles) every initializer op by op, slower than one compile.
  return jit_o0(_program(config).init_variables)(jax.random.key(0), batch)


def _program(config):
  return VQVAETask(config).build(DataInfo(10), "cpu")


def _loss_and_grads(config, params, batch):
  program = _program(config)
  model_state = {k: v for k, v in _init(config, batch).items() if k != "params"}

  def loss(p):
    value, _ = program.loss_fn(p, model_state, batch, jax.random.key(1), jnp.int32(5), FULL)
    return value
  return jit_o0(jax.value_and_grad(loss))(params)


def _relative(a, b):
  return float(optax.tree.norm(jax.tree.map(jnp.subtract, a, b)) / optax.tree.norm(a))


# --- 1. options --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy,groups", [("full", 1), ("dots", 1), ("dots_no_batch", 1), ("full", 4)])
def test_remat_gives_the_same_loss_and_gradients(policy, groups):
  # ReDimNet's remat is checked the same way in test_redimnet_model.py (tiny two-stage b0 look-alike).
  config = smoke_config("unused", batch_size=2, n_patches=3)  # 6 patches: 4 groups need padding
  batch = _patches(config)
  params = _init(config, batch)["params"]
  loss, grads = _loss_and_grads(config, params, batch)
  loss_r, grads_r = _loss_and_grads(smoke_config("unused", batch_size=2, n_patches=3, remat_policy=policy,
                                                 remat_groups=groups), params, batch)
  assert abs(float(loss_r) - float(loss)) <= 1e-6 * abs(float(loss))
  assert _relative(grads, grads_r) <= 1e-6
  # Leaf by leaf a grouped sum adds in another order: float32 rounding, still far below any real change.
  leaf_tolerance = 1e-6 if groups == 1 else 1e-5
  jax.tree.map(lambda g, r: np.testing.assert_allclose(r, g, rtol=0, atol=leaf_tolerance * float(jnp.abs(g).max())),
               grads, grads_r)


def test_bfloat16_compute_keeps_float32_weights_and_a_close_loss():
  config = smoke_config("unused", batch_size=2, n_patches=3)
  batch = _patches(config)
  params = _init(config, batch)["params"]
  loss32, _ = _loss_and_grads(config, params, batch)
  bf16 = tasks.apply_overrides(smoke_config("unused", batch_size=2, n_patches=3), ["--use_amp"])
  loss16, grads16 = _loss_and_grads(bf16, params, batch)
  assert loss16.dtype == jnp.float32
  assert abs(float(loss16) - float(loss32)) <= 2e-2 * abs(float(loss32))
  assert {g.dtype for g in jax.tree.leaves(grads16)} == {jnp.dtype(jnp.float32)}
  # Master weights and optimizer state stay float32 through a bfloat16 train step (shapes only: no compile).
  for flags in (["--use_amp"], ["--memory_saver"]):
    config = tasks.apply_overrides(smoke_config("unused"), flags)
    t = trainer.make_trainer(config, VQVAETask(config), DataInfo(10))
    state, batch_spec = planner.abstract_inputs(t)
    new_state, _ = jax.eval_shape(t.compile_train_step(t.phases[1]), state, batch_spec)
    floats = [x.dtype for x in jax.tree.leaves((new_state.params, new_state.opt_state))
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert set(floats) == {jnp.dtype(jnp.float32)}


class _LinearProgram(Program):
  """y = x @ w + b with a mean squared error: accumulation mechanics without a model's compile cost."""

  def loss_fn(self, params, model_state, batch, rng, step, phase):
    prediction = batch["x"] @ params["w"] + params["b"]
    return jnp.mean((prediction - batch["y"]) ** 2), (model_state, {})


def _optimizer_config(k):
  c = ml_collections.ConfigDict()
  c.learning_rate, c.warmup_steps, c.weight_decay, c.grad_clip_norm = 0.1, 2, 1e-2, 0.5
  c.gradient_accumulation_steps = k
  return c


def test_accumulation_equals_one_update_on_the_concatenated_batch():
  k, b, updates = 3, 4, 3
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(updates, k * b, 5)).astype(np.float32)
  ys = rng.normal(size=(updates, k * b, 2)).astype(np.float32)
  params = {"w": jnp.asarray(rng.normal(size=(5, 2)), jnp.float32), "b": jnp.zeros((2,), jnp.float32)}
  program = _LinearProgram()

  def run(accumulation, micro_batches):
    tx, schedule = make_optimizer(_optimizer_config(accumulation), total_micro_steps=updates * accumulation)
    step = jax.jit(functools.partial(train_step, program=program, tx=tx, phase=FULL))
    state = TrainState(step=jnp.int32(0), params=params, model_state={}, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)), nonfinite_steps=jnp.int32(0))
    history = []
    for u in range(updates):
      for x, y in zip(np.split(xs[u], micro_batches), np.split(ys[u], micro_batches)):
        state, _ = step(state, {"x": x, "y": y})
      history.append(state.params)
    return state, history, schedule

  big, big_history, big_schedule = run(1, 1)
  acc, acc_history, acc_schedule = run(k, k)
  for p_big, p_acc in zip(big_history, acc_history):  # after every update, not just the last
    jax.tree.map(lambda a, c: np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6), p_big, p_acc)
  assert int(big.step) == updates and int(acc.step) == updates * k  # micro-steps taken
  # The optimizer counted updates, not micro-steps, so the schedule stood at the same place.
  assert int(acc.opt_state.gradient_step) == updates
  counters = lambda tree: [int(x) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.integer)]
  assert counters(big.opt_state) == counters(acc.opt_state.inner_opt_state) == [updates, updates]  # Adam, schedule
  for u in range(updates + 1):
    assert float(acc_schedule(u)) == float(big_schedule(u))
  jax.tree.map(lambda a, c: np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-7),
               big.opt_state, acc.opt_state.inner_opt_state)


def test_memory_switches_resolve_from_the_seed_flags():
  resolved = lambda flags: memory_settings(tasks.apply_overrides(smoke_config("unused"), flags))
  assert resolved([]) == resolved(["--use_amp=false"])
  assert resolved([]).remat_groups == 1  # groups only act with remat on
  assert resolved(["--use_amp"]).compute_dtype == "bfloat16"
  assert resolved(["--use_gradient_checkpointing"]).remat_policy == "full"
  saver = resolved(["--memory_saver"])
  assert (saver.compute_dtype, saver.remat_policy, saver.remat_groups) == ("bfloat16", "full", 4)
  # Every variant's flags give that variant, whatever the base config already switched on.
  for base in ([], ["--memory_saver"], ["--use_amp", "--config.remat_policy=dots"]):
    config = tasks.apply_overrides(smoke_config("unused"), base)
    for variant, expected in {"plain": ("float32", False), "bf16": ("bfloat16", False),
                              "remat": ("float32", True), "bf16+remat": ("bfloat16", True)}.items():
      settings = memory_settings(planner.with_flags(config, planner.variant_flags(config, variant)))
      assert (settings.compute_dtype, settings.remat_policy != "none") == expected, (base, variant)
  accumulation = planner.with_flags(config, planner.variant_flags(config, "accumulation"))
  assert (accumulation.batch_size, accumulation.gradient_accumulation_steps) == (1, 4)


# --- 2. planner --------------------------------------------------------------------------------------------

def test_plan_breaks_the_arguments_down_per_device():
  config = smoke_config("unused")
  plans = planner.plan_variants(config, ["plain", "accumulation"])
  plain, accumulation = plans["plain"], plans["accumulation"]
  assert plans["config"].peak == plain.peak  # the same config compiled once, reported twice
  params = jax.eval_shape(_program(config).init_variables, jax.random.key(0), _patches(config))["params"]
  assert plain.params == sum(x.size * 4 for x in jax.tree.leaves(params))
  assert plain.batch == 4 * 2 * 64 * 64 * 4
  assert plain.accumulator == 0 and accumulation.accumulator == plain.params
  assert 2 * plain.params <= plain.optimizer_state <= 2 * plain.params + 1024  # Adam moments + counters
  scalars = plain.argument - (plain.params + plain.model_state + plain.optimizer_state + plain.batch)
  assert 0 <= scalars <= 64  # step, RNG key, non-finite counter
  assert plain.peak == plain.argument + plain.output + plain.temp - plain.alias
  assert plain.alias > 0  # the donated state is updated in place
  assert accumulation.batch == plain.batch // 4 and accumulation.peak < plain.peak


def test_memory_saver_lowers_the_compiled_peak_at_the_reference_size():
  # The real model at the seeds' reference size (16 clips x 16 patches per device), compiled from shapes.
  config = config_loading.load_config(str(REPO / "configs" / "vqvae_dcase.py"))
  start = time.perf_counter()
  plain = planner.plan(config, "plain")
  saver = planner.plan(tasks.apply_overrides(config, ["--memory_saver"]), "memory_saver")
  elapsed = time.perf_counter() - start
  print(f"reference size: plain {planner.format_bytes(plain.peak)}, memory_saver "
        f"{planner.format_bytes(saver.peak)} ({100 * (1 - saver.peak / plain.peak):.0f}% lower), {elapsed:.1f} s")
  assert saver.peak < plain.peak
  assert saver.params == plain.params and saver.optimizer_state == plain.optimizer_state  # float32 master


@pytest.mark.parametrize("peak_of", [
    lambda n: 1000 + 37 * n,  # linear, like a batch's activations
    lambda n: 1000 + 37 * n + (n // 16) * 500,  # steps (layout or padding jumps)
    lambda n: 100 * int(math.sqrt(n)) + n,  # far from linear
])
@pytest.mark.parametrize("budget", [900, 1037, 5000, 123_456, 10**9])
def test_budget_search_is_exact_and_logarithmic(peak_of, budget):
  calls = []
  size = planner.largest_fitting(lambda n: calls.append(n) or peak_of(n), budget, limit=1 << 16)
  brute = max((n for n in range(1, (1 << 16) + 1) if peak_of(n) <= budget), default=None)
  if budget == 10**9:
    brute = min(brute, 1 << 16)
  assert size == brute
  assert len(calls) == len(set(calls)) and len(calls) <= 2 * math.log2(1 << 16) + 2
  if size and size < 1 << 16:
    assert size + 1 in calls  # the answer comes with its proof


def test_plan_command_budget_fits_and_the_next_size_does_not(tmp_path, capsys):
  budget = 24 * 2**20
  out = tmp_path / "plan.json"
  assert cli.main(["plan", "--config", SMOKE, "--variants", "plain", "--budget", "24MiB", "--json", str(out)]) == 0
  printed = capsys.readouterr().out
  result = json.loads(out.read_text())
  fit = result["fits"]["plain"]
  assert fit["peak"] <= budget < fit["next_peak"]
  assert fit["compiles"] <= 6  # the line through two compiles lands on the answer
  command = fit["command"]
  assert command in printed and "compiled peak" in printed and "temporaries (activations)" in printed
  # The printed command runs exactly what was planned: rebuild it from its own flags and compile again.
  flags = command.split("--workdir WORKDIR")[1].split()
  size = int(flags[flags.index("--batch_size") + 1])
  fitted = planner.plan(planner.with_flags(smoke_config("unused"), flags))
  bigger = planner.plan(planner.with_flags(smoke_config("unused"), flags + ["--batch_size", str(size + 1)]))
  assert fitted.peak == fit["peak"] <= budget < bigger.peak


def test_plan_command_rejects_bad_options(capsys):
  assert cli.main(["plan", "--config", SMOKE, "--budget", "lots"]) == 2
  assert cli.main(["plan", "--config", SMOKE, "--variants", "tiny"]) == 2
  err = capsys.readouterr().err
  assert "--budget lots: expected a size like 8GiB" in err and "--variants tiny" in err
  assert planner.parse_bytes("8GiB") == planner.parse_bytes("8g") == 8 * 2**30
  assert planner.parse_bytes("1.5 MiB") == 3 * 2**19


# --- 3. out of memory -----------------------------------------------------------------------------------

def test_out_of_memory_stops_cleanly_keeps_the_checkpoint_and_names_a_change(noise_tree, tmp_path, monkeypatch,
                                                                            capsys):
  config = smoke_config(noise_tree)
  real_compile = trainer.Trainer.compile_train_step

  def compile_train_step(self, phase):
    step = real_compile(self, phase)
    if phase.name == "vq_only":
      return step

    def out_of_memory(state, batch):  # what XLA raises when the allocator gives up
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB.")
    out_of_memory.lower = step.lower  # the planner still compiles the real step
    return out_of_memory

  monkeypatch.setattr(trainer.Trainer, "compile_train_step", compile_train_step)
  monkeypatch.setattr(oom, "device_memory_bytes", lambda: 4 * 2**20)
  with pytest.raises(oom.OutOfMemoryError) as raised:
    run.train(config, tmp_path / "run", progress=False)
  message, report = str(raised.value), raised.value.report
  assert "\n" not in message and "RESOURCE_EXHAUSTED" in message
  assert str(tmp_path / "run" / "checkpoints" / "3") in message  # the vq_only epoch's checkpoint
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
  assert "compiled peak" in report and "smallest change that fits" in report.lower()
  assert report in capsys.readouterr().err
  flags = message.split("fits: ")[1].split(" (compiled peak")[0].split()
  budget = int(0.9 * 4 * 2**20)
  assert planner.plan(planner.with_flags(config, flags)).peak <= budget


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
  assert oom.is_out_of_memory(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory"))
  assert not oom.is_out_of_memory(jax.errors.JaxRuntimeError("INTERNAL: something else"))
  assert not oom.is_out_of_memory(MemoryError("host"))


# --- 4. memory in the logs ---------------------------------------------------------------------------------

class _FakeDevice:
  def __init__(self, stats):
    self._stats = stats

  def memory_stats(self):
    return self._stats


def test_memory_reading_reports_device_memory_where_the_backend_does(monkeypatch, tmp_path):
  assert set(monitoring.memory_reading()) >= {"host_rss_gib"}
  devices = [_FakeDevice({"bytes_in_use": 2**30, "peak_bytes_in_use": 3 * 2**30}),
             _FakeDevice({"bytes_in_use": 2 * 2**30, "peak_bytes_in_use": 2**30}), _FakeDevice(None)]
  monkeypatch.setattr(monitoring.jax, "local_devices", lambda: devices)
  reading = monitoring.memory_reading()
  assert reading["device_in_use_gib"] == 2.0 and reading["device_peak_gib"] == 3.0 and reading["host_rss_gib"] > 0
  written = {}
  monitor = monitoring.Monitor(tmp_path, total_steps=10, start_step=0, sample_unit="patches", progress_bar=False,
                               tensorboard=False)
  monitor._writer = type("Writer", (), {"add_scalar": lambda self, k, v, s: written.update({k: v}),
                                        "close": lambda self: None})()
  monitor.log(5, {"loss": 1.0}, samples_per_step=8)
  monitor.close()
  assert written["device_peak_gib"] == 3.0 and written["device_in_use_gib"] == 2.0 and "host_rss_gib" in written
