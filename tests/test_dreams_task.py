"""The DreaMS task through the ordinary CLI: the smoke config trains and resumes, the frozen Fourier table
stays bit-identical, `vqax plan --fit max_peaks_n` finds its size, bad spectra stop `vqax train` with one line
(or are skipped and counted), `embed` / `eval-spectra` work on a trained workdir (retrieval on the real
pesticide spectra beside matchms), and converted official weights start a run."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from conftest import REPO, shared_path
from vqax import cli, config_loading, tasks
from vqax.data.spectra import write_hdf5
from vqax.data.synth_spectra import generate_spectra, make_runs, write_mgf
from vqax.errors import CheckpointError
from vqax.models.dreams import lin_float_int_frequencies
from vqax.train.checkpointing import restore_trained

SMOKE = str(REPO / "configs" / "dreams.py") + ":smoke"


def run_cli(capsys, *argv):
  code = cli.main([str(a) for a in argv])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  root = tmp_path_factory.mktemp("synth_spectra")
  generate_spectra(root, seed=0, train_runs=2, test_runs=1, n_molecules=20, molecules_per_run=15)
  return root


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
  """A smoke workdir trained 6 steps."""
  workdir = tmp_path_factory.mktemp("dreams_smoke") / "run"
  assert cli.main(["train", "--config", SMOKE, "--workdir", str(workdir), "--data_root", str(synth / "train"),
                   "--no_progress", "--max_steps", "6"]) == 0
  return workdir


def test_synth_spectra_is_deterministic_and_keeps_what_it_made(tmp_path, capsys):
  args = ["--train_runs", 2, "--test_runs", 1, "--n_molecules", 8]
  for out in ("a", "b"):
    code, printed, err = run_cli(capsys, "synth", "spectra", "--out", tmp_path / out, *args)
    assert code == 0 and "3 runs" in printed, err
  files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.mgf"))
  assert [str(f) for f in files] == ["test/synth_run_02.mgf", "train/synth_run_00.mgf", "train/synth_run_01.mgf"]
  assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
  before = (tmp_path / "a" / files[0]).stat().st_mtime_ns
  assert run_cli(capsys, "synth", "spectra", "--out", tmp_path / "a", *args)[0] == 0  # the same set: kept
  assert (tmp_path / "a" / files[0]).stat().st_mtime_ns == before
  code, _, err = run_cli(capsys, "synth", "spectra", "--out", tmp_path / "a", "--seed", 1, *args)
  assert code == 2 and "other settings (seed)" in err


def test_smoke_trains_resumes_and_keeps_the_fourier_table_frozen(synth, tmp_path, capsys):
  workdir = tmp_path / "run"
  args = ["train", "--config", SMOKE, "--workdir", workdir, "--data_root", synth / "train", "--no_progress"]
  code, out, err = run_cli(capsys, *args, "--max_steps", 4)
  assert code == 0, err
  assert "trained to step 4/" in out and "LC-MS runs with retention times" in out
  code, out, err = run_cli(capsys, *args, "--max_steps", 8)
  assert code == 0, err
  assert "resumed from" in out and "at step 4" in out and "trained to step 8/" in out
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [4, 5, 8]  # one curve: the resumed run appends after step 4
  for key in ("loss", "mask_loss", "ro_loss", "mz_top1_accuracy", "mz_top5_accuracy", "ro_accuracy"):
    assert np.isfinite(rows[-1][key]), key
  config, state, step = restore_trained(workdir, "dreams", "test")
  assert step == 8 and config.weight_decay > 0
  # Weight decay and Adam never touch the frozen table: bit-identical to the official frequencies.
  np.testing.assert_array_equal(state["params"]["fourier_enc"]["b"],
                                lin_float_int_frequencies(float(config.model.fourier_x_min)))


def test_plan_fits_max_peaks_n_within_a_budget(tmp_path, capsys):
  out_json = tmp_path / "plan.json"
  code, out, err = run_cli(capsys, "plan", "--config", SMOKE, "--variants", "plain", "--fit", "max_peaks_n",
                           "--budget", "10MiB", "--json", out_json)
  assert code == 0, err
  result = json.loads(out_json.read_text())
  fit = result["fits"]["plain"]
  assert fit["size"] > 16  # the smoke config's 16 peaks take ~6 MiB
  assert fit["peak"] <= 10 * 2**20 < fit["next_peak"]
  assert f"--max_peaks_n {fit['size']}" in out and "vqax train --config" in out


def _bad_folder(root, block: str):
  """One good synthetic run and a file with a good spectrum, then `block`, then another good one."""
  root.mkdir(parents=True)
  run, = make_runs(n_runs=1, n_molecules=10, molecules_per_run=10, seed=1)
  write_mgf(root / "good.mgf", run)
  good = "BEGIN IONS\nTITLE=ok\nPEPMASS=300.1\nRTINSECONDS=10\n100.0\t5.0\n150.0\t10.0\nEND IONS\n"
  (root / "bad.mgf").write_text(good + block + good)
  return root


BAD_SPECTRA = {
    "no peaks": "BEGIN IONS\nTITLE=bad\nPEPMASS=300.1\nEND IONS\n",
    "NaN or infinite m/z": "BEGIN IONS\nTITLE=bad\nPEPMASS=300.1\nnan\t5.0\n150.0\t1.0\nEND IONS\n",
    "missing precursor": "BEGIN IONS\nTITLE=bad\n100.0\t5.0\nEND IONS\n",
    "not sorted": "BEGIN IONS\nTITLE=bad\nPEPMASS=300.1\n150.0\t5.0\n100.0\t1.0\nEND IONS\n",
    "negative": "BEGIN IONS\nTITLE=bad\nPEPMASS=300.1\n100.0\t-5.0\n150.0\t1.0\nEND IONS\n",
}


@pytest.mark.parametrize("reason", sorted(BAD_SPECTRA))
def test_bad_spectrum_stops_train_with_one_line(tmp_path, capsys, reason):
  data = _bad_folder(tmp_path / "data", BAD_SPECTRA[reason])
  code, _, err = run_cli(capsys, "train", "--config", SMOKE, "--workdir", tmp_path / "w", "--data_root", data,
                         "--no_progress")
  assert code == 2
  assert "bad.mgf: spectrum 1 (bad)" in err and reason in err and "skip_bad_spectra" in err, err
  assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_hdf5_row_stops_train_with_one_line(tmp_path, capsys):
  run, = make_runs(n_runs=1, n_molecules=10, molecules_per_run=10, seed=1)
  bad = dataclasses.replace(run[1], mz=np.concatenate([[np.nan], run[1].mz[1:]]))
  (tmp_path / "data").mkdir()
  write_hdf5(tmp_path / "data" / "run.hdf5", [run[0], bad] + run[2:])
  code, _, err = run_cli(capsys, "train", "--config", SMOKE, "--workdir", tmp_path / "w", "--data_root",
                         tmp_path / "data", "--no_progress")
  assert code == 2 and "run.hdf5: spectrum 1 (row 1): NaN or infinite m/z" in err and err.count("\n") == 1, err


def test_bad_spectra_are_skipped_and_counted_and_truncated_files_named(tmp_path, capsys, caplog):
  data = _bad_folder(tmp_path / "data", BAD_SPECTRA["no peaks"] + BAD_SPECTRA["negative"])
  code, out, err = run_cli(capsys, "train", "--config", SMOKE, "--workdir", tmp_path / "w", "--data_root", data,
                           "--no_progress", "--skip_bad_spectra", "--max_steps", 2)
  assert code == 0, err
  assert "skipped 2 bad spectra" in out and "trained to step 2/" in out
  skipped = [r.getMessage() for r in caplog.records if "skipping bad spectrum" in r.getMessage()]
  assert len(skipped) == 2 and all("bad.mgf: spectrum" in m for m in skipped)  # each logged once, named
  (data / "bad.mgf").write_text("BEGIN IONS\nTITLE=cut\nPEPMASS=300.1\n100.0\t5")
  code, _, err = run_cli(capsys, "train", "--config", SMOKE, "--workdir", tmp_path / "w2", "--data_root", data,
                         "--no_progress", "--skip_bad_spectra")
  assert code == 2 and "bad.mgf: truncated .mgf" in err and err.count("\n") == 1
  code, out, err = run_cli(capsys, "train", "--config", SMOKE, "--workdir", tmp_path / "w3", "--data_root", data,
                           "--no_progress", "--config.skip_bad_files=true", "--max_steps", 1)
  assert code == 0 and "skipped 1 bad files" in out, err


def test_embed_and_eval_spectra_on_pesticides_beside_matchms(trained, tmp_path, capsys):
  workdir = trained
  pesticides = shared_path("data", "ms2_pesticides", "pesticides.mgf")
  code, out, err = run_cli(capsys, "embed", "--workdir", workdir, "--data", pesticides, "--out", tmp_path / "e.npy")
  assert code == 0, err
  embeddings = np.load(tmp_path / "e.npy")
  assert embeddings.shape == (76, 32) and embeddings.dtype == np.float32 and np.all(np.isfinite(embeddings))
  assert len((tmp_path / "e.spectra.tsv").read_text().splitlines()) == 77
  code, out, err = run_cli(capsys, "eval-spectra", "--workdir", workdir, "--data", pesticides, "--out", tmp_path)
  assert code == 0, err
  result = json.loads((tmp_path / "eval_spectra.json").read_text())
  mz = result["masked_mz"]
  assert mz["masked_peaks"] > 76 * 2 and 0 <= mz["mz_top1_accuracy"] <= mz["mz_top5_accuracy"] <= 1
  assert mz["chance_mz_top1_accuracy"] == pytest.approx(1 / 500)
  assert result["retention_order"] is None  # the GNPS file has no retention times
  retrieval = result["retrieval"]
  assert set(retrieval) == {"DreaMS", "matchms CosineGreedy", "matchms ModifiedCosineGreedy"}
  for name, r in retrieval.items():
    assert r["n_spectra"] == 76 and 0 <= r["recall@1"] <= r["recall@5"] <= 1, name
  cosine = retrieval["matchms CosineGreedy"]
  assert cosine["recall@1"] > 3 * cosine["chance_recall@1"]
  assert (tmp_path / "retrieval.png").stat().st_size > 10_000
  assert "retrieval matchms CosineGreedy" in out and "masked m/z top-1" in out


def test_eval_spectra_on_synthetic_runs_reports_retention_order(trained, synth, tmp_path, capsys):
  workdir = trained
  code, out, err = run_cli(capsys, "eval-spectra", "--workdir", workdir, "--data", synth / "test", "--out", tmp_path,
                           "--no_retrieval", "--max_pairs", 500)
  assert code == 0, err
  ro = json.loads((tmp_path / "eval_spectra.json").read_text())["retention_order"]
  assert ro["ro_pairs"] == 500 and 0 <= ro["ro_accuracy"] <= 1 and ro["chance_ro_accuracy"] == 0.5


def test_converted_official_weights_start_the_run(tmp_path, capsys):
  fixture = shared_path("fixtures", "dreams_tiny_parity.npz")
  code, out, err = run_cli(capsys, "convert", "dreams", fixture, "--out", tmp_path / "converted")
  assert code == 0, err
  config = config_loading.load_config(SMOKE)
  sizes = {"d_peak": 16, "d_fourier": 48, "n_layers": 2, "n_heads": 4, "ff_fourier_d": 32, "ff_fourier_depth": 5,
           "fourier_x_min": 1e-4, "hot_mz_bin_size": 0.25}
  args = [f"--config.model.{k}={v}" for k, v in sizes.items()] + [f"--config.init_from={tmp_path / 'converted'}"]
  task = tasks.create(tasks.apply_overrides(config, args))
  program = task.build(task.planning_info(), "cpu")
  params = program.init_variables(jax.random.key(0), program.batch_spec(2))["params"]
  z = np.load(fixture)
  np.testing.assert_array_equal(params["ro_out"]["kernel"], z["param/ro_out.weight"].T)
  wrong = tasks.apply_overrides(config_loading.load_config(SMOKE), args[:-1] + ["--config.model.n_layers=3", args[-1]])
  with pytest.raises(CheckpointError, match="model.n_layers=2"):
    tasks.create(wrong)


def test_demo_makes_data_trains_and_evaluates_on_held_out_runs(tmp_path, capsys):
  code, out, err = run_cli(capsys, "demo", "--task", "dreams", "--config", SMOKE, "--data_root",
                           tmp_path / "synth" / "train", "--workdir", tmp_path / "run", "--config.epochs=1",
                           "--config.eval.batch_size=256")
  assert code == 0, err
  assert sorted(p.name for p in (tmp_path / "synth" / "test").iterdir()) == ["synth_run_08.mgf", "synth_run_09.mgf"]
  result = json.loads((tmp_path / "run" / "eval_spectra" / "eval_spectra.json").read_text())
  assert result["data"].endswith("test") and result["retention_order"]["ro_pairs"] > 1000
  assert "DreaMS" in result["retrieval"] and "retention order" in out
