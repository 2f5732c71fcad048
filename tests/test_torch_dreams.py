"""tools/torch_dreams.py, the PyTorch DreaMS that tools/bench_train.py times vqax against: it must compute
what the official model computes (the seeded official fixture, loaded by its own state-dict names), and the
benchmark's runners must start from one set of weights and agree on the loss before any timing.

Needs torch, an optional extra (`pip install 'vqax[torch]'`, the CPU build): skipped without it.
"""
import numpy as np
import pytest

from conftest import shared_path

torch = pytest.importorskip("torch", reason="torch (the optional [torch] extra) is not installed")

from tools import bench_train, torch_dreams  # noqa: E402
from vqax.models import dreams_convert  # noqa: E402

TOL = 1e-5


def _close(actual, z, key, tol=TOL):
  actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
  diff = float(np.max(np.abs(actual.astype(np.float64) - z[key])))
  assert diff <= tol, f"{key}: max abs diff {diff:.3g}"


def test_port_matches_the_official_fixture():
  path = shared_path("fixtures", "dreams_tiny_parity.npz")
  with np.load(path) as archive:
    z = {k: archive[k] for k in archive.files}
  state_dict, args = dreams_convert.read_official(path)
  model = torch_dreams.DreaMS(dreams_convert.model_for(state_dict, args))
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  model.eval()
  with torch.no_grad():
    _close(model.fourier_enc(torch.from_numpy(z["input/spec"][..., :1])), z, "feat/fourier_enc")
    _close(model(torch.from_numpy(z["input/spec"])), z, "output/per_peak")
    masked_spec, mask = torch.from_numpy(z["input/spec_mask"]), torch.from_numpy(z["input/mask"])
    per_peak = model(masked_spec)
    _close(per_peak, z, "output/masked_per_peak")
    logits = model.ff_out(per_peak[mask])
    _close(logits, z, "output/mz_logits_masked")
    targets = torch_dreams.mz_classes(torch.from_numpy(z["input/spec"])[mask][:, 0], 1000.0, 0.25)
    np.testing.assert_array_equal(targets.numpy(), z["output/mz_target_class"])
    _close(torch_dreams.focal_loss(logits, targets, 5.0), z, "output/ssl_loss_per_masked_peak")
    # Pairs (0, 1) and (1, 0), as the fixture's retention-order logits.
    precursors = per_peak[:, 0]
    pairs = torch.stack([torch.cat([precursors[0], precursors[1]]), torch.cat([precursors[1], precursors[0]])])
    _close(model.ro_out(pairs), z, "output/ro_logit")
  # The frozen Fourier table is registered twice (as officially) but is one parameter, left out of training.
  assert set(state_dict) == set(model.state_dict())
  assert not model.fourier_enc.b.requires_grad


TINY = {"batch_size": 2, "max_peaks_n": 12, "model.n_layers": 2, "model.d_peak": 8, "model.d_fourier": 24,
        "model.n_heads": 2, "model.ff_fourier_d": 16, "model.fourier_x_min": 0.01, "model.hot_mz_bin_size": 2.0}


def test_bench_dreams_runners_start_from_one_set_of_weights_and_agree(tmp_path):
  config = bench_train.bench_config("dreams", TINY)
  bench_train.prepare_weights("dreams", config, tmp_path)
  assert config.init_from == str(tmp_path / "converted")  # the PyTorch initialisation, through the converter
  vqax_runner = bench_train.VqaxRunner("dreams", config)
  torch_runner = bench_train.TorchRunner("dreams", config, tmp_path, compiled=False)
  vqax_loss, torch_loss = vqax_runner.agreement_loss(), torch_runner.agreement_loss()
  assert np.isfinite(vqax_loss) and abs(vqax_loss - torch_loss) <= 1e-5 * max(1.0, abs(torch_loss)), (
      vqax_loss, torch_loss)
  # Training steps (dropout on, the step's own masks) move both models.
  assert all(np.isfinite([vqax_runner(), torch_runner(), torch_runner()]))
  masked = bench_train.dreams_masked_batch(config)
  assert masked["mask"].shape == (2, 2, 13) and masked["mask"].sum() >= 2 * 2 * 2  # at least 2 per spectrum
  assert not masked["mask"][..., 0].any()  # never the precursor token
