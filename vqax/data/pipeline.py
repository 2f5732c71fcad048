"""grain loaders: host-side, sharded by JAX process, deterministic from a seed, checkpointable.

The dataset never goes to the device: workers read files and build numpy batches; the trainer transfers
one batch per step. `loader.__iter__()` returns an iterator whose state is saved with the checkpoint
(`grain.checkpoint.CheckpointSave`), so a resumed run continues at exactly the next batch.
"""
from typing import Sequence

from absl import flags
import grain
import numpy as np


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
  sampler = grain.samplers.IndexSampler(len(records), shard_options=shard, shuffle=shuffle,
                                        num_epochs=num_epochs, seed=seed)
  ops = list(operations) + [grain.transforms.Batch(batch_size, drop_remainder=drop_remainder,
                                                   batch_fn=stack_batch)]
  return grain.DataLoader(data_source=ListSource(records), sampler=sampler, operations=ops,
                          worker_count=worker_count, read_options=grain.ReadOptions(num_threads=2))


def stack_batch(elements):
  """Stack a list of dict elements into a dict of arrays (strings stay lists)."""
  out = {}
  for key in elements[0]:
    values = [e[key] for e in elements]
    out[key] = np.stack(values) if isinstance(values[0], (np.ndarray, np.generic, int, float)) else values
  return out
