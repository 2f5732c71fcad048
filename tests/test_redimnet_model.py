"""ReDimNet port: sizes, shapes/dtypes, remat, block variants, converter strictness and round trip.

Variables come from random official state_dicts pushed through the converter rather than `model.init`:
on CPU, compiling init (one RNG draw per tensor) costs far more than the forward pass, and this way every
test also exercises the converter's layout.
"""
import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqax.audio.melbanks import MelBanks, preemphasis
from vqax.errors import CheckpointError, ConfigError
from vqax.models.redimnet import SIZES, ReDimNet, redimnet, redimnet_from_config
from vqax.models.redimnet_convert import (convert_redimnet_file, convert_state_dict, load_converted,
                                          official_layout, read_torch)

# SPEC section 2; the official `sum(p.numel() for p in model.parameters())` (front end has no parameters,
# the final BatchNorm + Linear are included, BatchNorm running statistics are not).
SPEC_PARAM_COUNTS = {"b0": 1_004_251, "b1": 2_126_937, "b2": 5_067_057, "b3": 3_225_021, "b4": 6_441_521,
                     "b5": 7_659_761, "b6": 15_015_473}
HOP = 240
WAVE = jax.random.uniform(jax.random.key(0), (2, 16 * HOP), minval=-0.5, maxval=0.5)  # 0.24 s, 17 frames
# XLA's CPU backend spends most of these tests compiling; -O0 halves that and leaves float32 results exact
# enough for every check here (the parity tests compile with the defaults).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def random_state_dict(model_config: dict, seed: int = 0) -> dict:
  """An official-layout state_dict with PyTorch-like scales (what a fresh `ReDimNetWrap` would hold)."""
  rng = np.random.default_rng(seed)
  state_dict = {}
  for entry in official_layout(model_config):
    key, shape = entry.key, entry.shape
    if entry.expected is not None:
      value = entry.expected()
    elif key.endswith("num_batches_tracked"):
      value = np.zeros(shape)
    elif key.endswith("running_var"):
      value = rng.uniform(0.5, 1.5, shape)
    elif key.endswith(".w"):
      value = 0.5 * rng.normal(size=shape)
    elif entry.path[-1] in ("scale", "mean") or key.endswith(".bias"):
      value = (entry.path[-1] == "scale") + 0.1 * rng.normal(size=shape)
    else:  # conv / linear weights: PyTorch's U(+-1/sqrt(fan_in))
      bound = 1.0 / np.sqrt(np.prod(shape[1:]))
      value = rng.uniform(-bound, bound, shape)
    state_dict[key] = np.asarray(value, np.float32)
  return state_dict


def random_variables(model_config: dict, seed: int = 0) -> dict:
  return convert_state_dict(random_state_dict(model_config, seed), model_config)


# Small configs that exercise every block family, option and head the port supports.
TINY = {"F": 12, "C": 4, "hop_length": HOP, "embed_dim": 16, "global_context_att": True}
VARIANTS = {
    "resnet_conv+att": dict(block_2d_type="basic_resnet", block_1d_type="conv+att", group_divisor=1,
                            stages_setup=[[1, 1, 2, [[3, 3]], 4], [2, 1, 1, [[3, 3]], 4]]),
    "fwse_att": dict(block_2d_type="basic_resnet_fwse", block_1d_type="att", group_divisor=None,
                     stages_setup=[[2, 2, 1, [[3, 3]], 4], [3, 1, 2, [[3, 3]], None]]),
    "convnext_conv_mfa": dict(block_2d_type="convnext_like", block_1d_type="conv", group_divisor=2,
                              out_channels=24, emb_bn=True, stages_setup=[[1, 1, 1, [[3, 3]], 2]]),
    "convnext_relu_fc_tstp": dict(block_2d_type="convnext_like_relu", block_1d_type="fc", group_divisor=4,
                                  pooling_func="TSTP", num_classes=5,
                                  stages_setup=[[2, 1, 2, [[3, 3]], 3], [1, 1, 1, [[3, 3]], 2]]),
}


def _params(variables):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("size", sorted(SPEC_PARAM_COUNTS))
def test_param_count_matches_spec(size):
  shapes = jax.eval_shape(redimnet(size).init, jax.random.key(0), WAVE)
  assert _params(shapes) == SPEC_PARAM_COUNTS[size]
  assert set(shapes) == {"params", "batch_stats"}


def test_default_config_is_official_m_setup():
  # ReDimNetWrap() with no arguments: 4,234,193 parameters (fixture json `param_counts`).
  assert _params(jax.eval_shape(redimnet_from_config({}).init, jax.random.key(0), WAVE)) == 4_234_193


def test_config_errors_name_the_option():
  with pytest.raises(ConfigError, match="b0, b1"):
    redimnet("b7")
  with pytest.raises(ConfigError, match="not_an_arg"):
    redimnet("b0", not_an_arg=1)
  with pytest.raises(ConfigError, match="block_2d_type"):
    redimnet("b0", block_2d_type="mystery")
  with pytest.raises(ConfigError, match="stride"):
    redimnet("b0", F=61)
  with pytest.raises(ConfigError, match="remat_policy"):
    redimnet("b0", remat_policy="sometimes")
  with pytest.raises(ConfigError, match="tf_optimized_arch"):
    redimnet("b0", tf_optimized_arch=True)


@pytest.fixture(scope="module")
def tiny():
  config = {**TINY, **VARIANTS["resnet_conv+att"]}
  return config, random_variables(config)


def test_b0_shapes_and_dtypes():
  config = SIZES["b0"]
  embedding, aux = jit(redimnet_from_config(config).apply)(random_variables(config), WAVE)
  frames = 1 + WAVE.shape[1] // HOP
  chex.assert_shape(embedding, (2, 192))
  chex.assert_shape(aux["spec"], (2, 60, frames))
  chex.assert_shape(aux["frame_features"], (2, frames, 600))
  chex.assert_shape(aux["pooled"], (2, 1200))
  chex.assert_type([embedding, aux["spec"], aux["frame_features"], aux["pooled"]], jnp.float32)
  chex.assert_tree_all_finite(embedding)


def test_precomputed_features_give_the_same_embedding(tiny):
  config, variables = tiny
  model = redimnet_from_config(config)
  embedding, aux = jit(model.apply)(variables, WAVE)
  embed_features = jit(lambda v, s: model.apply(v, s, method=ReDimNet.embed_features))
  from_features, _ = embed_features(variables, aux["spec"])
  np.testing.assert_array_equal(np.asarray(from_features), np.asarray(embedding))


def test_bfloat16_compute_keeps_float32_params(tiny):
  config, variables = tiny
  model = redimnet_from_config(config, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(model.init, jax.random.key(0), WAVE)
  chex.assert_trees_all_equal_shapes_and_dtypes(shapes, variables)
  chex.assert_type(jax.tree.leaves(shapes), jnp.float32)
  embedding, aux = jit(model.apply)(variables, WAVE)
  chex.assert_type(embedding, jnp.bfloat16)
  chex.assert_type(aux["spec"], jnp.float32)  # the front end stays float32
  chex.assert_tree_all_finite(embedding)
  reference, _ = jit(redimnet_from_config(config).apply)(variables, WAVE)
  e, r = np.asarray(embedding, np.float32), np.asarray(reference)
  cosine = np.sum(e * r, axis=1) / np.linalg.norm(e, axis=1) / np.linalg.norm(r, axis=1)
  assert np.all(cosine > 0.99), cosine


def test_remat_gives_identical_outputs_and_gradients(tiny):
  # A two-stage b0 look-alike (residual 2-D blocks, channel squeeze, conv+att 1-D block): compiling b0's
  # gradient twice would cost minutes of CPU; remat acts per block, so a few blocks show the same thing.
  config, variables = tiny

  def loss_and_grads(policy):
    model = redimnet_from_config(config, remat_policy=policy)

    def loss(params):
      embedding, _ = model.apply({**variables, "params": params}, WAVE, False)
      return jnp.sum(embedding**2), embedding

    return jit(jax.grad(loss, has_aux=True))(variables["params"])

  grads, embedding = loss_and_grads("none")
  grads_remat, embedding_remat = loss_and_grads("full")
  # Bit-identical at XLA's default -O level; at -O0 fusion differs by an ulp or so.
  scale = float(jnp.max(jnp.abs(embedding)))
  np.testing.assert_allclose(embedding_remat, embedding, rtol=0, atol=1e-6 * scale)
  flat, flat_remat = (jnp.concatenate([g.ravel() for g in jax.tree.leaves(t)]) for t in (grads, grads_remat))
  # Relative to the whole gradient: some leaves (e.g. attention key biases) have exactly-zero true
  # gradients, so their float noise cannot be compared leaf by leaf.
  assert float(jnp.max(jnp.abs(flat - flat_remat))) <= 1e-6 * float(jnp.max(jnp.abs(flat)))
  assert float(jnp.linalg.norm(flat - flat_remat)) <= 1e-6 * float(jnp.linalg.norm(flat))


def test_remat_in_training_mode_updates_batch_stats_alike(tiny):
  config, variables = tiny

  def train_step(policy):
    model = redimnet_from_config(config, remat_policy=policy)
    return jit(lambda v, x: model.apply(v, x, True, mutable=["batch_stats"]))(variables, WAVE)

  (embedding, _), updates = train_step("none")
  (embedding_remat, _), updates_remat = train_step("dots")
  np.testing.assert_allclose(np.asarray(embedding_remat), np.asarray(embedding), rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(updates_remat, updates, rtol=1e-5, atol=1e-6)
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         updates["batch_stats"], variables["batch_stats"])
  assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_convert_and_run(variant):
  config = {**TINY, **VARIANTS[variant]}
  variables = random_variables(config)  # the converter checks every Flax leaf is filled with its shape
  model = redimnet_from_config(config)
  embedding, aux = jit(model.apply)(variables, WAVE)
  chex.assert_shape(embedding, (2, 16))
  chex.assert_tree_all_finite(embedding)
  if "num_classes" in config:
    chex.assert_shape(aux["logits"], (2, config["num_classes"]))


def test_converter_rejects_mismatches():
  config = {**TINY, **VARIANTS["resnet_conv+att"]}
  state_dict = random_state_dict(config)
  key = "backbone.stage1.2.weight"
  with pytest.raises(CheckpointError, match=key):
    convert_state_dict({k: v for k, v in state_dict.items() if k != key}, config)
  with pytest.raises(CheckpointError, match="backbone.extra.weight"):
    convert_state_dict({**state_dict, "backbone.extra.weight": np.zeros(3)}, config)
  with pytest.raises(CheckpointError, match=key):
    convert_state_dict({**state_dict, key: state_dict[key][:1]}, config)
  fb = "spec.torchfbank.2.mel_scale.fb"
  with pytest.raises(CheckpointError, match=fb):
    convert_state_dict({**state_dict, fb: state_dict[fb] * 1.1}, config)
  with pytest.raises(CheckpointError, match="model_config"):  # a checkpoint of another size
    convert_state_dict(state_dict, {**config, "C": 8})


def test_npz_round_trip(tmp_path):
  config = {**TINY, **VARIANTS["fwse_att"]}
  state_dict = random_state_dict(config, seed=3)
  src = tmp_path / "official.npz"
  np.savez(src, **{f"param/{k}": v for k, v in state_dict.items()})
  src.with_suffix(".json").write_text(json.dumps({"model_config": config}))
  out_dir = convert_redimnet_file(src, tmp_path / "converted")
  variables, model_config = load_converted(out_dir)
  expected = convert_state_dict(state_dict, config)
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, variables), expected)
  model = redimnet_from_config(model_config)
  embedding, _ = jit(model.apply)(variables, WAVE)
  reference, _ = jit(redimnet_from_config(config).apply)(expected, WAVE)
  np.testing.assert_array_equal(np.asarray(embedding), np.asarray(reference))
  with pytest.raises(CheckpointError, match="model_config.json"):
    load_converted(tmp_path / "missing")
  with pytest.raises(CheckpointError, match="no model_config"):
    convert_redimnet_file(src.rename(tmp_path / "lonely.npz"), tmp_path / "other")


def test_torch_reader_needs_torch(tmp_path):
  try:
    import torch  # noqa: F401
  except ImportError:
    with pytest.raises(ConfigError, match="torch"):
      read_torch(tmp_path / "b0.pt")
  else:
    pytest.skip("torch is installed")


def test_front_end_frames_and_normalisation():
  spec = jit(lambda w: MelBanks(n_mels=60, hop_length=HOP).apply({}, w))(WAVE)
  chex.assert_shape(spec, (2, 60, 1 + WAVE.shape[1] // HOP))
  np.testing.assert_allclose(np.asarray(spec).mean(axis=-1), 0.0, atol=1e-5)
  x = jnp.array([[1.0, 2.0, 4.0]])
  np.testing.assert_allclose(preemphasis(x), [[1.0 - 0.97 * 2.0, 2.0 - 0.97, 4.0 - 0.97 * 2.0]], rtol=1e-6)


def test_spec_augment_masks_only_in_training():
  melbanks = MelBanks(n_mels=20, hop_length=HOP, do_spec_aug=True, freq_mask_width=(3, 4),
                      time_mask_width=(2, 3))
  spec = jit(lambda w, rng: melbanks.apply({}, w, True, rngs={"specaug": rng}))(WAVE, jax.random.key(1))
  spec = np.asarray(spec)
  for utterance in spec:  # exactly one 3-bin frequency mask and one 2-frame time mask each
    assert np.sum(np.all(utterance == 0, axis=1)) == 3
    assert np.sum(np.all(utterance == 0, axis=0)) == 2
  assert np.all(np.asarray(melbanks.apply({}, WAVE)) != 0)  # evaluation: no masks, no RNG needed


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_convolutions_give_the_plain_gradients(variant):
  """layer_forms="cpu" (grouped and depthwise convs as fused multiply-adds, ...) against XLA's own
  convolutions, training mode, float64 (pooling statistics stay float32, and batch norm over a batch of 2 magnifies their rounding:
  ~1e-6, far below what a wrong tap or group would give), same results."""
  config = {**TINY, **VARIANTS[variant]}
  with jax.enable_x64(True):
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), random_variables(config))
    wave = jnp.asarray(WAVE, jnp.float64)
    results = []
    for layer_forms in ("cpu", "xla"):
      model = redimnet_from_config(config, layer_forms=layer_forms, dtype=jnp.float64, param_dtype=jnp.float64)

      def loss(params, model=model):
        (embedding, _), updates = model.apply({**variables, "params": params}, wave, train=True,
                                              mutable=["batch_stats"])
        return jnp.sum(jnp.sin(embedding)), (embedding, updates)

      results.append(jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"]))
    (_, (emb_auto, stats_auto)), grads_auto = results[0]
    (_, (emb_xla, stats_xla)), grads_xla = results[1]
    np.testing.assert_allclose(emb_auto, emb_xla, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(stats_auto, stats_xla, rtol=1e-5, atol=1e-5)
    # Relative to the largest gradient anywhere: some leaves' gradients are rounding noise around 0
    # (attention key biases cancel exactly under the softmax).
    scale = max(float(np.max(np.abs(np.asarray(b)))) for b in jax.tree.leaves(grads_xla))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads_auto), jax.tree.leaves(grads_xla)):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("num_inputs, channels", [(3, 6), (1, 1)])
def test_weighted_sum_is_the_softmax_weighted_sum_of_its_inputs(num_inputs, channels):
  from vqax.models.redimnet import WeightedSum
  rng = np.random.default_rng(0)
  inputs = [rng.standard_normal((2, 5, 6)) for _ in range(num_inputs)]
  w = rng.standard_normal((num_inputs, channels))
  with jax.enable_x64(True):
    out = WeightedSum(num_inputs, channels, dtype=jnp.float64, param_dtype=jnp.float64).apply(
        {"params": {"w": jnp.asarray(w)}}, [jnp.asarray(x) for x in inputs])
  chex.assert_shape(out, (2, 5, 6))
  # The module takes its softmax in float32 whatever the dtype (as the official float32 weights do).
  weights = np.asarray(jax.nn.softmax(jnp.asarray(w, jnp.float32), axis=0), np.float64)
  np.testing.assert_allclose(np.asarray(out), sum(weights[i] * inputs[i] for i in range(num_inputs)), rtol=1e-12)


def test_exact_gelu_is_flax_exact_gelu():
  """ReDimNet's GELU (through erf, as PyTorch's nn.GELU()) is flax's erfc form to rounding, not tanh's."""
  import flax.linen as nn
  from vqax.models.redimnet import exact_gelu
  with jax.enable_x64(True):
    x = jnp.linspace(-8.0, 8.0, 4001, dtype=jnp.float64)
    np.testing.assert_allclose(exact_gelu(x), nn.gelu(x, approximate=False), rtol=1e-13, atol=1e-15)
    assert float(jnp.max(jnp.abs(exact_gelu(x) - nn.gelu(x, approximate=True)))) > 1e-4
  x32 = x.astype(jnp.float32)
  chex.assert_type(exact_gelu(x32), jnp.float32)
  np.testing.assert_allclose(exact_gelu(x32), nn.gelu(x32, approximate=False), rtol=1e-6, atol=1e-6)
