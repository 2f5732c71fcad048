"""`vqax plan --target`: planning a GPU's memory on a machine without one.

Target parsing, the missing-extra error and the compile options run everywhere. The compiles for a GPU need
the [plan-gpu] extra (JAX's CUDA plugin and a ptxas); without it they skip. `make test` runs without it; CI
then installs the extra beside the venv and runs this file again with VQAX_REQUIRE_PLAN_GPU=1, where a
missing extra fails instead (`make test-gpu-plan`). tools/device_check.sh compares with a real GPU.
"""
import os
import json
import pathlib
import re
import sys
import tomllib

import jax
import pytest

from conftest import REPO, smoke_config
from vqax import cli, config_loading
from vqax.errors import ConfigError
from vqax.planning import planner, targets

SMOKE = str(REPO / "configs" / "vqvae_dcase.py") + ":smoke"
H100_MEMORY = 84942979072  # device_memory_size in gpu_targets/h100_sxm.txtpb

needs_plan_gpu = pytest.mark.skipif(
    targets.missing_plan_gpu_package() is not None and not os.environ.get("VQAX_REQUIRE_PLAN_GPU"),
    reason=f"needs the plan-gpu extra ({targets.PLAN_GPU_EXTRA}): {targets.missing_plan_gpu_package()} is not "
           f"installed")


# --- targets, without compiling ---------------------------------------------------------------------------

def test_target_names_give_the_device_count_topology_and_memory():
  h100x8 = targets.parse("h100x8")
  assert (h100x8.platform, h100x8.n_devices, h100x8.topology) == ("gpu", 8, "1x1x8")
  assert h100x8.memory_bytes == H100_MEMORY and h100x8.device_kind == "NVIDIA H100 80GB HBM3"
  two_hosts = targets.parse("h100:1x2x4")
  assert (two_hosts.n_devices, two_hosts.topology) == (8, "1x2x4")
  assert targets.parse("h100x8:1x2x4").topology == "1x2x4"
  assert (targets.parse("h200").memory_bytes, targets.parse("h200").n_devices) == (151397597184, 1)
  assert targets.parse("a100-80g").device_kind == "NVIDIA A100-SXM4-80GB"
  cpu = targets.parse("cpu")
  assert cpu.platform == "cpu" and cpu.n_devices >= 1 and cpu.usable_bytes == cpu.memory_bytes
  for bad, says in (("h800", "expected one of cpu, h100"), ("h100x0", "at least 1"),
                    ("h100x4:1x2x4", "has 8 devices"), ("cpu:1x1x2", "topology is for GPU targets"),
                    ("cpux4096", "CPU device(s)"), ("missing.txtpb", "missing.txtpb not found")):
    with pytest.raises(ConfigError, match=re.escape(says)):
      targets.parse(bad)


def test_a_description_file_is_a_target_and_the_allocator_share_is_read_from_the_environment(tmp_path,
                                                                                            monkeypatch):
  text = (targets.TARGET_DIR / "a100_sxm_80.txtpb").read_text()
  mine = tmp_path / "my_gpu.txtpb"
  mine.write_text(text.replace("device_memory_size: 85100068864", "device_memory_size: 1000"))
  target = targets.parse(f"{mine}:1x1x2")
  assert (target.memory_bytes, target.n_devices, target.source) == (1000, 2, str(mine))
  assert target.usable_bytes == 750  # JAX's default 75%
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
  assert target.usable_bytes == 500
  monkeypatch.setenv("XLA_CLIENT_MEM_FRACTION", "0.9")  # the newer name wins
  assert target.usable_bytes == 900
  broken = tmp_path / "broken.txtpb"
  broken.write_text('platform_name: "CUDA"\n')
  with pytest.raises(ConfigError, match="broken.txtpb is not a GPU description"):
    targets.parse(str(broken))


def test_the_target_descriptions_install_with_the_package():
  pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
  patterns = pyproject["tool"]["setuptools"]["package-data"]["vqax.planning"]
  shipped = sorted(p.name for p in targets.TARGET_DIR.iterdir())
  matched = sorted(name for name in shipped if any(pathlib.PurePath("gpu_targets", name).match(p) for p in patterns))
  assert matched == shipped and set(targets.GPU_TARGETS.values()) <= set(shipped)
  extras = pyproject["project"]["optional-dependencies"]
  assert any(r.startswith("jax-cuda12-plugin==") for r in extras["plan-gpu"])
  jax_pin = next(r for r in pyproject["project"]["dependencies"] if r.startswith("jax=="))
  assert all(jax_pin.split("==")[1] in r for r in extras["plan-gpu"] if r.startswith("jax-cuda12"))


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, capsys):
  # Hidden as Python hides a module that is not there: import fails and find_spec finds nothing.
  for module, _ in targets.PLAN_GPU_MODULES:
    monkeypatch.setitem(sys.modules, module, None)
  assert targets.missing_plan_gpu_package() == "jax-cuda12-pjrt"
  assert cli.main(["plan", "--config", SMOKE, "--target", "h100x8", "--variants", "plain"]) == 2
  captured = capsys.readouterr()
  err = captured.err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("vqax: error: --target h100x8:")
  assert "pip install 'vqax[plan-gpu]'" in err[0] and "jax-cuda12-pjrt is not installed" in err[0]
  assert "compiled peak" not in captured.out  # it stopped before compiling anything


class CompileOnlyPyClient:  # the class name jaxlib gives a target's compile-only client
  pass


class _Device:
  def __init__(self, platform, client):
    self.platform, self.client = platform, client


def test_compile_options_follow_the_device():
  assert planner.compiler_options(jax.devices("cpu")[0]) == {"xla_backend_optimization_level": 0}
  assert planner.compiler_options(_Device("gpu", CompileOnlyPyClient())) == {
      "xla_gpu_enable_cub_radix_sort": False, "xla_gpu_enable_triton_gemm": False}
  assert planner.compiler_options(_Device("gpu", object())) == {}  # a GPU at hand sorts with CUB as training does


# --- compiling for a GPU ----------------------------------------------------------------------------------

def _lowered_text(config, devices=None) -> str:
  _, lowered, _, _ = planner.lower_train_step(config, devices=devices)
  return lowered.as_text()


@needs_plan_gpu
@pytest.mark.parametrize("config_file", ["vqvae_dcase.py", "redimnet_mrl.py"])
def test_a_gpu_target_traces_xlas_own_layers(config_file):
  # The layers' form follows the compile target: the GPU program has XLA's convolutions, as a config forced
  # to layer_forms="xla" has on the CPU, not the CPU reformulations that "auto" picks for the CPU.
  config = config_loading.load_config(str(REPO / "configs" / config_file) + ":smoke")
  count = lambda text: len(re.findall(r"stablehlo\.convolution", text))
  gpu = count(_lowered_text(config, targets.parse("h100").devices()))
  xla_on_cpu = count(_lowered_text(planner.with_flags(config, ["--config.model.layer_forms=xla"])))
  auto_on_cpu = count(_lowered_text(config))
  assert gpu == xla_on_cpu and gpu != auto_on_cpu, (gpu, xla_on_cpu, auto_on_cpu)


@needs_plan_gpu
def test_a_two_host_topology_splits_the_batch_over_every_device():
  config = smoke_config("unused")
  trainer, lowered, _, batch = planner.lower_train_step(config, devices=targets.parse("h100:1x2x4").devices())
  assert trainer.mesh.size == 8 and trainer.batch.local_devices == 4
  assert {d.process_index for d in trainer.mesh.devices.flat} == {0, 1}
  assert planner.device_bytes(batch) * 8 == sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(batch))


@needs_plan_gpu
def test_bfloat16_halves_the_vqvae_activations_on_an_h100():
  # A GPU stores bfloat16 convolutions' outputs in half the bytes (XLA:CPU keeps them in float32: there bf16
  # leaves 78% of the temporaries at this size, docs/memory_table.md).
  config = config_loading.load_config(str(REPO / "configs" / "vqvae_dcase.py"))  # 16 clips x 16 patches
  h100 = targets.parse("h100").devices()
  plain = planner.plan(config, "plain", devices=h100)
  bf16 = planner.plan(planner.with_flags(config, ["--use_amp"]), "bf16", devices=h100)
  assert plain.device == "gpu (NVIDIA H100 80GB HBM3)" and plain.n_devices == 1
  assert (bf16.params, bf16.optimizer_state) == (plain.params, plain.optimizer_state)  # float32 master weights
  assert 0.4 <= bf16.temp / plain.temp <= 0.6, bf16.temp / plain.temp


@needs_plan_gpu
def test_plan_h100x8_memory_saver_prints_a_per_device_plan(tmp_path, capsys):
  out = tmp_path / "plan.json"
  assert cli.main(["plan", "--target", "h100x8", "--config", str(REPO / "configs" / "vqvae_dcase.py"),
                   "--memory_saver", "--variants", "", "--json", str(out)]) == 0
  printed = capsys.readouterr().out
  result = json.loads(out.read_text())
  plan = result["plans"]["config"]
  assert result["n_devices"] == 8 and "H100" in result["device"]
  assert (plan["compute_dtype"], plan["remat_policy"]) == ("bfloat16", "full")
  assert plan["batch"] == 16 * 16 * 64 * 64 * 4  # one device's share: 16 clips x 16 patches, not 8 x that
  assert result["target"]["memory_bytes"] == H100_MEMORY
  assert "of 79.11 GiB" in printed and "compiled peak" in printed and "cuDNN" in printed
  assert "8 x gpu (NVIDIA H100 80GB HBM3)" in printed


@needs_plan_gpu
def test_fit_without_a_budget_fits_the_targets_memory(tmp_path, capsys):
  # A GPU with 1 MiB: the budget is the allocator's 75% of it, which not even one clip fits (two compiles:
  # the config's batch and batch 1, which proves it).
  text = (targets.TARGET_DIR / "h100_sxm.txtpb").read_text()
  tiny = tmp_path / "tiny_gpu.txtpb"
  tiny.write_text(text.replace(f"device_memory_size: {H100_MEMORY}", f"device_memory_size: {2**20}"))
  out = tmp_path / "fit.json"
  assert cli.main(["plan", "--target", str(tiny), "--config", SMOKE, "--variants", "plain", "--fit", "batch_size",
                   "--json", str(out)]) == 0
  result = json.loads(out.read_text())
  fit = result["fits"]["plain"]
  assert fit["size"] is None and fit["next_peak"] > 0.75 * 2**20 and fit["compiles"] == 1
  assert result["target"]["usable_bytes"] == 0.75 * 2**20
  assert "whose compiled peak fits 768.00 KiB" in capsys.readouterr().out
