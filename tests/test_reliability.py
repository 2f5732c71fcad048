"""Surviving kills, signals, corrupt checkpoints and non-finite steps without losing work.

The kill test runs the real `vqax train` command on a tiny noise tree and interrupts it several times;
the subprocesses share the tests' persistent compilation cache, so a restart costs its imports and one
trace of the step, not a compile.
"""
import errno
import json
import logging
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, smoke_config, write_noise_tree
from vqax import run
from vqax.errors import CheckpointError
from vqax.tasks.vqvae.task import VQVAETask
from vqax.train import tb_events, trainer, workdir_lock
from vqax.train.task import DataInfo
from vqax.train.checkpointing import CHECKSUMS_FILE, Checkpointer
from vqax.train.metrics_log import MetricsLog, read_metrics

# 8 clips of one machine, batch 4: 2 steps an epoch, 12 steps in 6 epochs. One phase, so every run traces
# one step function (tracing, not compiling, is what a run costs on a loaded CPU); phase changes across a
# resume are covered by test_training.py.
RUN = {"epochs": 6, "phase1_epochs": 0, "phase3_epochs": 0, "checkpoint_every_steps": 3, "keep_checkpoints": 20}
DETERMINISTIC_KEYS = ("loss", "recon_loss", "codebook_loss", "commitment_loss", "grad_norm", "perplexity",
                      "learning_rate")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return write_noise_tree(tmp_path_factory.mktemp("data"), machine_types=("fan",), n_train=8, seconds=2.5)


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
  """An uninterrupted run: its workdir (checkpoints at every save kept) and summary."""
  workdir = tmp_path_factory.mktemp("reference")
  summary = run.train(smoke_config(data_root, **RUN), workdir, progress=False)
  assert summary["final_step"] == 12
  return workdir, summary


def _cli(data_root, workdir):
  overrides = [f"--config.{k}={v}" for k, v in RUN.items()]
  return [sys.executable, "-m", "vqax.cli", "train", "--config", f"{REPO}/configs/vqvae_dcase.py:smoke",
          "--workdir", str(workdir), "--data_root", str(data_root), "--no_progress", *overrides]


def _env():
  cache = os.environ.get("VQAX_TEST_JAX_CACHE", "/tmp/vqax-test-jax-cache")
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _committed_steps(workdir) -> list[int]:
  folder = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def _interrupt(cmd, workdir, *, ready, delay, sig, log_path):
  """Start `cmd`, wait until ready(workdir), sleep `delay` s, send `sig`; -> (returncode, output)."""
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_env())
    try:
      deadline = time.monotonic() + 180
      while proc.poll() is None and not ready(workdir):
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)
      time.sleep(delay)
      if proc.poll() is None:
        proc.send_signal(sig)
      code = proc.wait(timeout=180)
    finally:
      if proc.poll() is None:  # the test failed: leave no training process behind
        proc.kill()
        proc.wait()
  return code, pathlib.Path(log_path).read_text()


def _restore(workdir, step=None):
  checkpointer = Checkpointer(pathlib.Path(workdir) / "checkpoints")
  try:
    return checkpointer.restore(None, step=step)
  finally:
    checkpointer.close()


def _restore_into(workdir, abstract):
  checkpointer = Checkpointer(pathlib.Path(workdir) / "checkpoints")
  try:
    return checkpointer.restore(abstract)
  finally:
    checkpointer.close()


def _assert_same_curve(workdir, reference_workdir):
  got, want = read_metrics(workdir / "metrics.jsonl"), read_metrics(reference_workdir / "metrics.jsonl")
  assert [m["step"] for m in got] == [m["step"] for m in want] == list(range(1, 13))
  for g, w in zip(got, want):
    for key in DETERMINISTIC_KEYS:
      assert g[key] == w[key], f"step {g['step']} {key}: {g[key]!r} != {w[key]!r}"


def _assert_tensorboard_is_one_curve(workdir):
  """Every TensorBoard series holds each logged step exactly once, with metrics.jsonl's values."""
  metrics = read_metrics(workdir / "metrics.jsonl")
  series = tb_events.read_scalars(workdir / "tensorboard")
  assert set(series) >= set(DETERMINISTIC_KEYS)
  for tag, points in series.items():
    assert [s for s, _ in points] == [m["step"] for m in metrics], (tag, points)
  for key in DETERMINISTIC_KEYS:
    np.testing.assert_array_equal([v for _, v in series[key]], np.float32([m[key] for m in metrics]), err_msg=key)


def _lock_holder(workdir) -> dict:
  text = workdir_lock.lock_path(workdir, 0).read_text()
  return json.loads(text) if text else {}


def _assert_finite_checkpoints(workdir):
  for step in _committed_steps(workdir):
    state, _ = _restore(workdir, step)
    for leaf in jax.tree.leaves(state["params"]):
      assert np.all(np.isfinite(leaf)), f"non-finite parameters saved at step {step}"


# --- kill -9 and signals ------------------------------------------------------------------------------

def test_kill_9_and_signals_resume_to_the_identical_curve(data_root, reference, tmp_path):
  """Items 1 and 2: SIGKILL at random moments (before the first checkpoint, mid-step, mid-save), then
  SIGTERM and SIGINT; rerunning the same command each time ends with the uninterrupted run's curve and
  state, bit for bit."""
  workdir = tmp_path / "work"
  cmd = _cli(data_root, workdir)
  rng = random.Random(7)
  # (how, once this run has logged step >= n, then wait s): the first kill may land before the first
  # checkpoint (step 2) or inside its save; the later kill mid-step or mid-save. Triggers count steps, not
  # seconds, so a fast machine cannot finish a run before it is interrupted.
  schedule = [("kill", rng.randint(1, 2), rng.uniform(0, 0.1)), ("SIGTERM", rng.randint(3, 4), 0.0),
              ("kill", rng.randint(5, 7), rng.uniform(0, 0.1)), ("SIGINT", rng.randint(8, 9), 0.0)]
  outcomes = []
  for i, (how, target, delay) in enumerate(schedule):
    logged = [m["step"] for m in read_metrics(workdir / "metrics.jsonl")]
    target = max([target, *[s + 1 for s in logged[-1:]]])  # a line this run writes, not a stale one
    sig = signal.SIGKILL if how == "kill" else getattr(signal, how)
    reached = lambda w, target=target: any(m["step"] >= target for m in read_metrics(w / "metrics.jsonl"))
    code, out = _interrupt(cmd, workdir, ready=reached, delay=delay, sig=sig, log_path=tmp_path / f"run{i}.log")
    if how == "kill":
      assert code == -signal.SIGKILL, out
      outcomes.append("killed")
    else:  # finish the step, save it, say how to resume, exit 0
      assert code == 0 and f"{how} received: saved step " in out, out
      saved = int(out.split(f"{how} received: saved step ")[1].split()[0])
      assert "rerun the same command to resume" in out
      assert saved == _committed_steps(workdir)[-1] == read_metrics(workdir / "metrics.jsonl")[-1]["step"]
      outcomes.append(how)
    # The file stays a clean prefix of one curve: steps 1..n once each, however the run ended.
    steps = [m["step"] for m in read_metrics(workdir / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1)), steps
    # A killed run leaves its entry in the workdir lock (its pid, now dead); the next run is not blocked by it.
    assert bool(_lock_holder(workdir)) == (how == "kill")
  assert outcomes == ["killed", "SIGTERM", "killed", "SIGINT"], outcomes

  final = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)
  assert final.returncode == 0, final.stdout + final.stderr
  assert "trained to step 12/12" in final.stdout
  _assert_same_curve(workdir, reference[0])
  _assert_tensorboard_is_one_curve(workdir)
  got, step = _restore(workdir)
  want, _ = _restore(reference[0])
  assert step == 12
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]  # leftovers cleaned up


def test_metrics_log_drops_lines_past_the_restored_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
  log = MetricsLog(path, resume_step=3)
  log.append({"step": 4, "loss": float("nan")})
  log.close()
  assert [(m["step"], m["loss"]) for m in read_metrics(path)] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, None)]


# --- corrupt checkpoints -------------------------------------------------------------------------------

def _flip_byte(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


def _largest(step_dir):
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE]
  return max(files, key=lambda p: p.stat().st_size)


CORRUPTIONS = {
    "truncated array file": lambda d: _largest(d).write_bytes(_largest(d).read_bytes()[:100]),
    "flipped byte in array data": lambda d: _flip_byte(_largest(d)),
    "missing file": lambda d: _largest(d).unlink(),
    "garbage metadata": lambda d: (d / "state" / "_METADATA").write_text("{not json"),
    "garbage iterator state": lambda d: next((d / "data").glob("process_*.json")).write_text("{"),
    # A step killed after its commit but before its checksum list: orbax's own reading must catch it.
    "truncated, no checksum list": lambda d: ((d / CHECKSUMS_FILE).unlink(),
                                              (d / "state" / "_METADATA").write_text("{")),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_latest_checkpoint_falls_back_with_a_warning(reference, tmp_path, caplog, corruption):
  """Item 3: each kind of damage to the newest step is detected; the previous step is restored and the
  warning names the bad folder."""
  checkpoints = shutil.copytree(reference[0] / "checkpoints", tmp_path / "checkpoints")
  CORRUPTIONS[corruption](checkpoints / "12")
  state, step = _restore(tmp_path)
  assert step == 10
  want, _ = _restore(reference[0], step=10)
  jax.tree.map(np.testing.assert_array_equal, state, want)
  warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
  assert f"checkpoint {checkpoints / '12'} is unreadable" in warning


def test_training_resumes_past_a_corrupt_checkpoint(data_root, reference, tmp_path, caplog):
  """The resumed run restores step 10, moves the bad step 12 aside and writes it again: same curve."""
  workdir = shutil.copytree(reference[0], tmp_path / "work")
  _flip_byte(_largest(workdir / "checkpoints" / "12"))
  summary = run.train(smoke_config(data_root, **RUN), workdir, progress=False)
  assert summary["final_step"] == 12 and [h["step"] for h in summary["history"]] == [11, 12]
  assert (workdir / "checkpoints_unreadable" / "12").is_dir()
  assert f"moved unreadable checkpoint {workdir / 'checkpoints' / '12'}" in caplog.text
  _assert_same_curve(workdir, reference[0])
  got, _ = _restore(workdir)
  want, _ = _restore(reference[0])
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_half_written_step_is_never_the_latest(reference, tmp_path):
  """orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames when complete: a folder left by a kill
  mid-save is not a step, and the next start removes it."""
  checkpoints = shutil.copytree(reference[0] / "checkpoints", tmp_path / "checkpoints")
  partial = checkpoints / "14.orbax-checkpoint-tmp-1234567"
  shutil.copytree(checkpoints / "12", partial)
  (partial / "state" / "_METADATA").write_text("{")
  checkpointer = Checkpointer(checkpoints)
  assert checkpointer.latest_step() == 12
  _, step = checkpointer.restore(None)
  checkpointer.close()
  assert step == 12 and not partial.exists()


def test_checkpoint_of_another_model_config_is_refused(reference, data_root):
  """Restoring into a different model's structure fails with one line, not a fallback to an older step."""
  config = smoke_config(data_root, **RUN)
  config.model.encoder_channels = (8, 16, 24)
  task = VQVAETask(config)
  t = trainer.make_trainer(config, task, DataInfo(2))
  abstract = t.abstract_state()
  with pytest.raises(CheckpointError, match="written by a different model config") as info:
    _restore_into(reference[0], abstract)
  assert "\n" not in str(info.value)


# --- non-finite steps ----------------------------------------------------------------------------------

class _NaNBatchAt(VQVAETask):
  """The VQ-VAE fed one NaN batch (a stand-in for a diverging step); the compiled step is unchanged."""
  nan_batch = 2  # the 3rd batch of a fresh run: step 3

  def prepare_data(self, workdir, batch):
    data = super().prepare_data(workdir, batch)
    data.loader = _PoisonedLoader(data.loader, self.nan_batch)
    return data


class _PoisonedLoader:
  def __init__(self, loader, index):
    self.loader, self.index = loader, index

  def __iter__(self):
    return _PoisonedIterator(iter(self.loader), self.index)


class _PoisonedIterator:
  """Delegates to grain's iterator (so it checkpoints like one) and fills batch `index` with NaN."""

  def __init__(self, inner, index):
    self.inner, self.index, self.count = inner, index, 0

  def __next__(self):
    batch = next(self.inner)
    if self.count == self.index:
      batch = dict(batch, patches=np.full_like(batch["patches"], np.nan))
    self.count += 1
    return batch

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def test_nonfinite_halt_names_the_step_and_keeps_the_last_good_checkpoint(data_root, reference, tmp_path):
  """Item 4, halt: stops at the NaN step (3) before logging or saving it; step 2 stays the newest."""
  config = smoke_config(data_root, **{**RUN, "checkpoint_every_steps": 1}, nonfinite="halt")
  with pytest.raises(trainer.NonFiniteError, match=r"at step 3 .*last good checkpoint \(step 2 in "):
    run.train(config, tmp_path, task=_NaNBatchAt(config), max_steps=5, progress=False)
  assert _committed_steps(tmp_path) == [1, 2]
  assert [m["step"] for m in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
  _assert_finite_checkpoints(tmp_path)


def test_nonfinite_skip_counts_and_carries_on(data_root, reference, tmp_path):
  """Item 4, skip: the NaN step's update is dropped and counted; training goes on with finite parameters."""
  config = smoke_config(data_root, **{**RUN, "checkpoint_every_steps": 1}, nonfinite="skip")
  summary = run.train(config, tmp_path, task=_NaNBatchAt(config), max_steps=4, progress=False)
  assert summary["final_step"] == 4 and summary["nonfinite_steps"] == 1
  history = {h["step"]: h for h in summary["history"]}
  assert history[3]["nonfinite_in_window"] == 1 and "loss" not in history[3] and np.isfinite(history[4]["loss"])
  assert _committed_steps(tmp_path) == [1, 2, 3, 4]
  _assert_finite_checkpoints(tmp_path)


def test_nan_parameters_are_never_saved(data_root, reference, tmp_path, monkeypatch):
  """A NaN that slips past the step's loss/gradient guard is caught before the checkpoint write."""
  run_step = trainer._run_step

  def poisoned(*args, **kwargs):
    state, metrics = run_step(*args, **kwargs)
    return state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params)), metrics

  monkeypatch.setattr(trainer, "_run_step", poisoned)
  config = smoke_config(data_root, **{**RUN, "checkpoint_every_steps": 1})
  with pytest.raises(trainer.NonFiniteError, match="parameters are non-finite at step 1; not saved"):
    run.train(config, tmp_path, max_steps=2, progress=False)
  assert _committed_steps(tmp_path) == []


# --- no code execution from files -----------------------------------------------------------------------

class _Payload:
  """Unpickling this runs code (here: creates a file), as a malicious weights file would."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (pathlib.Path.touch, (self.marker,))


def test_npz_weights_with_pickled_objects_are_refused(tmp_path):
  from vqax.models.redimnet_convert import read_npz
  marker = tmp_path / "ran"
  path = tmp_path / "weights.npz"
  np.savez(path, **{"param/x": np.array([_Payload(marker)], dtype=object)})
  with pytest.raises(CheckpointError, match="cannot be read as an .npz of plain arrays"):
    read_npz(path, model_config={})
  assert not marker.exists()


def test_torch_weights_load_with_weights_only(tmp_path, monkeypatch):
  """torch.load is always called with weights_only=True (its unpickler refuses arbitrary objects)."""
  import types

  from vqax.models import redimnet_convert
  calls = []

  def load(path, **kwargs):
    calls.append(kwargs)
    raise RuntimeError("Weights only load failed: unsupported global os.system")

  monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=load))
  path = tmp_path / "weights.pt"
  path.write_bytes(b"not really torch")
  with pytest.raises(CheckpointError, match="cannot be loaded as a weights-only torch checkpoint"):
    redimnet_convert.read_torch(path)
  assert calls == [{"map_location": "cpu", "weights_only": True}]


def test_config_code_is_run_only_from_the_named_path(tmp_path, capsys, monkeypatch):
  """Workdirs hold config.json, read as data; the default --config is the package's own file, never a
  configs/ folder that happens to sit in the current directory."""
  from vqax import cli
  marker = tmp_path / "ran"
  planted = f"open({str(marker)!r}, 'w').close()\ndef get_config(variant=''): raise SystemExit\n"
  workdir = tmp_path / "work"
  (workdir / "configs").mkdir(parents=True)
  for path in (workdir / "config.py", workdir / "configs" / "vqvae_dcase.py"):
    path.write_text(planted)
  (workdir / "config.json").write_text(json.dumps({"task": "vqvae"}))
  monkeypatch.chdir(workdir)
  assert cli.main(["score", "--workdir", str(workdir)]) == 2
  assert cli.main(["train", "--workdir", str(workdir), "--batch_size", "0"]) == 2
  assert "batch_size=0: expected a positive integer" in capsys.readouterr().err  # the package's config ran
  assert not marker.exists()


# --- TensorBoard after kills -------------------------------------------------------------------------------

def _events_file(folder, name, steps, value=1.0, torn=False):
  """An event file as tensorboardX writes it (file version first, one scalar 'loss' a step)."""
  from tensorboardX.proto import event_pb2, summary_pb2
  folder.mkdir(parents=True, exist_ok=True)
  with open(folder / name, "wb") as f:
    tb_events._write_record(f, event_pb2.Event(wall_time=1.0, file_version="brain.Event:2"))
    for step in steps:
      summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="loss", simple_value=value)])
      tb_events._write_record(f, event_pb2.Event(wall_time=100.0 + step, step=step, summary=summary))
    if torn:
      f.write(b"\x40\x00\x00")  # a record a kill cut short


def test_tensorboard_events_are_rebuilt_to_the_restored_step(tmp_path):
  """Duplicates, steps past the checkpoint, a hole and a torn tail: after the rebuild each step up to the
  restored one appears once, with metrics.jsonl's values and the old wall times."""
  tb = tmp_path / "tensorboard"
  _events_file(tb, "events.out.tfevents.100.host", [1, 2, 3, 4], value=9.0)
  _events_file(tb, "events.out.tfevents.200.host", [3, 5, 6], value=9.0, torn=True)  # 2nd run; step 4 unflushed
  log = MetricsLog(tmp_path / "metrics.jsonl", resume_step=0)
  for step in range(1, 7):
    log.append({"step": step, "loss": step / 10, "phase": "full"})
  log.close()
  assert tb_events.rebuild_from_metrics(tb, tmp_path / "metrics.jsonl", resume_step=5)
  rebuilt = f"events.out.tfevents.101.{os.uname().nodename}.vqax-rebuilt"  # named by its first event's time
  assert [p.name for p in tb_events.event_files(tb)] == [rebuilt]
  assert tb_events.read_scalars(tb) == {"loss": [(s, np.float32(s / 10)) for s in range(1, 6)]}
  events = tb_events.read_events(tb_events.event_files(tb)[0])
  assert [e.wall_time for e in events if e.step] == [101, 102, 103, 104, 105]
  assert not tb_events.rebuild_from_metrics(tb, tmp_path / "metrics.jsonl", resume_step=5)  # clean: left alone


# --- stop signals during start-up ----------------------------------------------------------------------

def _catches(pid: int, sig: signal.Signals) -> bool:
  """Whether process `pid` has a handler for `sig` (its /proc status SigCgt mask)."""
  try:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
  except OSError:
    return False
  mask = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
  return bool(mask >> (sig - 1) & 1)


def test_signals_during_startup_exit_cleanly_and_the_run_resumes(data_root, tmp_path):
  """SIGTERM as soon as `vqax train` can catch it (JAX still importing: it ends at the data scan) and Ctrl-C
  once the model is built (set-up or compiling: it ends at the next check, or after step 1, saved): each
  exits 0 with a message and leaves the workdir unlocked; the same command then trains on."""
  if not pathlib.Path("/proc/self/status").exists():
    pytest.skip("needs /proc to see when the process has its signal handlers")
  workdir = tmp_path / "work"
  cmd = _cli(data_root, workdir)
  rows = [(signal.SIGTERM, lambda proc, log: _catches(proc.pid, signal.SIGTERM), ["during start-up (data scan)"]),
          (signal.SIGINT, lambda proc, log: "[vqax] vqvae:" in log.read_text(),
           ["SIGINT received during start-up (model set-up)", "SIGINT received: saved step 1 "])]
  for i, (sig, ready, messages) in enumerate(rows):
    log_path = tmp_path / f"start{i}.log"
    with open(log_path, "w") as log:
      proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_env())
      try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and not ready(proc, log_path):
          assert time.monotonic() < deadline, "the run never became ready"
          time.sleep(0.005)
        proc.send_signal(sig)
        code = proc.wait(timeout=180)
      finally:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
    out = log_path.read_text()
    assert code == 0 and any(m in out for m in messages), out
    assert "rerun the same command" in out and "Traceback" not in out, out
    assert _lock_holder(workdir) == {}  # released, not merely left to a dead pid
  final = subprocess.run(cmd + ["--max_steps", "2"], capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)
  assert final.returncode == 0 and "trained to step 2/12" in final.stdout, final.stdout + final.stderr


# --- a disk that refuses the checkpoint ------------------------------------------------------------------

def _resumable_copy(reference_workdir, target, step):
  """The reference run's workdir as it stood after saving `step` (later steps and metrics dropped)."""
  workdir = shutil.copytree(reference_workdir, target)
  for later in _committed_steps(workdir):
    if later > step:
      shutil.rmtree(workdir / "checkpoints" / str(later))
  MetricsLog(workdir / "metrics.jsonl", resume_step=step).close()
  return workdir


def test_disk_full_during_a_save_stops_in_one_line_and_keeps_the_previous_checkpoint(data_root, reference,
                                                                                        tmp_path, monkeypatch):
  """ENOSPC injected under orbax (the data iterator's file, written after the arrays): the save fails part
  way; the half-written step is removed, step 3 stays the newest and intact, and the run resumes from it
  to the uninterrupted run's state."""
  import grain
  workdir = _resumable_copy(reference[0], tmp_path / "work", 3)
  config = smoke_config(data_root, **RUN)

  def disk_full(self, directory, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

  with monkeypatch.context() as patch:
    patch.setattr(grain.checkpoint.CheckpointHandler, "save", disk_full)
    with pytest.raises(CheckpointError) as info:
      run.train(config, workdir, progress=False)
  message = str(info.value)
  assert message == (f"could not save checkpoint step 4 in {workdir / 'checkpoints'} (No space left on device); "
                     f"the previous checkpoint (step 3) is intact: free space or make the folder writable, then "
                     f"rerun the same command to resume from it")
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "3"]
  state, step = _restore(workdir)
  want, _ = _restore(reference[0], step=3)
  assert step == 3
  jax.tree.map(np.testing.assert_array_equal, state, want)
  assert _lock_holder(workdir) == {}

  summary = run.train(config, workdir, progress=False)
  assert summary["final_step"] == 12
  _assert_same_curve(workdir, reference[0])
  got, _ = _restore(workdir)
  want, _ = _restore(reference[0])
  jax.tree.map(np.testing.assert_array_equal, got, want)


FULL_DISK_SCRIPT = """
import os, pathlib, sys
from conftest import smoke_config
from vqax.errors import CheckpointError
from vqax import run
mount, data = pathlib.Path(sys.argv[1]), sys.argv[2]
config = smoke_config(data, **{run!r})
run.train(config, mount / "work", max_steps=3, progress=False)
stat = os.statvfs(mount)
(mount / "filler").write_bytes(bytes(stat.f_bavail * stat.f_frsize - 48 * 1024))  # room for logs, not a step
try:
  run.train(config, mount / "work", max_steps=6, progress=False)
except CheckpointError as e:
  print("ERROR", e)
print("STEPS", sorted(os.listdir(mount / "work" / "checkpoints")))
(mount / "filler").unlink()
print("RESUMED", run.train(config, mount / "work", max_steps=4, progress=False)["final_step"])
"""


@pytest.mark.skipif(not os.environ.get("VQAX_SLOW_TESTS"), reason="a real tmpfs in a user namespace; VQAX_SLOW_TESTS=1 "
                    "runs it (the injected-ENOSPC test covers the same code in the default run)")
def test_a_really_full_file_system(data_root, tmp_path):
  """The same on a real 8 MiB tmpfs (mounted in a user namespace; skipped where that is not allowed)."""
  mount = tmp_path / "mnt"
  mount.mkdir()
  script = tmp_path / "full.py"
  script.write_text(FULL_DISK_SCRIPT.format(run=RUN))
  probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mount}"],
                         capture_output=True)
  if probe.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode().strip()}")
  in_namespace = 'mount -t tmpfs -o size=8m tmpfs "$0" && exec "$1" "$2" "$0" "$3"'
  run = subprocess.run(["unshare", "-rm", "sh", "-c", in_namespace, str(mount), sys.executable, str(script),
                        str(data_root)],
                       capture_output=True, text=True, cwd=REPO, env=dict(_env(), PYTHONPATH=f"{REPO}:{REPO / 'tests'}"), timeout=300)
  out = run.stdout
  assert run.returncode == 0, out + run.stderr
  assert (f"ERROR could not save checkpoint step 4 in {mount / 'work' / 'checkpoints'} (No space left on device); "
          f"the previous checkpoint (step 3) is intact") in out, out + run.stderr
  assert "STEPS ['2', '3']" in out and "RESUMED 4" in out, out


# --- caches, locks, and the other readers of audio ------------------------------------------------------

def test_corrupt_feature_cache_entries_are_recomputed_and_said_once(data_root, tmp_path, caplog):
  from vqax.data import dcase
  records = dcase.list_clips(data_root, ["fan"], "train")[:3]
  fresh = [dcase.load_features(r) for r in records]
  cache = tmp_path / "cache"
  for r in records:
    dcase.load_features(r, cache_dir=cache)
  entries = sorted(cache.rglob("*.npy"))
  assert len(entries) == 3
  entries[0].write_bytes(entries[0].read_bytes()[:1000])  # truncated
  entries[1].write_bytes(b"")  # zero bytes
  with caplog.at_level(logging.WARNING):
    for _ in range(2):  # a second epoch reads the repaired entries: nothing more to say
      for r, want in zip(records, fresh):
        np.testing.assert_array_equal(dcase.load_features(r, cache_dir=cache), want)
  notes = [m.getMessage() for m in caplog.records]
  assert len(notes) == 2 and all("recomputing it from the clip" in n for n in notes), notes
  assert f"feature cache entry {entries[0]} is unusable (truncated or corrupt .npy file" in notes[0]
  assert f"feature cache entry {entries[1]} is unusable (empty .npy file (0 bytes))" in notes[1]
  assert sorted(cache.rglob("*.npy")) == entries  # rewritten in place, no temporary files left


def test_a_stale_lock_of_a_dead_run_does_not_block(tmp_path):
  """An entry naming a pid of this host that is gone (a run killed before it could empty it)."""
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  path = workdir_lock.lock_path(tmp_path, 0)
  path.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started_unix": time.time()}))
  lock = workdir_lock.acquire(tmp_path)
  try:
    assert json.loads(path.read_text())["pid"] == os.getpid()
  finally:
    lock.release()
  assert path.read_text() == ""


def test_scoring_and_embedding_refuse_a_truncated_wav(data_root, tmp_path):
  """The readers after training name the file too (the same check as the training scan)."""
  from vqax.data import dcase
  from vqax.errors import DataError
  from vqax.tasks.vqvae.scoring import load_clips
  from vqax.tasks.redimnet_mrl.verification import embed_files
  bad = shutil.copy(data_root / "fan" / "test" / "anomaly_id_00_00000000.wav", tmp_path / "normal_id_00_00000001.wav")
  bad.write_bytes(bad.read_bytes()[:44 + 2 * 30_000])
  record = dcase.ClipRecord(str(bad), "fan", "00", 0, "test")
  with pytest.raises(DataError, match="truncated wav file: the header promises 40000 frames but the file holds 30000"):
    load_clips([record], {"fan": None}, dcase.LogMelConfig())
  with pytest.raises(DataError) as info:
    embed_files(lambda waves: np.zeros((len(waves), 4), np.float32), [bad])
  assert str(info.value).startswith(f"{bad}: truncated wav file")
  flac = tmp_path / "cut.flac"
  sf.write(flac, np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.05, 16000)
  flac.write_bytes(flac.read_bytes()[:flac.stat().st_size // 2])
  with pytest.raises(DataError) as info:
    embed_files(lambda waves: np.zeros((len(waves), 4), np.float32), [flac])
  assert str(info.value) == (f"{flac}: truncated or corrupt FLAC file: the header promises 32000 frames but the last "
                             f"ones cannot be decoded")
