"""Matryoshka head and AAM-softmax: logits against a float64 formula, the nested loss, the margin ramp."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqax.models import mrl

DIMS = (64, 128, 192, 256)
# Jitted: op-by-op dispatch would compile every primitive separately (slow on a busy CPU).
aam_logits = jax.jit(mrl.aam_logits, static_argnums=(3, 5))
nested_loss = jax.jit(mrl.matryoshka_aam_loss, static_argnums=(3, 4), static_argnames=("scale",))


def numpy_aam_logits(z, w, labels, dim, margin, scale):
  """ArcFace logits in float64, written from the definition: s·cos(θ_y + m) on the target when θ_y + m <= π,
  continued as cos θ_y − (1 + cos(π − m)) beyond; s·cos θ_j elsewhere."""
  z = np.asarray(z, np.float64)[:, :dim]
  w = np.asarray(w, np.float64)[:, :dim]
  cos = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
  logits = cos.copy()
  for i, y in enumerate(labels):
    theta = np.arccos(np.clip(cos[i, y], -1.0, 1.0))
    if theta + margin <= math.pi:
      logits[i, y] = math.cos(theta + margin)
    else:
      logits[i, y] = cos[i, y] - (1.0 + math.cos(math.pi - margin))
  return scale * logits


def numpy_cross_entropy(logits, labels):
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  return -np.mean(log_probs[np.arange(len(labels)), labels])


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(12, 256)).astype(np.float32)
  w = rng.normal(size=(9, 256)).astype(np.float32)
  labels = rng.integers(0, 9, 12).astype(np.int32)
  # Rows whose target angle is near π (beyond π − m) exercise the linear continuation.
  z[0] = -w[labels[0]]
  z[1, :64] = -w[labels[1], :64] + 0.05 * rng.normal(size=64)
  return z, w, labels


@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5])
def test_aam_logits_match_a_float64_formula(batch, margin):
  z, w, labels = batch
  for dim in DIMS:
    got = np.asarray(aam_logits(jnp.asarray(z), jnp.asarray(w), jnp.asarray(labels), dim, margin, 30.0))
    want = numpy_aam_logits(z, w, labels, dim, margin, 30.0)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)


def test_aam_fallback_branch_is_taken_and_continuous(batch):
  z, w, labels = batch
  cos = z[0] @ w[labels[0]] / np.linalg.norm(z[0]) / np.linalg.norm(w[labels[0]])
  assert cos < math.cos(math.pi - 0.2)  # row 0 lies beyond π − m: the tests above cover the continuation
  # At the branch point both formulas give −1: the target logit is continuous in θ.
  threshold = math.cos(math.pi - 0.2)
  margin_logits = jax.jit(mrl.additive_angular_margin, static_argnums=3)
  logits = margin_logits(jnp.array([[threshold - 1e-4, 0.0], [threshold + 1e-4, 0.0]]), jnp.array([0, 0]), 0.2, 1.0)
  np.testing.assert_allclose(np.asarray(logits[:, 0]), [-1.0, -1.0], atol=1e-3)


def test_nested_loss_is_the_weighted_mean_of_per_dim_losses(batch):
  z, w, labels = batch
  weights = (1.0, 2.0, 0.5, 1.5)
  loss, metrics = nested_loss(jnp.asarray(z), jnp.asarray(w), jnp.asarray(labels), DIMS, weights,
                              margin=0.2, scale=30.0)
  per_dim = [numpy_cross_entropy(numpy_aam_logits(z, w, labels, dim, 0.2, 30.0), labels) for dim in DIMS]
  for dim, expected in zip(DIMS, per_dim):
    np.testing.assert_allclose(float(metrics[f"loss_{dim}"]), expected, rtol=1e-4)
    cos = numpy_aam_logits(z, w, labels, dim, 0.0, 1.0)
    assert float(metrics[f"accuracy_{dim}"]) == pytest.approx(np.mean(cos.argmax(axis=1) == labels))
  np.testing.assert_allclose(float(loss), np.dot(weights, per_dim) / sum(weights), rtol=1e-4)


def test_loss_gradients_are_finite_at_zero_and_straight_angles(batch):
  z, w, labels = batch
  z = z.copy()
  z[2] = w[labels[2]]  # θ = 0 on the target

  def loss(z, w):
    return mrl.matryoshka_aam_loss(z, w, jnp.asarray(labels), DIMS, margin=0.2, scale=30.0)[0]
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(z), jnp.asarray(w))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_margin_ramps_exponentially_between_epochs():
  schedule = jax.jit(lambda step: mrl.margin_schedule(step, margin=0.2, steps_per_epoch=10, ramp_start_epoch=1,
                                                      ramp_end_epoch=3))

  def margin(step):
    return float(schedule(step))
  assert margin(0) == margin(9) == 0.0
  assert margin(10) == pytest.approx(0.0, abs=1e-6)
  assert margin(20) == pytest.approx(0.2 * (1 - 10**-1.5), rel=1e-4)  # halfway: 1 − 1e-3^(1/2)
  assert margin(29) == pytest.approx(0.2 * (1 - 10**(-3 * 19 / 20)), rel=1e-4)
  assert margin(30) == margin(1000) == pytest.approx(0.2)
  values = [margin(s) for s in range(10, 31)]
  assert values == sorted(values)
  assert float(mrl.margin_schedule(0, margin=0.2, steps_per_epoch=10)) == pytest.approx(0.2)  # no ramp


def test_head_projects_and_holds_shared_class_weights():
  head = mrl.MatryoshkaHead(projection_dim=256, num_classes=7)
  x = jnp.ones((3, 192))
  variables = jax.jit(head.init)(jax.random.key(0), x)
  assert variables["params"][mrl.CLASS_WEIGHTS].shape == (7, 256)
  assert variables["params"]["projection"]["kernel"].shape == (192, 256)
  z, _ = jax.jit(lambda v, x: head.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  assert z.shape == (3, 256)
  assert "class_weights" not in jax.eval_shape(mrl.MatryoshkaHead(256, 0).init, jax.random.key(0), x)["params"]
