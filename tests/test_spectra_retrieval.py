"""Same-molecule retrieval on the real pesticide spectra: matchms cosines well above chance, and any
embedding function (a binned-spectrum vector, a DreaMS model) plugs in beside them."""
import jax
import numpy as np

from conftest import shared_path
from vqax.data.spectra import read_spectra
from vqax.eval.spectra_retrieval import dreams_embed_fn, evaluate_retrieval, retrieval_metrics
from vqax.models.dreams import dreams_tiny, init_variables


def test_metrics_of_perfect_and_reversed_scores():
  ids = ["a", "a", "b", "b", "c"]
  same = (np.asarray(ids)[:, None] == np.asarray(ids)[None, :]).astype(float)
  perfect = retrieval_metrics(same, ids)
  assert perfect["recall@1"] == 1.0 and perfect["auprc"] == 1.0 and perfect["n_queries"] == 4
  worst = retrieval_metrics(-same, ids)
  assert worst["recall@1"] == 0.0 and worst["auprc"] < perfect["auprc"]
  assert perfect["chance_recall@1"] == 0.25 and perfect["chance_auprc"] == 0.2


def _binned(spectra, width=1.0, top=1000):
  out = np.zeros((len(spectra), int(top / width)))
  for i, s in enumerate(spectra):
    np.add.at(out[i], np.minimum((s.mz / width).astype(int), out.shape[1] - 1), np.sqrt(s.intensity))
  return out


def test_pesticides_cosines_beat_chance_and_embeddings_plug_in(tmp_path):
  spectra = read_spectra(shared_path("data", "ms2_pesticides", "pesticides.mgf")).spectra
  model = dreams_tiny(hot_mz_bin_size=1.0, fourier_x_min=1e-2, mz_head=False, ro_head=False)
  variables = init_variables(model, jax.random.key(0), 100)
  results = evaluate_retrieval(spectra, {"binned": _binned, "dreams_tiny_random": dreams_embed_fn(model, variables)},
                               out_dir=tmp_path)
  assert set(results) == {"binned", "dreams_tiny_random", "matchms CosineGreedy", "matchms ModifiedCosineGreedy"}
  for name in ("matchms CosineGreedy", "matchms ModifiedCosineGreedy", "binned"):
    r = results[name]
    assert r["recall@1"] > 3 * r["chance_recall@1"] and r["auprc"] > 5 * r["chance_auprc"], (name, r)
  assert all(0 <= results["dreams_tiny_random"][m] <= 1 for m in ("recall@1", "recall@5", "auprc"))
  assert (tmp_path / "retrieval.png").stat().st_size > 10_000 and (tmp_path / "retrieval.json").is_file()
