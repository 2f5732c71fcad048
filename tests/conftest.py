"""Shared test fixtures.

`../shared` (beside the repository) holds real data and parity fixtures. A user's fresh clone has none, so
tests needing it skip there with a reason; under CI (CI=true) it is always present and a missing one fails.
"""
import os
import pathlib

import jax
import pytest

# Tests compile the same small train steps many times (every resume, every phase): a persistent
# compilation cache shared across tests and xdist workers cuts that to one compile each.
jax.config.update("jax_compilation_cache_dir", os.environ.get("VQAX_TEST_JAX_CACHE", "/tmp/vqax-test-jax-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# A CPU-only host with JAX's CUDA plugin installed (the [plan-gpu] extra) starts only JAX's CPU backend, as
# `vqax plan --target` does: quiet, and the plugin stays usable for compiling to GPU targets.
from vqax.planning.targets import use_cpu_backend_on_cpu_hosts  # noqa: E402

use_cpu_backend_on_cpu_hosts()

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("VQAX_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> pathlib.Path:
  """Path under ../shared; skips the test when absent (fails under CI=true, where it must exist)."""
  path = SHARED.joinpath(*parts)
  if not path.exists():
    message = f"{path} not found: tests on shared fixtures need ../shared beside the repository"
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(message)
    pytest.skip(message)
  return path


@pytest.fixture
def shared():
  return shared_path


def write_noise_tree(root: pathlib.Path, machine_types=("fan", "pump"), n_train=6, seconds=3.0, seed=0):
  """A tiny DCASE-layout tree of noise clips: enough to exercise training mechanics, not to learn."""
  import numpy as np
  import soundfile as sf
  rng = np.random.default_rng(seed)
  for machine_type in machine_types:
    for split, names in (("train", [f"normal_id_00_{i:08d}" for i in range(n_train)]),
                         ("test", ["normal_id_00_00000000", "anomaly_id_00_00000000"])):
      folder = root / machine_type / split
      folder.mkdir(parents=True, exist_ok=True)
      for name in names:
        wave = (rng.standard_normal(int(seconds * 16000)) * 0.05).astype(np.float32)
        sf.write(folder / f"{name}.wav", wave, 16000, subtype="PCM_16")
  return root


@pytest.fixture
def noise_tree(tmp_path):
  return write_noise_tree(tmp_path / "data")


def smoke_config(data_root, **overrides):
  """The tiny VQ-VAE config used by training tests."""
  from vqax import config_loading
  config = config_loading.load_config(str(REPO / "configs" / "vqvae_dcase.py") + ":smoke")
  config.data_root = str(data_root)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def batch_sizes(config, devices=None):
  """The trainer's BatchSizes for `config` on every device (or `devices`): what prepare_data takes."""
  from vqax.train.sharding import make_mesh
  from vqax.train.task import BatchSizes
  return BatchSizes.for_mesh(config, make_mesh(devices))


def train(config, workdir, **kwargs):
  """`vqax.run.train`: the config's registered task, as `vqax train` runs it."""
  from vqax import run
  return run.train(config, workdir, **kwargs)
