"""ViT classifier: ViT-B/16's exact size, input adapters, remat and compute dtype."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqax.errors import ConfigError
from vqax.models.vit import count_params, interpolate_positions, vit


def test_vit_b16_has_exactly_the_hugging_face_parameter_count():
  # shared/fixtures/vit_tiny_parity.json full_model_facts: ViTForImageClassification, 1000 labels.
  model = vit("B/16")
  assert (model.hidden_size, model.num_layers, model.num_heads, model.mlp_dim, model.patch_size,
          model.image_size) == (768, 12, 12, 3072, 16, (224, 224))
  assert count_params(model) == 86_567_656
  assert count_params(vit("B/16", num_classes=2)) == 86_567_656 - 998 * 769


def _init(model, x):
  return jax.jit(model.init)(jax.random.key(0), x)


def test_micro_forward_shapes_and_bfloat16_compute():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 16, 16)), jnp.float32)
  model = vit("micro", num_classes=4)
  variables = _init(model, x)
  logits, aux = jax.jit(model.apply)(variables, x)
  chex.assert_shape(logits, (3, 4))
  chex.assert_shape(aux["features"], (3, 32))
  chex.assert_type(logits, jnp.float32)
  # bfloat16 compute keeps float32 parameters and float32 logits, and stays close to float32 compute.
  half = model.clone(dtype=jnp.bfloat16)
  half_vars = jax.eval_shape(half.init, jax.random.key(0), x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(half_vars))
  half_logits, half_aux = jax.jit(half.apply)(variables, x)
  chex.assert_type(half_logits, jnp.float32)
  chex.assert_type(half_aux["features"], jnp.bfloat16)
  np.testing.assert_allclose(half_logits, logits, atol=0.1)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_changes_nothing_but_memory(policy):
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 16, 16)), jnp.float32)
  plain = vit("micro", num_classes=3)
  remat = vit("micro", num_classes=3, remat_policy=policy)
  variables = _init(plain, x)
  chex.assert_trees_all_equal_shapes(variables, _init(remat, x))  # same parameter tree either way

  def grads(model):
    return jax.jit(jax.grad(lambda v: jnp.sum(model.apply(v, x)[0] ** 2)))(variables)

  chex.assert_trees_all_close(grads(plain), grads(remat), atol=1e-6)


def test_native_non_square_input_interpolates_positions():
  """A [n_mels, frames] spectrogram of another grid than stored: positions resized, CLS row kept."""
  model = vit("micro", num_classes=2)
  variables = _init(model, jnp.zeros((1, 16, 16)))
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 12, 28)), jnp.float32)
  logits, _ = jax.jit(model.apply)(variables, x)
  chex.assert_shape(logits, (2, 2))
  table = variables["params"]["embeddings"]["position_embeddings"]
  resized = interpolate_positions(table, (4, 4), (3, 7))
  chex.assert_shape(resized, (1, 1 + 21, 32))
  np.testing.assert_array_equal(resized[:, 0], table[:, 0])
  # Same grid: the table is used as stored.
  assert interpolate_positions(table, (4, 4), (4, 4)) is table
  # A constant grid stays constant under interpolation.
  flat = jnp.concatenate([table[:, :1], jnp.ones((1, 16, 32))], axis=1)
  np.testing.assert_allclose(interpolate_positions(flat, (4, 4), (3, 7))[:, 1:], 1.0, atol=1e-5)


def test_resize_rgb_adapter_feeds_the_seed_shape():
  """The seed's path: [B, n_mels, frames] resized to image_size and repeated to 3 channels."""
  model = vit("tiny", num_classes=2, input_adapter="resize_rgb")
  spec = jnp.asarray(np.random.default_rng(3).standard_normal((2, 20, 100)), jnp.float32)
  image = model.adapt(spec)
  chex.assert_shape(image, (2, 32, 32, 3))
  np.testing.assert_array_equal(image[..., 0], image[..., 2])
  variables = _init(model, spec)
  chex.assert_shape(jax.jit(model.apply)(variables, spec)[0], (2, 2))


def test_bad_settings_raise_config_errors():
  with pytest.raises(ConfigError, match="unknown ViT variant 'L/99'"):
    vit("L/99")
  with pytest.raises(ConfigError, match="num_channels must be 1"):
    vit("tiny", input_adapter="native")
  with pytest.raises(ConfigError, match="remat_policy='sometimes'"):
    vit("micro", remat_policy="sometimes")
  with pytest.raises(ConfigError, match="expects \\[B, n_mels, frames\\]"):
    model = vit("micro")
    model.init(jax.random.key(0), jnp.zeros((1, 2, 16, 16)))
