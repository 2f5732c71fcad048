"""Unfreezing schedule and the stage partition: frozen layers get no gradient and no optimizer state."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vqax.errors import ConfigError
from vqax.models.vit import vit
from vqax.models.vit_unfreeze import (
  Partition,
  normalize_schedule,
  stages,
  trainable_units,
)

MODEL = vit("micro", num_classes=3, num_layers=4)


@pytest.fixture(scope="module")
def setup():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16, 16)), jnp.float32)
  labels = jnp.array([0, 1, 2, 1])
  params = jax.jit(MODEL.init)(jax.random.key(0), x)["params"]
  # Perturb so every parameter (zero-initialised biases included) matters for the gradients.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  return x, labels, params


def _loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_schedule_is_cumulative_and_validated():
  schedule = {0: ["head"], "2": [-1, "final_norm"], 5: ["layer.1", 2]}
  assert trainable_units(schedule, 0, 4) == {"head"}
  assert trainable_units(schedule, 3, 4) == {"head", "layer.3", "final_norm"}
  assert trainable_units(schedule, 9, 4) == {"head", "layer.3", "final_norm", "layer.1", "layer.2"}
  assert [start for start, _ in stages(schedule, 4)] == [0, 2, 5]
  assert trainable_units({0: ["all"]}, 0, 4) == {"embeddings", "final_norm", "head", *(f"layer.{i}" for i in range(4))}
  for bad, message in [({0: ["head", 4]}, "names layer 4, which does not exist"),
                       ({0: ["layer.12"]}, "names layer 'layer.12'"),
                       ({0: ["classifier"]}, "names layer 'classifier'"),
                       ({1: ["head"]}, "no layers at epoch 0"),
                       ({"first": ["head"]}, "key 'first' is not an epoch"),
                       ({}, "empty")]:
    with pytest.raises(ConfigError, match=message):
      normalize_schedule(bad, 4)


@pytest.mark.parametrize("units", [{"head"}, {"layer.1", "layer.3", "head"}, {"embeddings", "layer.0"}])
def test_partition_forward_and_gradients_equal_the_full_model(setup, units):
  x, labels, params = setup
  partition = Partition.for_units(MODEL, units)
  trainable, frozen = partition.split(params)
  chex.assert_trees_all_equal(partition.merge(trainable, frozen), params)

  full_logits, full_aux = jax.jit(MODEL.apply)({"params": params}, x)
  logits, aux = jax.jit(lambda t, f: partition.apply(MODEL, t, f, x))(trainable, frozen)
  np.testing.assert_allclose(logits, full_logits, atol=1e-5)
  np.testing.assert_allclose(aux["features"], full_aux["features"], atol=1e-5)

  full_grads = jax.jit(jax.grad(lambda p: _loss(MODEL.apply({"params": p}, x)[0], labels)))(params)
  grads = jax.jit(jax.grad(lambda t, f: _loss(partition.apply(MODEL, t, f, x)[0], labels)))(trainable, frozen)
  expected, _ = partition.split(full_grads)
  chex.assert_trees_all_equal_structs(grads, expected)
  chex.assert_trees_all_close(grads, expected, atol=1e-5)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def _size(tree):
  return sum(int(np.size(a)) for a in jax.tree.leaves(tree))


def test_optimizer_state_exists_only_for_trainable_params(setup):
  _x, _labels, params = setup
  partition = Partition.for_units(MODEL, {"layer.3", "head"})
  trainable, frozen = partition.split(params)
  state = optax.adamw(1e-3).init(trainable)
  # adam's mu and nu: two copies of the trainable tree, nothing for the frozen one.
  mu = state[0].mu
  chex.assert_trees_all_equal_shapes(mu, trainable)
  assert _size(state) == 2 * _size(trainable) + 1  # + the step count
  assert _size(trainable) + _size(frozen) == _size(params)
  assert jax.tree.leaves(trainable["layers"])[0].shape[0] == 1  # one of the four stacked layers


def test_frozen_layers_cost_no_gradient_memory(setup):
  """Compiled bytes of the gradient computation: head-only training needs far less than full training."""
  x, labels, params = setup
  x = jnp.tile(x, (4, 1, 1))
  labels = jnp.tile(labels, 4)

  def compiled_bytes(units):
    partition = Partition.for_units(MODEL, units)
    trainable, frozen = partition.split(params)
    grad = jax.jit(jax.grad(lambda t, f: _loss(partition.apply(MODEL, t, f, x)[0], labels)))
    memory = grad.lower(trainable, frozen).compile().memory_analysis()
    return memory.output_size_in_bytes, memory.temp_size_in_bytes

  head_out, head_temp = compiled_bytes({"head"})
  full_out, full_temp = compiled_bytes({"all"})
  print(f"grad bytes head-only: out {head_out} temp {head_temp}; all: out {full_out} temp {full_temp}")
  assert head_out * 20 < full_out  # gradients: the head's only
  assert head_temp * 2 < full_temp  # no activations saved for the frozen encoder
