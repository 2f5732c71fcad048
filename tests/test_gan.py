"""Conditional GAN networks: shapes and dtypes, the projection discriminator's use of the class, the
objectives on known logits, generator EMA. (The task, its step and its learning test: test_gan_task.py.)"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqax.errors import ConfigError
from vqax.models.gan import Discriminator, Generator, one_hot, validate
from vqax.models.gan_objectives import (
  ema_update,
  gan_losses,
  hinge_d_loss,
  hinge_g_loss,
  nonsaturating_d_loss,
  nonsaturating_g_loss,
)

G = Generator(n_mels=10, frames=23, num_classes=3, latent_dim=8, channels=(16, 8))
D = Discriminator(num_classes=3, channels=(8, 16))


def test_generator_and_discriminator_shapes_and_dtypes():
  z = jnp.ones((4, 8))
  c = one_hot(jnp.array([0, 1, 2, 0]), 3)
  g_vars = jax.jit(G.init)(jax.random.key(0), z, c)
  assert G.base_shape == (3, 6)  # 2 upsamplings: ceil(10/4), ceil(23/4), cropped after
  spec = jax.jit(G.apply)(g_vars, z, c)
  chex.assert_shape(spec, (4, 10, 23))
  chex.assert_type(spec, jnp.float32)
  d_vars = jax.jit(D.init)(jax.random.key(1), spec, c)
  assert set(d_vars) == {"params", "batch_stats"}  # spectral-norm power-iteration state
  logits, aux = jax.jit(D.apply)(d_vars, spec, c)
  chex.assert_shape(logits, (4,))
  chex.assert_shape(aux["features"], (4, 16))
  # bfloat16 compute: float32 parameters, float32 outputs.
  half_g, half_d = G.clone(dtype=jnp.bfloat16), D.clone(dtype=jnp.bfloat16)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(jax.eval_shape(half_g.init, jax.random.key(0), z, c)))
  chex.assert_type(jax.eval_shape(half_g.apply, g_vars, z, c), jnp.float32)
  chex.assert_type(jax.eval_shape(half_d.apply, d_vars, spec, c)[0], jnp.float32)


def test_remat_gives_the_same_networks():
  z = jax.random.normal(jax.random.key(0), (2, 8))
  c = one_hot(jnp.array([1, 2]), 3)
  g_vars = jax.jit(G.init)(jax.random.key(0), z, c)
  remat_g = G.clone(remat_policy="full")
  np.testing.assert_allclose(jax.jit(remat_g.apply)(g_vars, z, c), jax.jit(G.apply)(g_vars, z, c), atol=1e-6)
  x = jax.jit(G.apply)(g_vars, z, c)
  d_vars = jax.jit(D.init)(jax.random.key(1), x, c)
  grad = lambda d: jax.jit(jax.grad(lambda p: d.apply({**d_vars, "params": p}, x, c)[0].sum()))(d_vars["params"])
  chex.assert_trees_all_close(grad(D.clone(remat_policy="dots")), grad(D), atol=1e-5)


def test_projection_discriminator_depends_on_the_class_through_the_embedding_only():
  x = jax.random.normal(jax.random.key(2), (2, 10, 23))
  c0, c1 = one_hot(jnp.array([0, 0]), 3), one_hot(jnp.array([1, 1]), 3)
  d_vars = jax.jit(D.init)(jax.random.key(3), x, c0)
  apply = jax.jit(D.apply)
  out0, aux0 = apply(d_vars, x, c0)
  out1, aux1 = apply(d_vars, x, c1)
  assert float(jnp.abs(out0 - out1).min()) > 1e-4
  np.testing.assert_array_equal(aux0["features"], aux1["features"])  # features do not see the class
  params = jax.tree.map(lambda a: a, d_vars["params"])
  params["embed"]["kernel"] = jnp.zeros_like(params["embed"]["kernel"])
  zeroed = {**d_vars, "params": params}
  np.testing.assert_allclose(apply(zeroed, x, c0)[0], apply(zeroed, x, c1)[0], atol=1e-6)


def test_condition_size_must_match_the_classes():
  with pytest.raises(ConfigError, match="expected \\[batch, num_classes=3\\]"):
    jax.eval_shape(G.init, jax.random.key(0), jnp.ones((2, 8)), one_hot(jnp.array([0, 1]), 2))
  with pytest.raises(ConfigError, match="at least 2 classes"):
    validate(Generator(num_classes=1))


def test_losses_on_known_logits():
  real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.0])
  # hinge: D = mean(relu(1 - [2, .5])) + mean(relu(1 + [-2, 0])) = 0.25 + 0.5; G = -mean(fake)
  np.testing.assert_allclose(hinge_d_loss(real, fake), 0.75, rtol=1e-6)
  np.testing.assert_allclose(hinge_g_loss(fake), 1.0, rtol=1e-6)
  # softplus(-2) = 0.126928, softplus(-0.5) = 0.474077, softplus(0) = 0.693147, softplus(2) = 2.126928
  np.testing.assert_allclose(nonsaturating_d_loss(real, fake), (0.126928 + 0.474077) / 2 + (0.126928 + 0.693147) / 2,
                             rtol=1e-5)
  np.testing.assert_allclose(nonsaturating_g_loss(fake), (2.126928 + 0.693147) / 2, rtol=1e-5)
  assert gan_losses("hinge") == (hinge_d_loss, hinge_g_loss)
  with pytest.raises(ConfigError, match="'wgan' is not one of hinge, nonsaturating"):
    gan_losses("wgan")


def test_generator_ema():
  ema, params = {"w": jnp.zeros(3)}, {"w": jnp.ones(3)}
  for _ in range(10):
    ema = ema_update(ema, params, 0.9)
  np.testing.assert_allclose(ema["w"], 1 - 0.9 ** 10, rtol=1e-5)


def test_grouped_remat_gives_the_same_networks_statistics_and_gradients():
  """remat_groups runs samples in groups: same outputs, gradients and spectral-norm updates as in one pass
  (5 samples in 2 groups: the padded path too)."""
  z = jax.random.normal(jax.random.key(0), (5, 8))
  c = one_hot(jnp.array([0, 1, 2, 1, 0]), 3)
  g_vars = jax.jit(G.init)(jax.random.key(0), z, c)
  grouped_g = G.clone(remat_policy="full", remat_groups=2)
  assert jax.tree.structure(jax.eval_shape(grouped_g.init, jax.random.key(0), z, c)) == jax.tree.structure(g_vars)
  x = jax.jit(G.apply)(g_vars, z, c)
  np.testing.assert_allclose(jax.jit(grouped_g.apply)(g_vars, z, c), x, atol=1e-5)
  g_loss = lambda g: jax.jit(jax.grad(lambda p: g.apply({"params": p}, z, c).sum()))(g_vars["params"])
  chex.assert_trees_all_close(g_loss(grouped_g), g_loss(G), atol=1e-4)

  d_vars = jax.jit(D.init)(jax.random.key(1), x, c)
  grouped_d = D.clone(remat_policy="full", remat_groups=2)
  assert jax.tree.structure(jax.eval_shape(grouped_d.init, jax.random.key(1), x, c)) == jax.tree.structure(d_vars)

  def d_step(d):
    def objective(p):
      (logits, aux), updates = d.apply({"params": p, "batch_stats": d_vars["batch_stats"]}, x, c, update_stats=True,
                                       mutable=["batch_stats"])
      return logits.sum() + aux["features"].sum(), (logits, updates["batch_stats"])
    return jax.jit(jax.grad(objective, has_aux=True))(d_vars["params"])

  (grads, (logits, stats)), (ref_grads, (ref_logits, ref_stats)) = d_step(grouped_d), d_step(D)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
  chex.assert_trees_all_close(stats, ref_stats, atol=1e-6)
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(d_vars["batch_stats"])))
  chex.assert_trees_all_close(grads, ref_grads, atol=1e-4)
