"""Data parallelism with jax.sharding: one mesh over every device of every process, axis "data".

The batch is split over "data"; parameters and optimizer state are replicated, or (shard_params)
split along their largest divisible axis over "data" (ZeRO/FSDP style: XLA gathers them for the compute).
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


def state_shardings(mesh, abstract_state, shard_params: bool = False):
  """Shardings for a TrainState (or any pytree) of arrays / ShapeDtypeStructs."""
  return jax.tree.map(lambda leaf: _leaf_sharding(mesh, leaf, shard_params), abstract_state)


def global_batch(mesh, local_batch):
  """Host batch of this process -> global jax.Array sharded over "data" (works across hosts)."""
  sharding = batch_sharding(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(put, local_batch)
