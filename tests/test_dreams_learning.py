"""DreaMS pre-training learns on synthetic LC-MS runs: after a short run of a model smaller than the demo's,
masked m/z accuracy and retention-order accuracy on held-out runs (new measurements of the same molecule
library) rise far above chance and above the trivial "most frequent bin" / "majority order" answers."""
from conftest import REPO, train
from vqax import config_loading
from vqax.data.synth_spectra import generate_spectra
from vqax.tasks.dreams.evaluation import evaluate_workdir


def test_masked_mz_and_retention_order_rise_far_above_chance(tmp_path):
  data = tmp_path / "synth"
  generate_spectra(data, seed=0, train_runs=6, test_runs=2, n_molecules=30, molecules_per_run=20)
  config = config_loading.load_config(str(REPO / "configs" / "dreams.py") + ":demo")
  config.data_root = str(data / "train")
  config.max_peaks_n = 24
  config.model.update(d_peak=8, d_fourier=56, n_layers=2, n_heads=4, ff_fourier_d=32, ff_fourier_depth=2)
  config.batch_size = 16
  config.epochs = 12
  config.learning_rate = 3e-3
  config.warmup_steps = 20
  config.log_every_steps = 1000
  config.eval.batch_size = 256  # few evaluation calls, one compile each
  train(config, tmp_path / "run", progress=False)
  result = evaluate_workdir(tmp_path / "run", data / "test", retrieval=False, max_pairs=1024)
  mz, ro = result["masked_mz"], result["retention_order"]
  assert result["num_mz_bins"] == 1000
  assert mz["mz_top1_accuracy"] > 50 * mz["chance_mz_top1_accuracy"], mz
  assert mz["mz_top1_accuracy"] > 3 * mz["most_frequent_bin_top1"], mz
  assert mz["mz_top5_accuracy"] > 2 * mz["most_frequent_bins_top5"], mz
  assert ro["ro_accuracy"] > 0.75 and ro["majority_ro_accuracy"] < 0.55, ro
