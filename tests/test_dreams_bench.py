"""The DreaMS benchmarks' plumbing at tiny sizes: tools/bench_memory_dreams plans the three forms through the
planner (the official materialized m/z bias costs more than the split form) and fits batches to budgets;
tools/bench_train's dreams case builds a batch the task's program accepts and takes a finite step."""
import numpy as np

from conftest import REPO
from tools import bench_memory_dreams, bench_train

SMOKE = str(REPO / "configs" / "dreams.py") + ":smoke"


def test_memory_rows_and_fits_for_every_form():
  result = bench_memory_dreams.dreams_memory(SMOKE, sizes=((8, 32),), forms=("materialized", "plain", "memory_saver"),
                                             budgets_gib=(0.01,), fit_forms=("plain",), fit_peaks=32, verbose=False)
  rows = {r["form"]: r for r in result["rows"]}
  assert set(rows) == {"plain", "memory_saver", "materialized"}
  assert rows["memory_saver"]["compute_dtype"] == "bfloat16" and rows["memory_saver"]["remat_policy"] != "none"
  assert rows["plain"]["remat_policy"] == "none" == rows["materialized"]["remat_policy"]
  assert rows["materialized"]["peak"] > rows["plain"]["peak"]  # the [B, N, N, d_fourier] tensor is held
  assert result["reduction_vs_materialized"]["8x33 plain"] > 0
  assert len(result["fits"]) == 1
  for fit in result["fits"]:
    assert fit["batch_size"] is not None and fit["peak"] <= 0.01 * 2**30 < fit["next_peak"], fit
  table = bench_memory_dreams.markdown(result)
  assert "| 8 x 33 | materialized |" in table and "largest pairs per device" in table


def test_bench_train_dreams_case_takes_a_step():
  overrides = {"batch_size": 2, "max_peaks_n": 12, "model.n_layers": 1, "model.d_peak": 8, "model.d_fourier": 24,
               "model.n_heads": 2, "model.ff_fourier_d": 16, "model.fourier_x_min": 0.01,
               "model.hot_mz_bin_size": 2.0}
  config = bench_train.bench_config("dreams", overrides)
  batch = bench_train.make_batch("dreams", config)
  assert batch["spec"].shape == (2, 2, 13, 2) and batch["spec"].dtype == np.float32
  assert np.all(batch["spec"][:, :, 0, 1] == np.float32(1.1))  # the precursor token
  runner = bench_train.VqaxRunner("dreams", config)
  losses = [runner(), runner()]
  assert np.all(np.isfinite(losses)) and runner.compiled_peak > 0
