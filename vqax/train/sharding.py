"""Data parallelism with jax.sharding: one mesh over every device of every process, axis "data".

The batch is split over "data"; parameters and optimizer state are replicated, or split along their
largest divisible axis over "data": the optimizer state alone (shard_opt_state, ZeRO-1 style) or
parameters and optimizer state (shard_params, ZeRO-3/FSDP style: XLA gathers parameters for the compute).
Under jit with these shardings every batch reduction is global: a BatchNorm's mean and variance cover the
whole global batch, not one device's slice, so no axis_name or pmean is needed.
"""
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = devices if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def _leaf_sharding(mesh, leaf, shard_params: bool) -> NamedSharding:
  n = mesh.shape[DATA_AXIS]
  shape = getattr(leaf, "shape", ())
  if not shard_params or n == 1 or not shape:
    return replicated(mesh)
  # Split the largest axis that divides evenly; small or indivisible leaves stay replicated.
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % n == 0 and shape[axis] >= n:
      spec = [None] * len(shape)
      spec[axis] = DATA_AXIS
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def state_shardings(mesh, abstract_state, shard_params: bool = False, shard_opt_state: bool = False):
  """Shardings for a TrainState (or any pytree) of arrays / ShapeDtypeStructs.

  shard_opt_state applies to a TrainState's `opt_state` field; shard_params shards every leaf.
  """
  shardings = jax.tree.map(lambda leaf: _leaf_sharding(mesh, leaf, shard_params), abstract_state)
  if shard_opt_state and not shard_params:
    opt_state = jax.tree.map(lambda leaf: _leaf_sharding(mesh, leaf, True), abstract_state.opt_state)
    shardings = shardings.replace(opt_state=opt_state)
  return shardings


def describe(config) -> str:
  """How the state is laid out, for the start-of-run line."""
  if config.get("shard_params", False):
    return "parameters + optimizer state sharded over data"
  if config.get("shard_opt_state", False):
    return "optimizer state sharded over data, parameters replicated"
  return "parameters + optimizer state replicated"


def global_batch(mesh, local_batch):
  """Host batch of this process -> global jax.Array sharded over "data" (works across hosts)."""
  sharding = batch_sharding(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(put, local_batch)
