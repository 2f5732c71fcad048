"""Checkpoints with orbax: the train state and the grain iterator, saved together, atomically.

Resume order (the one place it is written down):
  1. build the abstract state (shapes, dtypes, shardings) from the config;
  2. find the newest step whose checkpoint restores completely; a corrupt or truncated one is skipped
     with a warning naming it, and the previous one is used (training moves the bad folder aside to
     `checkpoints_unreadable/`, so it can write that step again);
  3. restore the state into the abstract structure (orbax reshards it onto the current mesh, so any
     device count works) and the data iterator to its saved position;
  4. continue at state.step: the next batch, RNG and schedule value are those an uninterrupted run uses.
orbax writes each step into a temporary folder and renames it when complete, so a run killed mid-save
never leaves a half-written "latest" (leftover temporary folders are removed at the next start). orbax
does not notice flipped bytes in array data, so after each save a checksum list
(`<step>/vqax_checksums.json`) is written and checked before that step is restored; a step killed between
its commit and its list has none and is trusted as orbax committed it.
With several processes every one calls save/restore: each writes its shards of the state and its own
iterator file (`data/process_<i>-of-<n>.json`); process 0 commits. A checkpoint from a different process
count has no file for this process: the iterator then continues after the furthest position any process
had read (exact with the loaders of vqax/data/pipeline.py).
"""
import hashlib
import json
import logging
import os
import pathlib

import grain
import jax
import orbax.checkpoint as ocp

from vqax.errors import CheckpointError
from vqax.train import save_errors
from vqax.train.step import path_names

log = logging.getLogger(__name__)

CHECKSUMS_FILE = "vqax_checksums.json"


class Checkpointer:
  """Save/restore {state, data iterator} under `<workdir>/checkpoints/<step>/`."""

  def __init__(self, directory, *, max_to_keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state, data_iterator=None) -> None:
    """Write `step`; CheckpointError (one line) when the disk refuses (full, read-only, quota), after
    removing the half-written step. The steps saved before it are untouched and resume as they are."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    with save_errors.held_logs() as held:
      try:
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()
        reason = None
      except Exception as e:
        reason = save_errors.write_failure(e)
        if reason is None:
          raise
        held.drop = True
    if reason is not None:
      save_errors.remove_partial_step(self.directory, step)
      raise CheckpointError(f"could not save checkpoint step {step} in {self.directory} ({reason}); "
                            f"{save_errors.kept_message(self.directory)}") from None
    if jax.process_index() == 0:  # after the commit every process's files are in place
      try:
        write_checksums(self.directory / str(step))
      except OSError as e:
        raise CheckpointError(f"checkpoint step {step} in {self.directory} was saved, but not its checksum list "
                              f"({e.strerror}); free space or make the folder writable, then rerun the same "
                              f"command to resume from it") from None

  def restore(self, abstract_state, data_iterator=None, step: int | None = None, *,
              set_aside_unreadable: bool = False):
    """Restore the newest complete checkpoint (or `step`); returns (state, step) or (None, None).

    set_aside_unreadable (training): move unreadable newer steps to `checkpoints_unreadable/`, so the
    resumed run can save those steps again and orbax's clean-up never keeps them over good ones.
    """
    steps = [step] if step is not None else list(reversed(self.all_steps()))
    unreadable = []
    for candidate in steps:
      step_dir = self.directory / str(candidate)
      problem = verify_checksums(step_dir)
      if problem is None and abstract_state is not None:
        problem = check_structure(step_dir, abstract_state)  # raises for another model config
      data_dir = step_dir / "data"
      same_layout = (data_dir / _data_file_name()).exists()
      if problem is None:
        # abstract_state=None restores the saved structure as is (e.g. to read params for evaluation).
        target = abstract_state
        if target is None:
          target, problem = _saved_on_one_device(step_dir)
      if problem is None:
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iterator is not None and same_layout:
          items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
          restored = self._manager.restore(candidate, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax raises many types for truncated/corrupt files
          problem = _first_line(e)
      if problem:
        log.warning("checkpoint %s is unreadable (%s); trying the previous one", step_dir, problem)
        if step is not None:
          raise CheckpointError(f"checkpoint {step_dir} is unreadable ({problem})")
        unreadable.append(candidate)
        continue
      if set_aside_unreadable:
        self._set_aside(unreadable)
      if data_iterator is not None and not same_layout:
        continue_after_saved_position(data_iterator, data_dir)
      return restored["state"], candidate
    if set_aside_unreadable:
      self._set_aside(unreadable)
    return None, None

  def _set_aside(self, steps) -> None:
    if not steps:
      return
    if jax.process_index() == 0:
      aside = self.directory.with_name(self.directory.name + "_unreadable")
      aside.mkdir(exist_ok=True)
      for bad in steps:
        target = aside / str(bad)
        n = 1
        while target.exists():
          target, n = aside / f"{bad}.{n}", n + 1
        os.replace(self.directory / str(bad), target)
        log.warning("moved unreadable checkpoint %s to %s", self.directory / str(bad), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("vqax unreadable checkpoints set aside")
    self._manager.reload()

  def close(self):
    self._manager.close()


def _data_file_name() -> str:
  """grain's per-process iterator file name (grain.checkpoint.CheckpointHandler)."""
  return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


def continue_after_saved_position(data_iterator, data_dir) -> None:
  """Point a fresh grain DataLoader iterator just past every position the saving processes had read.

  Used when the checkpoint was written by a different number of processes. grain records, per worker, the
  last global position it read; `set_state` maps one onto this process's shard of positions.
  """
  saved = [json.loads(f.read_text()) for f in sorted(pathlib.Path(data_dir).glob("process_*-of-*.json"))]
  if not saved:
    log.warning("checkpoint %s holds no data iterator; the data starts from the beginning", data_dir.parent)
    return
  state = json.loads(data_iterator.get_state())
  for key in ("sampler", "data_source"):
    if saved[0][key] != state[key]:
      raise CheckpointError(f"checkpoint {data_dir.parent} was written with different data ({key}: "
                            f"{saved[0][key]} vs now {state[key]}); use the original data or a new --workdir")
  last = max(max(s["last_seen_indices"].values()) for s in saved)
  state["last_seen_indices"] = {worker: last for worker in state["last_seen_indices"]}
  state["last_worker_index"] = -1  # the next batch comes from worker 0
  data_iterator.set_state(json.dumps(state).encode())
  log.info("data iterator of %d process(es) continued in %d at global position %d", len(saved),
           jax.process_count(), last + 1)


def write_checksums(step_dir) -> None:
  """Size and sha256 of every file of a committed step, written atomically beside them."""
  step_dir = pathlib.Path(step_dir)
  sums = {}
  for path in sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE):
    with open(path, "rb") as f:
      sums[str(path.relative_to(step_dir))] = {"size": path.stat().st_size,
                                               "sha256": hashlib.file_digest(f, "sha256").hexdigest()}
  tmp = step_dir / (CHECKSUMS_FILE + ".tmp")
  tmp.write_text(json.dumps(sums, indent=1))
  os.replace(tmp, step_dir / CHECKSUMS_FILE)


def verify_checksums(step_dir) -> str | None:
  """None when the step's files match its checksum list (or it has none); else what is wrong."""
  listing = pathlib.Path(step_dir) / CHECKSUMS_FILE
  if not listing.is_file():
    return None
  try:
    sums = json.loads(listing.read_text())
  except (OSError, ValueError):
    return f"{CHECKSUMS_FILE} is unreadable"
  for name, expected in sums.items():
    path = pathlib.Path(step_dir) / name
    if not path.is_file():
      return f"{name} is missing"
    if path.stat().st_size != expected["size"]:
      return f"{name} is truncated or grown: {path.stat().st_size} bytes, expected {expected['size']}"
    with open(path, "rb") as f:
      if hashlib.file_digest(f, "sha256").hexdigest() != expected["sha256"]:
        return f"{name} is corrupt (checksum differs)"
  return None


def check_structure(step_dir, abstract_state) -> str | None:
  """None when the saved state has `abstract_state`'s leaves (names and shapes); a problem string when its
  metadata cannot be read. Raises CheckpointError when it holds another structure: another model config,
  which no older step can fix (falling back would silently start over)."""
  handler = ocp.StandardCheckpointHandler()
  try:
    saved = handler.metadata(pathlib.Path(step_dir) / "state")
  except Exception as e:  # missing or corrupt metadata: an unreadable step
    return f"state metadata: {_first_line(e)}"
  finally:
    handler.close()
  saved = {path_names(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(saved)}
  wanted = {path_names(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
  for name in sorted(saved.keys() | wanted.keys()):
    if saved.get(name) != wanted.get(name):
      raise CheckpointError(
          f"checkpoint {step_dir} was written by a different model config ({'/'.join(map(str, name))}: saved "
          f"{saved.get(name, 'nothing')}, this config {wanted.get(name, 'nothing')}); use a new --workdir or "
          f"the original config")
  return None


def _saved_on_one_device(step_dir):
  """(target, None): the saved structure on this process's first device, restorable whatever mesh or
  process count wrote it (orbax refuses a target-less restore across topologies); (None, problem)."""
  handler = ocp.StandardCheckpointHandler()
  try:
    saved = handler.metadata(pathlib.Path(step_dir) / "state").tree
  except Exception as e:  # missing or corrupt metadata: an unreadable step
    return None, f"state metadata: {_first_line(e)}"
  finally:
    handler.close()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), saved), None


def _first_line(error: Exception) -> str:
  return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


def abstract_like(tree, shardings=None):
  """ShapeDtypeStruct tree (with shardings) to restore into."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_trained(workdir, task: str, purpose: str):
  """(config, saved state dict, step) of the newest checkpoint of a training folder, for evaluation.

  CheckpointError (one line) when the folder is not a vqax run of `task`, or holds no checkpoint yet.
  """
  from vqax import config_loading
  workdir = pathlib.Path(workdir)
  config_path = workdir / "config.json"
  if not config_path.is_file():
    raise CheckpointError(f"--workdir {workdir}: no config.json (is this a vqax training folder?)")
  config = config_loading.config_from_json(config_path.read_text())
  if config.get("task") != task:
    raise CheckpointError(f"--workdir {workdir}: trained task {config.get('task')!r}, not {task!r}")
  checkpointer = Checkpointer(workdir / "checkpoints")
  try:
    state, step = checkpointer.restore(None)
  finally:
    checkpointer.close()
  if state is None:
    raise CheckpointError(f"--workdir {workdir}: no checkpoint to {purpose} (train first)")
  return config, state, step
