"""Data parallelism over devices and processes gives the one-device result (CPU only).

XLA fixes the device count when JAX starts, so multi-device runs happen in fresh interpreters:
`tests/dist_driver.py` under 8 forced host devices, and two `vqax train` processes of 2 devices each
started by `tools/launch_local.py` (gloo collectives). They share this session's compilation cache, so
a second run of the file compiles almost nothing. The one-device references run in this process.
"""
import io
import json
import os
import pathlib
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest

import dist_driver
from conftest import REPO, smoke_config
from vqax import run
from vqax.data import pipeline
from vqax.errors import ConfigError
from vqax.train import checkpointing, distributed

from tools import launch_local

ATOL = 1e-5  # the bound on parameters (and BatchNorm statistics); observed: <= 1e-6
OPT_RTOL = 1e-4  # optimizer moments are sums of gradients of any size: compared relatively
EIGHT = ["vqvae:replicated", "vqvae:opt_state", "vqvae:params", "redimnet_tiny:replicated"]


def _subprocess_env(**extra) -> dict:
  """This session's compilation cache (conftest) for child interpreters, CPU only."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def _run_on_devices(n: int, runs: list[str], initial: dict | None, workdir: pathlib.Path,
                    timeout: int = 900) -> dict:
  start = []
  if initial:
    np.savez(workdir / "initial.npz", **initial)
    start = ["--initial", str(workdir / "initial.npz")]
  out = workdir / f"runs_{n}.npz"
  proc = subprocess.run(
      [sys.executable, str(REPO / "tests" / "dist_driver.py"), "--out", str(out), *start, *runs],
      env=_subprocess_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={n}"),
      capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with np.load(out) as archive:
    results = dict(archive)
  assert int(results.pop("device_count")) == n
  return results


def _state(result: dict, prefix: str = "", parts=(".params", ".model_state")) -> dict:
  """Leaves of a run's flat result under `parts`, keys without `prefix`."""
  return {k[len(prefix):]: v for k, v in result.items() if k.startswith(tuple(prefix + p for p in parts))}


def _worst_difference(actual: dict, expected: dict) -> float:
  assert expected and actual.keys() == expected.keys()
  return max(float(np.max(np.abs(actual[k] - expected[k]), initial=0.0)) for k in expected)


def _assert_same_run(actual: dict, expected: dict, prefix: str = ""):
  """Parameters and model state within ATOL; optimizer state within OPT_RTOL."""
  assert _worst_difference(_state(actual, prefix), _state(expected)) <= ATOL
  opt_actual, opt_expected = _state(actual, prefix, (".opt_state",)), _state(expected, "", (".opt_state",))
  assert opt_expected and opt_actual.keys() == opt_expected.keys()
  for key, value in opt_expected.items():
    np.testing.assert_allclose(opt_actual[key], value, rtol=OPT_RTOL, atol=ATOL, err_msg=key)


@pytest.fixture(scope="module")
def one_and_eight(tmp_path_factory):
  """One-device references here; the same runs on 8 forced devices in a subprocess, from the same start."""
  one_device = jax.devices()[:1]
  reference = {"vqvae": dist_driver.run("vqvae:replicated", devices=one_device),
               "redimnet_tiny": dist_driver.run("redimnet_tiny:replicated", devices=one_device)}
  initial = {f"{model}/{key}": value for model, result in reference.items()
             for key, value in result.items() if key.startswith("initial/")}
  eight = _run_on_devices(8, EIGHT, initial, tmp_path_factory.mktemp("eight"))
  return reference, eight


@pytest.mark.parametrize("spec", EIGHT)
def test_eight_devices_match_one_device(one_and_eight, spec):
  reference, eight = one_and_eight
  model, layout = spec.split(":")
  start, end = (_state(reference[model], prefix, (".params",)) for prefix in ("initial/", ""))
  assert _worst_difference(start, end) > 100 * ATOL, "parameters hardly moved: the comparison would prove nothing"
  _assert_same_run(eight, reference[model], f"{spec}/")
  np.testing.assert_allclose(eight[f"{spec}/loss"], reference[model]["loss"], atol=ATOL)
  if layout != "replicated":  # the layout must really split something, or this proves nothing
    assert int(eight[f"{spec}/sharded_leaves"]) > 0


def test_sharded_state_matches_replicated_on_eight_devices(one_and_eight):
  _, eight = one_and_eight
  replicated = {k[len("vqvae:replicated/"):]: v for k, v in eight.items() if k.startswith("vqvae:replicated/")}
  for layout in ("opt_state", "params"):
    _assert_same_run(eight, replicated, f"vqvae:{layout}/")


def test_batch_norm_statistics_cover_the_global_batch(one_and_eight):
  # Each device holds one example: per-device statistics would give zero variance and other means.
  reference, eight = one_and_eight
  stats = [k for k in reference["redimnet_tiny"] if k.startswith(".model_state['batch_stats']")]
  assert stats
  moved = any(not np.allclose(reference["redimnet_tiny"][k], reference["redimnet_tiny"]["initial/" + k])
              for k in stats)
  assert moved, "training did not update batch_stats"
  for key in stats:
    np.testing.assert_allclose(eight["redimnet_tiny:replicated/" + key], reference["redimnet_tiny"][key],
                               atol=ATOL, err_msg=key)


def _params(workdir: pathlib.Path, step: int):
  state, _ = checkpointing.Checkpointer(workdir / "checkpoints").restore(None, step=step)
  return state["params"]


def _max_difference(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def test_two_processes_match_one_and_their_checkpoint_resumes_in_one(noise_tree, tmp_path, monkeypatch):
  for key, value in _subprocess_env().items():
    monkeypatch.setenv(key, value)
  config = smoke_config(noise_tree)  # batch_size 4 on one device
  reference = run.train(config, tmp_path / "one", max_steps=5, progress=False)

  log = io.StringIO()
  status = launch_local.launch(
      [sys.executable, "-m", "vqax.cli", "train", "--config", f"{REPO / 'configs' / 'vqvae_dcase.py'}:smoke",
       "--workdir", str(tmp_path / "two"), f"--config.data_root={noise_tree}", "--config.batch_size=1",
       "--max_steps", "3", "--no_progress"],
      num_processes=2, devices_per_process=2, timeout=900, out=log)
  assert status == 0, log.getvalue()[-4000:]
  assert "4 device(s) x 2 process(es); global batch = 1 per device x 4 devices x 1 accumulation = 4" in log.getvalue()
  assert sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "3" / "data").glob("process_*")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  at_3 = _max_difference(_params(tmp_path / "two", 3), _params(tmp_path / "one", 3))
  assert at_3 <= ATOL

  # One process, one device, resumes the two-process checkpoint: same state, same next batches.
  resumed = run.train(config, tmp_path / "two", max_steps=5, progress=False)
  assert [h["step"] for h in resumed["history"]] == [4, 5]
  losses = {h["step"]: h["loss"] for h in reference["history"]}
  for h in resumed["history"]:
    assert abs(h["loss"] - losses[h["step"]]) <= ATOL, (h["step"], h["loss"], losses[h["step"]])
  at_5 = _max_difference(_params(tmp_path / "two", 5), _params(tmp_path / "one", 5))
  print(json.dumps({"two_process_max_difference": {"step_3": at_3, "step_5_resumed_in_one": at_5}}))
  assert at_5 <= ATOL


# --- pieces that need no devices -------------------------------------------------------------------------

class _Tag(grain.transforms.RandomMap):
  """record -> (record, its random draw): what a batch holds and which randomness it got."""

  def random_map(self, record, rng):
    return {"record": np.int64(record), "draw": np.float64(rng.random())}


def _iterators(process_count: int, global_batch: int = 4, records: int = 10):
  iterators = []
  for p in range(process_count):
    sampler = pipeline.ProcessBlockSampler(
        grain.samplers.IndexSampler(records, shuffle=True, seed=3), per_process_batch=global_batch // process_count,
        process_count=process_count)
    loader = grain.DataLoader(
        data_source=pipeline.ListSource(range(records)), sampler=sampler,
        operations=[_Tag(), grain.transforms.Batch(global_batch // process_count, batch_fn=pipeline.stack_batch)],
        shard_options=grain.sharding.ShardOptions(p, process_count, drop_remainder=True),
        read_options=grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
    iterators.append(iter(loader))
  return iterators


def _global_batches(iterators, n: int) -> list[list]:
  batches = []
  for _ in range(n):
    parts = [next(it) for it in iterators]  # process order = row order of the global array
    batches.append([(int(r), float(d)) for part in parts for r, d in zip(part["record"], part["draw"])])
  return batches


def test_global_batches_do_not_depend_on_the_process_count():
  one = _global_batches(_iterators(1), 6)  # 6 batches of 4 from 10 records: crosses epochs
  assert _global_batches(_iterators(2), 6) == one
  assert _global_batches(_iterators(4), 6) == one
  first_epoch = [r for batch in one[:2] for r, _ in batch] + [r for r, _ in one[2][:2]]  # positions 0-9
  assert sorted(first_epoch) == list(range(10))  # every record once per epoch


def test_iterator_of_two_processes_continues_in_one(tmp_path):
  two = _iterators(2)
  _global_batches(two, 3)
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  for p, it in enumerate(two):
    (data_dir / f"process_{p}-of-2.json").write_text(it.get_state().decode())
  resumed = _iterators(1)[0]
  checkpointing.continue_after_saved_position(resumed, data_dir)
  assert _global_batches([resumed], 2) == _global_batches(_iterators(1), 5)[3:]


def test_distributed_settings_come_from_config_then_environment():
  config = smoke_config("unused")
  assert distributed.distributed_settings(config, environ={}) is None
  env = {"VQAX_COORDINATOR_ADDRESS": "host:1", "VQAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
  assert distributed.distributed_settings(config, environ=env) == distributed.DistributedSettings("host:1", 4, 2)
  config.coordinator_address, config.num_processes, config.process_id = "head:9", 2, 1
  assert distributed.distributed_settings(config, environ=env) == distributed.DistributedSettings("head:9", 2, 1)
  with pytest.raises(ConfigError, match="process_id=2"):
    distributed.distributed_settings(smoke_config("unused", num_processes=2, process_id=2), environ={})
  with pytest.raises(ConfigError, match="expected an integer"):
    distributed.distributed_settings(None, environ={"VQAX_NUM_PROCESSES": "two"})


def test_launcher_gives_each_process_its_rank_and_devices():
  env = launch_local.process_env(1, 2, 1234, devices=2, platform="cpu", base={"XLA_FLAGS": "--xla_foo=1"})
  assert (env["VQAX_COORDINATOR_ADDRESS"], env["VQAX_NUM_PROCESSES"], env["VQAX_PROCESS_ID"]) == (
      "localhost:1234", "2", "1")
  assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=2"
  assert env["JAX_PLATFORMS"] == "cpu"


# --- opt-in: the real ReDimNet-b0 (compiling its gradient takes minutes of CPU) ---------------------------

@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("VQAX_SLOW_TESTS"), reason="ReDimNet-b0 compiles for minutes on CPU; "
                    "VQAX_SLOW_TESTS=1 runs it (redimnet_tiny covers the same code in the default run)")
def test_redimnet_b0_on_eight_devices_matches_one_device(tmp_path):
  # float64 (x64, so both sides run in subprocesses): in float32, b0 at initialisation is too
  # ill-conditioned to compare at 1e-5 -- see tests/dist_driver.py.
  run = "redimnet_f64:replicated"
  one = _run_on_devices(1, [run], None, tmp_path, timeout=3000)
  reference = {k[len(run) + 1:]: v for k, v in one.items() if k.startswith(run + "/")}
  eight = _run_on_devices(8, [run], {f"redimnet_f64/{k}": v for k, v in reference.items()
                                     if k.startswith("initial/")}, tmp_path, timeout=3000)
  print(json.dumps({"redimnet_b0_f64_max_difference": _worst_difference(_state(eight, run + "/"),
                                                                        _state(reference))}))
  _assert_same_run(eight, reference, run + "/")
