"""grain loaders: host-side, sharded by JAX process, deterministic from a seed, checkpointable.

The dataset never goes to the device: workers read files and build numpy batches; the trainer transfers
one batch per step. `loader.__iter__()` returns an iterator whose state is saved with the checkpoint
(`grain.checkpoint.CheckpointSave`), so a resumed run continues at exactly the next batch.

Sharding by process: one global shuffle, dealt out in global batches. With P processes of per-process
batch L (global batch B = P * L), global batch k is shuffled positions [kB, (k+1)B) and process p reads
(only) its rows [kB + pL, kB + (p+1)L), which `jax.make_array_from_process_local_data` places at rows
[pL, (p+1)L) of the global array. Each record's random draws are seeded by its global position. So the
global batches, row order included, are the same on any number of hosts (order-sensitive steps such as
sampling rows for dead-code revival stay exact), and a checkpoint resumes on another process count at
the same global position. grain's own IndexSampler sharding shuffles per-process slices instead, which
depends on P. This holds with worker_count = 0 (more workers take batches round robin) and while no
Filter drops a record (a dropped record shifts the ones after it).
"""
import sys
from typing import Sequence

from absl import flags
import grain
import numpy as np


class ProcessBlockSampler:
  """grain sampler: global shuffle; process p's i-th record is row p*L + i % L of global batch i // L.

  The DataLoader asks for position i * P + p (its shard of positions); this maps it onto the global
  position of that row. The map permutes positions within each block of B, so every record is still
  read once per epoch, and grain's saved positions mean the same on any process count.
  """

  def __init__(self, inner: grain.samplers.IndexSampler, *, per_process_batch: int, process_count: int):
    self._inner = inner
    self._per_process = per_process_batch
    self._processes = process_count
    block = per_process_batch * process_count
    self._length = len(inner) if len(inner) == sys.maxsize else len(inner) // block * block

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int):
    if index >= self._length:
      raise IndexError(index)
    local, process = divmod(index, self._processes)
    batch, row = divmod(local, self._per_process)
    return self._inner[(batch * self._processes + process) * self._per_process + row]

  def __repr__(self) -> str:  # grain validates restored iterators by repr: keep it free of P and L
    return f"ProcessBlockSampler({self._inner!r})"


class ListSource:
  """A random-access grain source over an in-memory list of (picklable) records."""

  def __init__(self, records: Sequence):
    self._records = list(records)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int):
    return self._records[index]

  def __repr__(self) -> str:  # grain logs the source; keep it short
    return f"ListSource({len(self._records)} records)"


def make_loader(records: Sequence, operations: Sequence, *, batch_size: int, seed: int, shuffle: bool = True,
                num_epochs: int | None = None, worker_count: int = 0, drop_remainder: bool = True,
                shard_by_process: bool = True) -> grain.DataLoader:
  """A grain DataLoader over `records` applying `operations`, then batching `batch_size` per process.

  num_epochs=None repeats forever (training counts steps); shuffling reshuffles every epoch.
  """
  if worker_count > 0 and not flags.FLAGS.is_parsed():
    # grain's worker processes read absl flags; outside an absl app nobody parsed them.
    flags.FLAGS.mark_as_parsed()
  if shard_by_process:
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  else:
    shard = grain.sharding.NoSharding()
  sampler = ProcessBlockSampler(
      grain.samplers.IndexSampler(len(records), shard_options=grain.sharding.NoSharding(), shuffle=shuffle,
                                  num_epochs=num_epochs, seed=seed),
      per_process_batch=batch_size, process_count=shard.shard_count)
  ops = list(operations) + [grain.transforms.Batch(batch_size, drop_remainder=drop_remainder,
                                                   batch_fn=stack_batch)]
  return grain.DataLoader(data_source=ListSource(records), sampler=sampler, operations=ops, shard_options=shard,
                          worker_count=worker_count, read_options=grain.ReadOptions(num_threads=2))


def stack_batch(elements):
  """Stack a list of dict elements into a dict of arrays (strings stay lists)."""
  out = {}
  for key in elements[0]:
    values = [e[key] for e in elements]
    out[key] = np.stack(values) if isinstance(values[0], (np.ndarray, np.generic, int, float)) else values
  return out
