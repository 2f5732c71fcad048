"""tools/device_check: what can be checked without a GPU (options, the JSON's shape, one model's stage on the CPU)."""
import json

import pytest

from conftest import REPO
from tools import device_check
from vqax.planning import targets


def test_dry_run_writes_every_stage_with_null_figures(tmp_path):
  out = tmp_path / "check.json"
  assert device_check.main(["--dry_run", "--out", str(out)]) == 0
  result = json.loads(out.read_text())
  assert result["dry_run"] is True and set(result) >= {"device", "models", "tests", "bench_train", "seconds"}
  assert [m["model"] for m in result["models"]] == list(device_check.MODELS)
  for model in result["models"]:
    assert set(model["live"]) == set(device_check.MEMORY_FIELDS)
    assert set(model["deviceless"]) == {"live_description", "shipped"}
  assert result["tests"]["files"] == device_check.TESTS
  skipped = tmp_path / "skipped.json"
  assert device_check.main(["--dry_run", "--out", str(skipped), "--skip", "tests,bench"]) == 0
  assert json.loads(skipped.read_text())["tests"] is None
  with pytest.raises(SystemExit) as raised:
    device_check.main(["--dry_run", "--skip", "everything"])
  assert raised.value.code == 2


def test_the_tests_it_runs_exist_and_the_shipped_targets_match_gpu_kinds():
  assert all((REPO / t).is_file() for t in device_check.TESTS)
  assert device_check.shipped_target_for("NVIDIA H100 80GB HBM3") == "h100"
  assert device_check.shipped_target_for("NVIDIA H200 141GB HBM3e") == "h200"
  assert device_check.shipped_target_for("NVIDIA A100-SXM4-80GB") == "a100-80g"
  assert device_check.shipped_target_for("cpu") is None
  assert set(device_check.SHIPPED_BY_KIND.values()) <= set(targets.GPU_TARGETS)


def test_one_models_stage_runs_on_the_cpu(monkeypatch):
  # The smoke VQ-VAE in place of the reference sizes: live analysis and three real steps (the CPU reports no
  # bytes in use), and with the plan-gpu extra a deviceless plan for a described GPU.
  monkeypatch.setitem(device_check.MODELS, "smoke", ("configs/vqvae_dcase.py:smoke", []))
  described = None if targets.missing_plan_gpu_package() else str(targets.TARGET_DIR / "h100_sxm.txtpb")
  result = device_check.model_stage("smoke", described)
  live = result["live"]
  assert live["peak"] == live["argument"] + live["output"] + live["temp"] - live["alias"] > 0
  if described:
    plan = result["deviceless"]["live_description"]
    assert plan["peak"] > 0 and plan["target"] == described
