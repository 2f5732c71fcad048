"""DreaMS port against the official model: the seeded tiny fixture (../shared/fixtures/dreams_tiny_parity.*)
converted through the same path as `vqax convert dreams`, every output and intermediate to <= 1e-5."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_path
from vqax.errors import CheckpointError
from vqax.models import dreams_convert
from vqax.models.dreams_objectives import focal_loss, mz_classes

TOL = 1e-5


@pytest.fixture(scope="module")
def fixture():
  path = shared_path("fixtures", "dreams_tiny_parity.npz")
  with np.load(path) as archive:
    arrays = {k: archive[k] for k in archive.files}
  state_dict, args = dreams_convert.read_official(path)
  return arrays, state_dict, args


def _masked_positions(mask: np.ndarray) -> np.ndarray:
  """Row-major masked positions per spectrum, padded with 0 to the longest row."""
  rows = [np.nonzero(m)[0] for m in mask]
  out = np.zeros((len(rows), max(map(len, rows))), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def _close(actual, fixture, key):
  diff = float(np.max(np.abs(np.asarray(actual, np.float64) - fixture[key])))
  assert diff <= TOL, f"{key}: max abs diff {diff:.3g}"


@pytest.mark.parametrize("attention_impl", ["explicit", "dot_product_attention"])
def test_converted_tiny_model_matches_every_fixture_output(fixture, attention_impl):
  z, state_dict, args = fixture
  model = dreams_convert.model_for(state_dict, args, attention_impl=attention_impl)
  assert (model.d_model, model.n_layers, model.n_heads, model.num_mz_bins) == (64, 2, 4, 4000)
  variables = dreams_convert.convert_state_dict(state_dict, model)

  (outputs, aux), state = model.apply(variables, jnp.asarray(z["input/spec"]), capture_intermediates=True,
                                      mutable=["intermediates"])
  inter = state["intermediates"]
  layers = inter["layers"]
  np.testing.assert_array_equal(aux["padding_mask"], z["input/padding_mask"])
  _close(inter["fourier_enc"]["__call__"][0], z, "feat/fourier_enc")
  _close(inter["ff_peak"]["__call__"][0], z, "feat/ff_peak")
  _close(inter["ff_fourier"]["__call__"][0], z, "feat/ff_fourier")
  _close(layers["attention_input"][0][0], z, "feat/transformer_encoder.scales.0")
  _close(layers["attention_output"][0][0], z, "feat/transformer_encoder.atts.0")
  if attention_impl == "explicit":
    _close(layers["attention"]["attention_weights"][0][0], z, "feat/transformer_encoder.atts.0:att_weights")
  _close(layers["layer_output"][0][0], z, "feat/transformer_encoder.scales.2:input")
  _close(layers["ffn_output"][0][1], z, "feat/transformer_encoder.ffs.1")
  _close(layers["ffn_output"][0][1][:, 0], z, "output/get_embeddings_ffs_last_precursor")
  _close(outputs["per_peak"], z, "feat/transformer_encoder.scales.4")
  _close(outputs["per_peak"], z, "output/per_peak")
  _close(outputs["embedding"], z, "output/precursor_embedding")

  # The masked inputs as retention-order pairs: row 0 = (spectrum 0, spectrum 1), row 1 = (1, 0).
  spec_mask = jnp.asarray(z["input/spec_mask"])
  positions = _masked_positions(z["input/mask"])
  pairs, pair_positions = jnp.stack([spec_mask, spec_mask[::-1]]), jnp.stack([positions, positions[::-1]])
  masked, _ = model.apply(variables, pairs, pair_positions)
  _close(masked["per_peak"][0], z, "output/masked_per_peak")
  _close(masked["embedding"][0], z, "output/masked_precursor_embedding")
  _close(masked["ro_logit"][:, None], z, "output/ro_logit")
  _close(jax.nn.sigmoid(masked["ro_logit"]), z, "output/ro_prob")
  counts = z["input/mask"].sum(1)
  logits = np.concatenate([masked["mz_logits"][0, i, :c] for i, c in enumerate(counts)])
  _close(logits, z, "output/mz_logits_masked")
  all_positions, _ = model.apply(variables, spec_mask)
  _close(all_positions["mz_logits"], z, "output/mz_logits_all_positions")

  targets = mz_classes(jnp.asarray(z["input/spec"])[z["input/mask"]][:, 0], 1000.0, model.hot_mz_bin_size)
  np.testing.assert_array_equal(targets, z["output/mz_target_class"])
  _close(focal_loss(jnp.asarray(z["output/mz_logits_masked"]), targets, 5.0), z,
         "output/ssl_loss_per_masked_peak")
  _close(focal_loss(jnp.asarray(logits), targets, 5.0), z, "output/ssl_loss_per_masked_peak")


def test_split_bias_equals_materialized_and_key_mask_differs(fixture):
  """The per-key Graphormer bias gives the official [B,N,N,d]-sum logits; the corrected key mask is
  the one setting that changes the outputs (padding keys no longer attended)."""
  z, state_dict, args = fixture
  spec = jnp.asarray(z["input/spec"])
  results = {}
  for form in ("split", "materialized"):
    for mask in ("official", "keys"):
      model = dreams_convert.model_for(state_dict, args, graphormer_bias=form, padding_mask=mask,
                                       attention_impl="explicit")
      variables = dreams_convert.convert_state_dict(state_dict, model)
      (out, _), state = model.apply(variables, spec, capture_intermediates=True, mutable=["intermediates"])
      results[form, mask] = (out["per_peak"], state["intermediates"]["layers"]["attention"]["attention_weights"][0])
  for mask in ("official", "keys"):
    np.testing.assert_allclose(results["split", mask][0], results["materialized", mask][0], atol=2e-6)
    np.testing.assert_allclose(results["split", mask][1], results["materialized", mask][1], atol=2e-6)
  # Official: padding query rows uniform; keys: no weight on padding keys from any query.
  padding = z["input/padding_mask"]
  weights = np.asarray(results["split", "keys"][1])  # [L, B, H, N, N]
  assert np.all(weights[:, 1, :, :, padding[1]] == 0)
  assert float(np.max(np.abs(results["split", "keys"][0][0] - results["split", "official"][0][0]))) < 1e-6
  assert float(np.max(np.abs(results["split", "keys"][0][1, 0] - results["split", "official"][0][1, 0]))) > 1e-3


def test_convert_save_load_roundtrip(fixture, tmp_path):
  z, state_dict, args = fixture
  out = dreams_convert.convert_dreams_file(shared_path("fixtures", "dreams_tiny_parity.npz"), tmp_path / "conv")
  variables, model = dreams_convert.load_converted(out)
  outputs, _ = model.apply(variables, jnp.asarray(z["input/spec"]))
  _close(outputs["embedding"], z, "output/precursor_embedding")


def test_strict_conversion_names_the_key(fixture):
  _, state_dict, args = fixture
  model = dreams_convert.model_for(state_dict, args)
  with pytest.raises(CheckpointError, match="ro_out.weight"):
    dreams_convert.convert_state_dict({k: v for k, v in state_dict.items() if k != "ro_out.weight"}, model)
  with pytest.raises(CheckpointError, match="extra.weight"):
    dreams_convert.convert_state_dict({**state_dict, "extra.weight": np.zeros(3)}, model)


class Namespace:
  """Stands for argparse.Namespace in a Lightning checkpoint's hyper_parameters."""
  def __init__(self, **kwargs):
    self.__dict__.update(kwargs)


def test_lightning_ckpt_converts_like_the_npz(fixture, tmp_path, monkeypatch):
  from test_torch_checkpoint import write_torch_zip
  z, state_dict, args = fixture
  ckpt = tmp_path / "ssl_model.ckpt"
  hparams = {"args": Namespace(**{k: v for k, v in args.items() if k != "dformat"})}
  write_torch_zip(ckpt, {"state_dict": dict(state_dict), "hyper_parameters": hparams}, monkeypatch)
  variables, model = dreams_convert.load_converted(dreams_convert.convert_dreams_file(ckpt, tmp_path / "conv"))
  assert model.n_heads == 4 and model.hot_mz_bin_size == 0.25
  outputs, _ = model.apply(variables, jnp.asarray(z["input/spec"]))
  _close(outputs["embedding"], z, "output/precursor_embedding")
