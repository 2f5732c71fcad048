"""DreaMS model mechanics: exact parameter count of the published size (eval_shape only), remat and
bfloat16 variants computing the same function, the frozen Fourier table, one training-step gradient."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqax.errors import ConfigError
from vqax.models.dreams import (DreaMS, FourierFeatures, count_params, dreams_tiny, frozen_params_mask, init_variables,
                                lin_float_int_frequencies)
from vqax.models.dreams_objectives import dreams_pretraining_loss


def test_full_model_parameter_count_is_the_official_one():
  # 116,051,429 with both heads; the backbone alone 95,549,381 (dreams_tiny_parity.json full_model_facts).
  assert count_params(DreaMS()) == 116_051_429
  assert count_params(DreaMS(mz_head=False, ro_head=False)) == 95_549_381
  assert lin_float_int_frequencies().shape == (5997,)


def _small(**overrides):
  """The tiny fixture sizes with a coarser Fourier table (1,047 frequencies) and 1000 m/z bins: fast."""
  return dreams_tiny(hot_mz_bin_size=1.0, fourier_x_min=1e-2, **overrides)


def _random_pairs(rng, batch=2, peaks=12, padded=4):
  mz = np.sort(rng.uniform(50, 400, (batch, 2, peaks)), axis=-1)
  intensity = rng.uniform(0.05, 1, (batch, 2, peaks))
  intensity[..., -padded:] = 0
  mz[..., -padded:] = 0
  intensity /= intensity.max(-1, keepdims=True)
  spec = np.stack([mz, intensity], -1)
  spec = np.concatenate([np.stack([np.full((batch, 2), 450.0), np.full((batch, 2), 1.1)], -1)[:, :, None], spec], 2)
  return jnp.asarray(spec, jnp.float32)


@pytest.fixture(scope="module")
def base_outputs():
  """The small model's variables, input pairs and outputs, computed once for every variant compared."""
  base = _small()
  spec = _random_pairs(np.random.default_rng(0))
  variables = init_variables(base, jax.random.key(1), spec.shape[-2] - 1)
  return base, variables, spec, jax.jit(base.apply)(variables, spec)[0]


@pytest.mark.parametrize("overrides", [dict(remat_policy="full"), dict(remat_policy="dots_saveable"),
                                       dict(graphormer_bias="materialized")])
def test_variants_compute_the_same_function(base_outputs, overrides):
  base, variables, spec, out = base_outputs
  other, _ = jax.jit(base.clone(**overrides).apply)(variables, spec)
  np.testing.assert_allclose(other["per_peak"], out["per_peak"], atol=2e-5)
  np.testing.assert_allclose(other["ro_logit"], out["ro_logit"], atol=2e-5)


def test_bfloat16_compute_keeps_float32_params_and_stays_close(base_outputs):
  model, _, spec, out = base_outputs
  variables = init_variables(model.clone(dtype=jnp.bfloat16), jax.random.key(1), spec.shape[-2] - 1)
  chex.assert_trees_all_equal_dtypes(variables, jax.tree.map(lambda a: a.astype(jnp.float32), variables))
  low, _ = jax.jit(model.clone(dtype=jnp.bfloat16).apply)(variables, spec)
  assert low["per_peak"].dtype == jnp.bfloat16
  err = float(jnp.max(jnp.abs(low["embedding"].astype(jnp.float32) - out["embedding"])))
  assert err < 0.1, err


def test_training_step_gradients_and_frozen_fourier_table():
  model = _small(remat_policy="full")
  spec = _random_pairs(np.random.default_rng(0), batch=3)
  params = init_variables(model, jax.random.key(1), spec.shape[-2] - 1)["params"]
  batch = {"spec": spec, "ro_label": jnp.asarray([1.0, 0.0, 1.0])}
  (loss, metrics), grads = jax.jit(jax.value_and_grad(
      lambda p: dreams_pretraining_loss(model, p, batch, jax.random.key(2)), has_aux=True))(params)
  chex.assert_trees_all_equal_shapes(grads, params)
  assert np.isfinite(float(loss)) and set(metrics) >= {"mz_top1_accuracy", "ro_accuracy", "mask_loss"}
  assert float(jnp.max(jnp.abs(grads["fourier_enc"]["b"]))) == 0.0
  for name in ("ff_fourier", "ff_peak", "layers", "ff_out", "ro_out"):
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads[name])), name
  mask = frozen_params_mask(params, model)
  assert mask["fourier_enc"]["b"] is False and mask["ro_out"]["kernel"] is True
  # fourier_trainable lets gradients reach the table (the module alone: the same stop_gradient switch).
  mz = jnp.asarray([[[120.5], [300.25]]])
  for trainable in (False, True):
    module = FourierFeatures(x_min=1e-2, trainable=trainable)
    table = module.init(jax.random.key(0), mz)
    grad = jax.grad(lambda v: jnp.sum(module.apply(v, mz)[..., ::7]))(table)["params"]["b"]
    assert (float(jnp.max(jnp.abs(grad))) > 0) is trainable


def test_bad_fields_raise_config_error():
  with pytest.raises(ConfigError, match="n_heads"):
    dreams_tiny(n_heads=5).init(jax.random.key(0), jnp.zeros((1, 4, 2)))
  with pytest.raises(ConfigError, match="graphormer_bias"):
    dreams_tiny(graphormer_bias="dense").init(jax.random.key(0), jnp.zeros((1, 4, 2)))
  with pytest.raises(ConfigError, match="remat_policy"):
    dreams_tiny(remat_policy="sometimes").init(jax.random.key(0), jnp.zeros((1, 4, 2)))
