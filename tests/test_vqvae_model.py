"""VQ-VAE modules: shapes, dtypes, the quantizer's gradient and statistics, upsampling equivalence."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqax.models.quantizer import VectorQuantizer, code_statistics
from vqax.models.upsample import Upsample2x
from vqax.ops.resample import subpixel_kernel, upsample2x
from vqax.models.vqvae import VQVAE, Decoder, Encoder


def test_encoder_decoder_shapes_follow_the_spec():
  # Shapes only: jax.eval_shape traces without computing (cheap on CPU).
  x = jax.ShapeDtypeStruct((3, 64, 64, 1), jnp.float32)
  enc = Encoder()
  variables = jax.eval_shape(enc.init, jax.random.key(0), x)
  z, inter = jax.eval_shape(lambda v, x: enc.apply(v, x, capture_intermediates=True), variables, x)
  chex.assert_shape(z, (3, 8, 8, 64))
  # Intermediate stages 32x32x32 -> 64x16x16 -> 96x8x8.
  shapes = [inter["intermediates"][f"down{i}"]["__call__"][0].shape for i in range(3)]
  assert shapes == [(3, 32, 32, 32), (3, 16, 16, 64), (3, 8, 8, 96)]
  dec = Decoder()
  dv = jax.eval_shape(dec.init, jax.random.key(1), z)
  y, inter = jax.eval_shape(lambda v, z: dec.apply(v, z, capture_intermediates=True), dv, z)
  shapes = [inter["intermediates"][f"up{i}"]["__call__"][0].shape for i in range(3)]
  assert shapes == [(3, 16, 16, 96), (3, 32, 32, 64), (3, 64, 64, 32)]
  chex.assert_shape(y, (3, 64, 64, 1))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_vqvae_outputs_and_dtypes(dtype):
  model = VQVAE(dtype=dtype)
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 1))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  # Master weights stay float32 whatever the compute dtype.
  chex.assert_trees_all_equal_dtypes(variables, jax.tree.map(lambda a: a.astype(jnp.float32), variables))
  recon, aux = jax.jit(model.apply)(variables, x)
  chex.assert_shape(recon, (2, 64, 64, 1))
  chex.assert_type(recon, jnp.float32)
  chex.assert_shape(aux["codes"], (2, 8, 8))
  assert aux["codes"].dtype in (jnp.int32, jnp.int64)
  assert variables["params"]["quantizer"]["codebook"].shape == (128, 64)


def test_straight_through_gradient_passes_unchanged_to_the_encoder():
  vq = VectorQuantizer(num_embeddings=4, latent_dim=3)
  z = jax.random.normal(jax.random.key(0), (5, 3))
  variables = vq.init(jax.random.key(1), z)
  weights = jax.random.normal(jax.random.key(2), (5, 3))
  # d/dz of sum(w * quantized(z)) is w: the quantizer is the identity for gradients.
  grad = jax.grad(lambda z: jnp.sum(weights * vq.apply(variables, z)[0]))(z)
  np.testing.assert_allclose(grad, weights, rtol=0, atol=0)
  # The codebook gets gradient only from the codebook loss, the encoder only from the commitment loss.
  def losses(params, z):
    _, aux = vq.apply({"params": params}, z)
    return aux["codebook_loss"], aux["commitment_loss"]
  g_codebook_params = jax.grad(lambda p: losses(p, z)[0])(variables["params"])
  g_commit_params = jax.grad(lambda p: losses(p, z)[1])(variables["params"])
  assert np.abs(g_codebook_params["codebook"]).sum() > 0
  np.testing.assert_array_equal(g_commit_params["codebook"], 0)
  np.testing.assert_array_equal(jax.grad(lambda z: losses(variables["params"], z)[0])(z), 0)


def test_codes_and_perplexity_on_a_known_codebook():
  codebook = jnp.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
  vq = VectorQuantizer(num_embeddings=4, latent_dim=2)
  z = jnp.array([[0.1, -0.2], [9.0, 0.5], [9.5, 9.9], [0.3, 0.1]])
  quantized, aux = vq.apply({"params": {"codebook": codebook}}, z)
  np.testing.assert_array_equal(aux["codes"], [0, 1, 3, 0])
  np.testing.assert_allclose(quantized, codebook[jnp.array([0, 1, 3, 0])], atol=1e-6)
  # Code frequencies 2/4, 1/4, 0, 1/4 -> perplexity exp(H) with H = -(.5 ln .5 + 2 * .25 ln .25).
  expected = np.exp(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25)))
  np.testing.assert_allclose(aux["perplexity"], expected, rtol=1e-6)
  np.testing.assert_allclose(aux["usage"], 0.75)
  np.testing.assert_allclose(aux["commitment_loss"], np.mean((np.asarray(z) - np.asarray(quantized)) ** 2), rtol=1e-5)
  stats = code_statistics(jnp.array([2, 2, 2]), 4)
  np.testing.assert_allclose(stats["perplexity"], 1.0)


def _reference_transposed_conv(x, w):
  """PyTorch ConvTranspose2d(k=4, s=2, p=1) by its definition: out[2i - 1 + k] += x[i] * w[k]."""
  n, h, wd, _ = x.shape
  out = np.zeros((n, 2 * h, 2 * wd, w.shape[3]))
  for i in range(h):
    for j in range(wd):
      for ky in range(4):
        for kx in range(4):
          oy, ox = 2 * i - 1 + ky, 2 * j - 1 + kx
          if 0 <= oy < 2 * h and 0 <= ox < 2 * wd:
            out[:, oy, ox, :] += x[:, i, j, :] @ w[ky, kx]
  return out


def test_subpixel_and_transpose_upsampling_are_the_same_layer():
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, 5, 6, 3)), np.float64)
  w = np.asarray(jax.random.normal(jax.random.key(1), (4, 4, 3, 4)), np.float64)
  reference = _reference_transposed_conv(x, w)
  with jax.enable_x64(True):
    for impl in ("transpose", "subpixel"):
      np.testing.assert_allclose(upsample2x(jnp.asarray(x), jnp.asarray(w), impl), reference, atol=1e-10)
    # The plain flax layer with the flipped kernel and padding k-1-p = 2 is the same operation.
    plain = nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=False,
                             param_dtype=jnp.float64, dtype=jnp.float64)
    y = plain.apply({"params": {"kernel": jnp.asarray(w[::-1, ::-1])}}, jnp.asarray(x))
    np.testing.assert_allclose(y, reference, atol=1e-10)
  chex.assert_shape(subpixel_kernel(jnp.asarray(w, jnp.float32)), (3, 3, 3, 16))


def test_upsample_impls_share_parameters_and_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
  a, b = Upsample2x(7, impl="transpose"), Upsample2x(7, impl="subpixel")
  variables = a.init(jax.random.key(1), x)
  ga = jax.grad(lambda v: jnp.sum(a.apply(v, x) ** 2))(variables)
  gb = jax.grad(lambda v: jnp.sum(b.apply(v, x) ** 2))(variables)
  chex.assert_trees_all_close(ga, gb, rtol=1e-4, atol=1e-4)
