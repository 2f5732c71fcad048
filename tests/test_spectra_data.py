"""Spectra readers, DreaMS preprocessing, retention-order pairs and synthetic runs: real GNPS files,
the official preprocessing of the parity fixture, and one clear error per bad input."""
import numpy as np
import pytest

from conftest import shared_path
from vqax.data import spectra as sp
from vqax.data.synth_spectra import write_synthetic_runs
from vqax.errors import DataError


def test_real_mgf_and_mzml_keep_their_metadata():
  pesticides = sp.read_spectra(shared_path("data", "ms2_pesticides", "pesticides.mgf"))
  assert len(pesticides.spectra) == 76 and pesticides.skipped == 0
  assert len({s.identity for s in pesticides.spectra}) == 45
  first = pesticides.spectra[0]
  assert first.precursor_mz == pytest.approx(183.057) and first.charge == 1
  assert first.identity == "C1=CC=C2C(=C1)NC(=N2)C3=CC=CO3" and first.run == "Pesticide_Mix6_neg.mzXML"
  run = sp.read_spectra(shared_path("data", "ms2_pesticides", "testdata.mzml"))
  assert len(run.spectra) == 10
  assert all(s.precursor_mz > 0 and s.rt is not None and len(s.mz) > 0 for s in run.spectra)
  assert [s.rt for s in run.spectra] == sorted(s.rt for s in run.spectra)


def test_preprocess_matches_the_official_spectrum_preprocessor():
  z = np.load(shared_path("fixtures", "dreams_tiny_parity.npz"))
  for i in range(2):
    raw = z["input/raw_spectra"][i]
    keep = raw[0] != 0
    spectrum = sp.Spectrum(raw[0][keep], raw[1][keep], float(z["input/raw_prec_mz"][i]), 1, None, "f", i, "r", None)
    np.testing.assert_array_equal(sp.preprocess(spectrum, max_peaks_n=16), z["input/spec"][i])
  shifted = sp.preprocess(spectrum, max_peaks_n=16, mz_shift=10.0)
  n = int(keep.sum())
  np.testing.assert_allclose(shifted[:n + 1, 0], z["input/spec"][1][:n + 1, 0] + 10, rtol=1e-6)
  assert np.all(shifted[n + 1:] == 0)


GOOD = "BEGIN IONS\nTITLE=ok\nPEPMASS=300.1\nCHARGE=1\n100.0\t5.0\n150.0\t10.0\nEND IONS\n"
BAD_CASES = {
    "no peaks": "BEGIN IONS\nTITLE=bad\nPEPMASS=300.1\nEND IONS\n",
    "NaN or infinite m/z": "BEGIN IONS\nTITLE=bad\nPEPMASS=300.1\nnan\t5.0\n150.0\t1.0\nEND IONS\n",
    "missing precursor": "BEGIN IONS\nTITLE=bad\n100.0\t5.0\nEND IONS\n",
    "not sorted": "BEGIN IONS\nTITLE=bad\nPEPMASS=300.1\n150.0\t5.0\n100.0\t1.0\nEND IONS\n",
    "negative": "BEGIN IONS\nTITLE=bad\nPEPMASS=300.1\n100.0\t-5.0\n150.0\t1.0\nEND IONS\n",
}


@pytest.mark.parametrize("reason", sorted(BAD_CASES))
def test_bad_mgf_spectrum_names_file_and_spectrum_or_is_skipped(tmp_path, reason):
  path = tmp_path / "run.mgf"
  path.write_text(GOOD + BAD_CASES[reason] + GOOD)
  with pytest.raises(DataError, match=rf"run\.mgf: spectrum 1 \(bad\): .*{reason}"):
    sp.read_spectra(path)
  result = sp.read_spectra(path, skip_bad_spectra=True)
  assert len(result.spectra) == 2 and result.skipped == 1 and "spectrum 1" in result.skipped_reasons[0]


def test_truncated_and_foreign_files_raise_one_data_error(tmp_path):
  (tmp_path / "cut.mgf").write_text(GOOD + GOOD[:40])
  with pytest.raises(DataError, match="cut.mgf: truncated"):
    sp.read_spectra(tmp_path / "cut.mgf", skip_bad_spectra=True)
  text = shared_path("data", "ms2_pesticides", "testdata.mzml").read_text()
  (tmp_path / "cut.mzML").write_text(text[:len(text) // 2])
  with pytest.raises(DataError, match="cut.mzML"):
    sp.read_spectra(tmp_path / "cut.mzML")
  paths = write_synthetic_runs(tmp_path / "h5", fmt="hdf5", n_runs=1, n_molecules=5, molecules_per_run=5)
  (tmp_path / "cut.hdf5").write_bytes(paths[0].read_bytes()[:2000])
  with pytest.raises(DataError, match="cut.hdf5: cannot read as HDF5"):
    sp.read_spectra(tmp_path / "cut.hdf5")
  with pytest.raises(DataError, match="unknown spectra format"):
    sp.read_spectra(tmp_path / "x.msp")
  with pytest.raises(DataError, match="no such file"):
    sp.read_spectra(tmp_path / "missing.mgf")


def test_synthetic_runs_are_deterministic_and_readable(tmp_path):
  kwargs = dict(n_runs=2, n_molecules=12, molecules_per_run=8, seed=3)
  a = write_synthetic_runs(tmp_path / "a", **kwargs)
  b = write_synthetic_runs(tmp_path / "b", **kwargs)
  c = write_synthetic_runs(tmp_path / "c", **{**kwargs, "seed": 4})
  assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b] != [p.read_bytes() for p in c]
  runs = [sp.read_spectra(p).spectra for p in a]
  assert all(len(r) >= 8 for r in runs)
  assert all(s.run == p.name and s.rt is not None and s.identity.startswith("SYNTH") for p, r in zip(a, runs)
             for s in r)
  h5 = write_synthetic_runs(tmp_path / "h", fmt="hdf5", **kwargs)
  from_h5 = sp.read_spectra(h5[0]).spectra
  assert len(from_h5) == len(runs[0])
  for x, y in zip(from_h5, runs[0]):
    np.testing.assert_allclose(x.mz, y.mz)
    assert (x.rt, x.identity, x.run) == pytest.approx((y.rt, y.identity, y.run))


def test_retention_order_loader_pairs_within_a_run(tmp_path):
  paths = write_synthetic_runs(tmp_path, n_runs=2, n_molecules=10, molecules_per_run=6, seed=1)
  spectra = [s for p in paths for s in sp.read_spectra(p).spectra]
  by_input = {sp.preprocess(s, 20).tobytes(): s for s in spectra}
  loader = sp.retention_order_loader(spectra, batch_size=4, seed=0, max_peaks_n=20, num_epochs=1)
  batches = list(loader)
  assert len(batches) == len(spectra) // 4
  assert batches[0]["spec"].shape == (4, 2, 21, 2) and batches[0]["spec"].dtype == np.float32
  labels = []
  for batch in batches:
    for spec, label in zip(batch["spec"], batch["ro_label"]):
      first, second = by_input[spec[0].tobytes()], by_input[spec[1].tobytes()]
      assert first.run == second.run and first is not second
      assert label == np.float32(first.rt < second.rt)
      labels.append(label)
  assert 0 < np.mean(labels) < 1
  again = list(sp.retention_order_loader(spectra, batch_size=4, seed=0, max_peaks_n=20, num_epochs=1))
  np.testing.assert_array_equal(again[0]["spec"], batches[0]["spec"])
