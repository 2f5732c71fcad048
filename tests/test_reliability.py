"""Surviving kills, signals, corrupt checkpoints and non-finite steps without losing work.

The kill test runs the real `vqax train` command on a tiny noise tree and interrupts it several times;
the subprocesses share the tests' persistent compilation cache, so a restart costs its imports and one
trace of the step, not a compile.
"""
import json
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

from conftest import REPO, smoke_config, write_noise_tree
from vqax import run
from vqax.errors import CheckpointError
from vqax.tasks.vqvae.task import VQVAETask
from vqax.train import trainer
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
  assert outcomes == ["killed", "SIGTERM", "killed", "SIGINT"], outcomes

  final = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)
  assert final.returncode == 0, final.stdout + final.stderr
  assert "trained to step 12/12" in final.stdout
  _assert_same_curve(workdir, reference[0])
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
