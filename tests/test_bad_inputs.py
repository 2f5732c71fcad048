"""The bad-input catalogue: every case ends in one line naming the file or option and what was expected.

Each row builds a small data tree with one defect and runs `vqax train` (in-process, the real command
line). Building the trainer (model init, compiling) is patched to fail, so a row also proves its error
comes before any long work starts.
"""
import logging
import os
import socket

import numpy as np
import pytest
import soundfile as sf

from conftest import batch_sizes, REPO, smoke_config
from vqax import cli, config_loading
from vqax.train import trainer, workdir_lock

VQVAE = f"{REPO}/configs/vqvae_dcase.py:smoke"
SPEAKERS = f"{REPO}/configs/redimnet_mrl.py:smoke"
CLIP = "normal_id_00_{:08d}"


class LongWorkStarted(Exception):
  """Raised in place of building the trainer: the input was accepted."""


HELD_LOCKS = []  # locks a row takes to stand for a running run, released after it


@pytest.fixture(autouse=True)
def no_long_work(monkeypatch):
  def refuse(*args, **kwargs):
    raise LongWorkStarted
  monkeypatch.setattr(trainer, "make_trainer", refuse)
  yield
  while HELD_LOCKS:
    HELD_LOCKS.pop().release()


def write_wav(path, seconds=2.5, rate=16000, channels=1, seed=0):
  path.parent.mkdir(parents=True, exist_ok=True)
  wave = (np.random.default_rng(seed).standard_normal((int(seconds * rate), channels)) * 0.05).astype(np.float32)
  sf.write(path, wave if channels > 1 else wave[:, 0], rate, subtype="PCM_16")
  return path


def machine_tree(root, n_good=4):
  """<root>/fan/{train,test}/ with `n_good` good training clips."""
  for i in range(n_good):
    write_wav(root / "fan" / "train" / f"{CLIP.format(i)}.wav", seed=i)
  write_wav(root / "fan" / "test" / f"{CLIP.format(0)}.wav", seed=99)
  return root


def bad_clip(root, suffix=".wav"):
  """Path of one more training clip, next to good ones."""
  machine_tree(root)
  return root / "fan" / "train" / f"{CLIP.format(50)}{suffix}"


def train(capsys, data, workdir, *extra):
  code = cli.main(["train", "--config", VQVAE, "--workdir", str(workdir), "--data_root", str(data), *extra])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


# Each case: tmp -> (extra command-line arguments, expected message). The message names the file or option.
def missing_data_root(tmp):
  return ["--data_root", str(tmp / "nowhere")], f"data_root {tmp / 'nowhere'}: folder not found"


def empty_machine_folder(tmp):
  (tmp / "data" / "fan" / "train").mkdir(parents=True)
  write_wav(tmp / "data" / "fan" / "test" / f"{CLIP.format(0)}.wav")
  return [], f"{tmp / 'data' / 'fan' / 'train'}: no clips named like normal_id_00_00000000.wav"


def unknown_machine_type(tmp):
  machine_tree(tmp / "data")
  return ["--machine_type", "valve"], f"machine_type 'valve' not found under {tmp / 'data'}; available: fan"


def not_audio(tmp):
  path = bad_clip(tmp / "data")
  path.write_text("this is not audio")
  return [], f"{path}: not a readable audio file"


def empty_wav(tmp):
  path = bad_clip(tmp / "data")
  sf.write(path, np.zeros(0, np.float32), 16000, subtype="PCM_16")
  return [], f"{path}: empty audio file (0 samples)"


def wrong_sample_rate(tmp):
  path = write_wav(bad_clip(tmp / "data"), rate=8000)
  return [], f"{path}: expected sample rate 16000 Hz, got 8000 Hz (set resample=True to convert)"


def stereo_rejected(tmp):
  path = write_wav(bad_clip(tmp / "data"), channels=2)
  return ["--config.stereo=reject"], f"{path}: expected mono audio, got 2 channels (stereo=downmix averages them)"


def shorter_than_a_patch(tmp):
  path = write_wav(bad_clip(tmp / "data"), seconds=0.5)
  return [], f"{path}: 8000 samples, need at least 32256"


def nan_in_npy(tmp):
  path = bad_clip(tmp / "data", ".npy")
  features = np.zeros((64, 100), np.float32)
  features[3, 4] = np.inf
  np.save(path, features)
  return [], f"{path}: contains NaN or Inf values"


def npy_of_wrong_shape(tmp):
  path = bad_clip(tmp / "data", ".npy")
  np.save(path, np.zeros((32, 100), np.float32))
  return [], f"{path}: expected a log-mel array of shape [64, T], got [32, 100]"


def unwritable_workdir(tmp):
  machine_tree(tmp / "data")
  (tmp / "work").write_text("a file, not a folder")
  return ["--workdir", str(tmp / "work" / "run")], f"--workdir {tmp / 'work' / 'run'}: not writable"


def option(*args):
  def case(tmp):
    machine_tree(tmp / "data")
    return list(args[:-1]), args[-1]
  case.__name__ = args[0]
  return case


def checkpoint_of_another_model(tmp):
  machine_tree(tmp / "data")
  other = smoke_config(tmp / "data")
  other.model.encoder_channels = (8, 16, 24)
  (tmp / "work" / "checkpoints" / "4").mkdir(parents=True)
  (tmp / "work" / "config.json").write_text(config_loading.config_to_json(other))
  return [], (f"--workdir {tmp / 'work'} holds checkpoints of a different 'model' config; use a new --workdir "
              f"or the original settings")


def empty_speaker_folder(tmp):
  write_wav(tmp / "data" / "id00001" / "video1" / "00001.wav")
  (tmp / "data" / "id00002" / "video1").mkdir(parents=True)
  return ["--config", SPEAKERS], f"{tmp / 'data' / 'id00002'}: speaker folder holds no audio files"


def speaker_tree(root, n_speakers=2, n_utts=4):
  """<root>/<speaker>/<video>/<utt>.wav: enough good utterances for one smoke batch (8)."""
  for s in range(n_speakers):
    for u in range(n_utts):
      write_wav(root / f"id{s:05d}" / "video1" / f"{u:05d}.wav", seconds=1.2, seed=10 * s + u)
  return root


def bad_utterance(root):
  """Path of one more utterance of the first speaker, next to good ones."""
  speaker_tree(root)
  return root / "id00000" / "video1" / "00099.wav"


def speaker_not_audio(tmp):
  path = bad_utterance(tmp / "data")
  path.write_text("this is not audio")
  return ["--config", SPEAKERS], f"{path}: not a readable audio file"


def speaker_empty_wav(tmp):
  path = bad_utterance(tmp / "data")
  sf.write(path, np.zeros(0, np.float32), 16000, subtype="PCM_16")
  return ["--config", SPEAKERS], f"{path}: empty audio file (0 samples)"


def speaker_wrong_sample_rate(tmp):
  path = write_wav(bad_utterance(tmp / "data"), rate=8000)
  return (["--config", SPEAKERS, "--config.resample=false"],
          f"{path}: expected sample rate 16000 Hz, got 8000 Hz (set resample=True to convert)")


def truncate(path, keep_bytes):
  path.write_bytes(path.read_bytes()[:keep_bytes])
  return path


def truncated_wav(tmp):
  """A 160,000-frame header over 50,000 frames of data: libsndfile alone reads it as a 3.1 s clip."""
  path = truncate(write_wav(bad_clip(tmp / "data"), seconds=10), 44 + 2 * 50_000)
  return [], f"{path}: truncated wav file: the header promises 160000 frames but the file holds 50000 frames"


def folder_named_like_a_clip(tmp):
  path = bad_clip(tmp / "data")
  path.mkdir()
  return [], f"{path}: is a folder, not a file (expected an audio file)"


def write_npy_clip(tmp):
  path = bad_clip(tmp / "data", ".npy")
  np.save(path, np.zeros((64, 100), np.float32))
  return path  # 128-byte header + 25,600 bytes of data


def truncated_npy(tmp):
  path = truncate(write_npy_clip(tmp), 20_000)
  return [], (f"{path}: truncated or corrupt .npy file: its header promises a float32 array of shape [64, 100] "
              f"(25728 bytes), the file has 20000 bytes")


def npy_with_trailing_bytes(tmp):
  path = write_npy_clip(tmp)
  path.write_bytes(path.read_bytes() + b"\0" * 7)
  return [], f"{path}: truncated or corrupt .npy file: its header promises a float32 array of shape [64, 100]"


def zero_byte_npy(tmp):
  path = truncate(write_npy_clip(tmp), 0)
  return [], f"{path}: empty .npy file (0 bytes)"


def speaker_truncated_wav(tmp):
  path = truncate(write_wav(bad_utterance(tmp / "data"), seconds=2), 44 + 2 * 10_000)
  return (["--config", SPEAKERS],
          f"{path}: truncated wav file: the header promises 32000 frames but the file holds 10000 frames")


def speaker_truncated_flac(tmp):
  path = write_wav(bad_utterance(tmp / "data").with_suffix(".flac"), seconds=2)
  truncate(path, path.stat().st_size // 2)
  return ["--config", SPEAKERS], (f"{path}: truncated or corrupt FLAC file: the header promises 32000 frames but the "
                                  f"last ones cannot be decoded")


def speaker_nan_samples(tmp):
  """NaN only shows when decoded: found by the up-front pass (float files are read through), not mid-run."""
  path = bad_utterance(tmp / "data")
  wave = np.zeros(16000, np.float32)
  wave[12345] = np.nan
  sf.write(path, wave, 16000, subtype="FLOAT")
  return ["--config", SPEAKERS], f"{path}: audio contains NaN or Inf samples"


def speaker_folder_named_like_a_clip(tmp):
  path = bad_utterance(tmp / "data")
  path.mkdir()
  (path / "x.txt").write_text("")  # not a video folder: it holds no audio
  return ["--config", SPEAKERS], f"{path}: is a folder, not a file (expected an audio file)"


def config_file(body):
  """A row whose --config file's get_config() misbehaves as `body` says."""
  def case(tmp):
    machine_tree(tmp / "data")
    path = tmp / "my_config.py"
    path.write_text("import sys\n" + body + "\n")
    return ["--config", str(path)], path
  return case


def config_raises_key_error(tmp):
  extra, path = config_file("def get_config():\n  return {}['batch']")(tmp)
  return extra, f"--config {path}: get_config() failed (KeyError: 'batch')"


def config_returns_none(tmp):
  extra, path = config_file("def get_config():\n  pass")(tmp)
  return extra, f"--config {path}: get_config() returned NoneType, expected an ml_collections.ConfigDict"


def config_returns_a_dict(tmp):
  extra, path = config_file("def get_config():\n  return {'task': 'vqvae'}")(tmp)
  return extra, f"--config {path}: get_config() returned dict, expected an ml_collections.ConfigDict"


def config_calls_sys_exit(tmp):
  extra, path = config_file("def get_config():\n  sys.exit(3)")(tmp)
  return extra, f"--config {path}: get_config() failed (it called sys.exit(3))"


def config_exits_on_import(tmp):
  extra, path = config_file("sys.exit()")(tmp)
  return extra, f"--config {path}: failed to load (it called sys.exit(None))"


def config_variant_raises_type_error(tmp):
  extra, path = config_file("def get_config():\n  return None")(tmp)
  return [f"{extra[0]}", f"{extra[1]}:smoke"], f"--config {path}: get_config('smoke') failed (TypeError: "


def workdir_in_use(tmp):
  """A second `vqax train` on a workdir a live run holds (here: this process, through another descriptor)."""
  machine_tree(tmp / "data")
  (tmp / "work").mkdir()
  HELD_LOCKS.append(workdir_lock.acquire(tmp / "work"))
  return [], (f"--workdir {tmp / 'work'} is in use by another vqax train (pid {os.getpid()} on host "
              f"{socket.gethostname()}, started ")


def workdir_in_use_by_another_host(tmp):
  """Two hosts started with the same process index: the other's flock may not reach here, its entry does."""
  machine_tree(tmp / "data")
  (tmp / "work").mkdir()
  workdir_lock.lock_path(tmp / "work", 0).write_text(
      '{"pid": 4242, "host": "node-7", "started": "2026-12-04T10:00:00+00:00", "started_unix": 0}')
  return [], (f"--workdir {tmp / 'work'} is in use by another vqax train (pid 4242 on host node-7, started "
              f"2026-12-04T10:00:00+00:00; it refreshed its lock 0 s ago)")


def unknown_model_size(tmp):
  write_wav(tmp / "data" / "id00001" / "00001.wav")
  return ["--config", SPEAKERS, "--config.model.size=b9"], "model.size='b9': expected one of b0"


CASES = [
    missing_data_root, empty_machine_folder, unknown_machine_type, not_audio, empty_wav, wrong_sample_rate,
    stereo_rejected, shorter_than_a_patch, nan_in_npy, npy_of_wrong_shape, unwritable_workdir,
    option("--batch_size", "0", "batch_size=0: expected a positive integer"),
    option("--n_patches", "-1", "n_patches=-1: expected a positive integer"),
    option("--stride", "100000", "stride=100000 frames exceeds the shortest training clip (79 frames)"),
    option("--config.remat_policy=sometimes", "remat_policy='sometimes': expected one of"),
    option("--config.stereo=mix", "stereo='mix': expected downmix or reject"),
    option("--config.nonfinite=maybe", "nonfinite='maybe': expected skip or halt"),
    checkpoint_of_another_model, empty_speaker_folder, speaker_not_audio, speaker_empty_wav,
    speaker_wrong_sample_rate, unknown_model_size,
    truncated_wav, folder_named_like_a_clip, truncated_npy, npy_with_trailing_bytes, zero_byte_npy,
    speaker_truncated_wav, speaker_truncated_flac, speaker_nan_samples, speaker_folder_named_like_a_clip,
    config_raises_key_error, config_returns_none, config_returns_a_dict, config_calls_sys_exit,
    config_exits_on_import, config_variant_raises_type_error, workdir_in_use, workdir_in_use_by_another_host,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_gives_one_line_before_long_work(case, tmp_path, capsys):
  extra, message = case(tmp_path)
  # A row's own --config, --workdir or --data_root comes later on the command line, and the last one wins.
  code, _, err = train(capsys, tmp_path / "data", tmp_path / "work", *extra)
  assert code == 2, err
  assert err.startswith("vqax: error: ") and message in err, err
  assert err.count("\n") == 1 and "Traceback" not in err


# --- inputs that are accepted where the config says so ------------------------------------------------

def test_other_sample_rates_are_resampled_with_resample_true(tmp_path, capsys):
  write_wav(bad_clip(tmp_path / "data"), rate=22050)
  with pytest.raises(LongWorkStarted):
    train(capsys, tmp_path / "data", tmp_path / "work", "--config.resample=true")


def test_stereo_is_downmixed_with_one_note_per_file(tmp_path, capsys, caplog):
  from vqax.data import dcase
  path = write_wav(bad_clip(tmp_path / "data"), channels=2)
  with caplog.at_level(logging.WARNING), pytest.raises(LongWorkStarted):
    train(capsys, tmp_path / "data", tmp_path / "work")
  record = next(r for r in dcase.list_clips(tmp_path / "data", ["fan"], "train") if r.path == str(path))
  dcase.load_features(record)  # a loader reading it again (next epoch) adds no second note
  notes = [r.getMessage() for r in caplog.records if "channels to mono" in r.getMessage()]
  assert notes == [f"{path}: averaged 2 channels to mono"]


def test_skip_bad_files_logs_each_once_and_the_summary_counts_them(tmp_path, capsys, caplog, monkeypatch):
  monkeypatch.undo()  # this one trains (one step)
  data = tmp_path / "data"
  machine_tree(data, n_good=8)  # the run of test_reliability.py: its compiled step is cached
  not_audio = data / "fan" / "train" / f"{CLIP.format(50)}.wav"
  not_audio.write_text("not audio")
  short = write_wav(data / "fan" / "train" / f"{CLIP.format(51)}.wav", seconds=0.5)
  with caplog.at_level(logging.WARNING):
    code, out, err = train(capsys, data, tmp_path / "work", "--skip_bad_files", "--max_steps", "1",
                           "--no_progress", "--epochs", "6", "--config.phase1_epochs=0", "--config.phase3_epochs=0")
  assert code == 0, err
  assert "skipped 2 bad files" in out
  skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping bad file")]
  assert len(skipped) == 2 and str(not_audio) in skipped[0] and str(short) in skipped[1]


def test_speaker_bad_files_are_skipped_and_counted_before_the_loader(tmp_path, caplog):
  from vqax.data import speakers
  from vqax.errors import DataError
  from vqax.tasks.redimnet_mrl.task import ReDimNetMRLTask
  data = speaker_tree(tmp_path / "data")
  not_audio = data / "id00000" / "video1" / "00097.wav"
  not_audio.write_text("not audio")
  empty = data / "id00001" / "00098.wav"
  sf.write(empty, np.zeros(0, np.float32), 16000, subtype="PCM_16")
  slow = write_wav(data / "id00001" / "00099.flac", rate=8000)
  short = write_wav(data / "id00001" / "video1" / "00100.wav", seconds=0.2)  # < min_seconds: left out, not bad
  config = config_loading.load_config(SPEAKERS)
  config.data_root, config.min_seconds, config.skip_bad_files = str(data), 0.5, True
  with caplog.at_level(logging.WARNING):
    train_data = ReDimNetMRLTask(config).prepare_data(tmp_path, batch_sizes(config))
  summary = train_data.summary
  assert summary["utterances"] == 8 and summary["short_files"] == 1 and len(summary["bad_files"]) == 3
  for path, expected in ((not_audio, "not a readable audio file"), (slow, "expected sample rate 16000 Hz"),
                         (empty, "empty audio file (0 samples)")):
    assert any(m.startswith(f"{path}: {expected}") for m in summary["bad_files"]), summary["bad_files"]
  skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping bad file")]
  assert len(skipped) == 3 and str(short) not in "".join(skipped)
  assert train_data.info.steps_per_epoch == 1  # 8 usable utterances, one batch of 8
  assert next(iter(train_data.loader))["wave"].shape == (8, speakers.SAMPLE_RATE)

  # Without skip_bad_files the first bad file (in listing order) stops it, in one line.
  config.skip_bad_files = False
  with pytest.raises(DataError) as info:
    ReDimNetMRLTask(config).prepare_data(tmp_path, batch_sizes(config))
  assert str(info.value).startswith(f"{not_audio}: not a readable audio file") and "\n" not in str(info.value)


def test_speaker_folder_without_usable_utterances(tmp_path):
  from vqax.errors import DataError
  from vqax.tasks.redimnet_mrl.task import ReDimNetMRLTask
  (tmp_path / "data" / "id00000").mkdir(parents=True)
  (tmp_path / "data" / "id00000" / "00001.wav").write_text("not audio")
  write_wav(tmp_path / "data" / "id00001" / "00001.wav", rate=22050)
  config = config_loading.load_config(SPEAKERS)
  config.data_root, config.skip_bad_files = str(tmp_path / "data"), True
  with pytest.raises(DataError) as info:
    ReDimNetMRLTask(config).prepare_data(tmp_path, batch_sizes(config))
  assert str(info.value) == (f"data_root {tmp_path / 'data'}: no usable utterances (2 bad files skipped, 0 "
                             f"shorter than min_seconds=0.0)")


# --- speaker verification trials -------------------------------------------------------------------------

def test_trials_file_with_a_malformed_line(tmp_path):
  verification = pytest.importorskip("vqax.tasks.redimnet_mrl.verification", reason="speaker task not landed")
  from vqax.errors import DataError
  trials = tmp_path / "trials.txt"
  trials.write_text("1 a/1.wav b/1.wav\n1 a/1.wav\n")
  with pytest.raises(DataError) as info:
    verification.read_trials(trials)
  assert str(info.value).startswith(f"{trials}:2: expected 'label enroll test'") and "\n" not in str(info.value)


def test_trials_file_naming_a_missing_file(tmp_path, monkeypatch):
  verification = pytest.importorskip("vqax.tasks.redimnet_mrl.verification", reason="speaker task not landed")
  from vqax.errors import DataError
  write_wav(tmp_path / "data" / "a" / "1.wav")
  trials = tmp_path / "trials.txt"
  trials.write_text("0 a/1.wav b/2.wav\n")
  config = config_loading.load_config(SPEAKERS)
  # The check needs no model: stand in for the trained workdir so the row stays fast.
  monkeypatch.setattr(verification, "load_trained", lambda workdir: (config, None, None, 0))
  with pytest.raises(DataError) as info:
    verification.evaluate(tmp_path / "work", trials, data_root=tmp_path / "data", verbose=False)
  assert str(info.value) == f"{trials}: trial file b/2.wav not found under --data_root {tmp_path / 'data'}"


def test_corrupt_files_are_skipped_and_counted_with_skip_bad_files(tmp_path, caplog):
  """The new refusals (truncated, a folder named like a clip, NaN only decoding shows) skip and count like
  the others: DCASE clips in the training scan, speaker files in the up-front pass, before any loader."""
  from vqax.tasks.redimnet_mrl.task import ReDimNetMRLTask
  from vqax.tasks.vqvae.task import VQVAETask
  clips = machine_tree(tmp_path / "dcase")
  cut = truncate(write_wav(clips / "fan" / "train" / f"{CLIP.format(50)}.wav", seconds=10), 44 + 2 * 50_000)
  folder = clips / "fan" / "train" / f"{CLIP.format(51)}.wav"
  folder.mkdir()
  npy = clips / "fan" / "train" / f"{CLIP.format(52)}.npy"
  np.save(npy, np.zeros((64, 100), np.float32))
  truncate(npy, 1000)
  config = smoke_config(clips, skip_bad_files=True)
  with caplog.at_level(logging.WARNING):
    summary = VQVAETask(config).prepare_data(tmp_path / "work_dcase", batch_sizes(config)).summary
  assert summary["train_clips"] == 4
  assert [m.split(":")[0] for m in summary["bad_files"]] == [str(cut), str(folder), str(npy)]

  voices = speaker_tree(tmp_path / "voices")
  flac = write_wav(voices / "id00000" / "video1" / "00090.flac", seconds=2)
  truncate(flac, flac.stat().st_size // 2)
  nan = voices / "id00001" / "video1" / "00091.wav"
  sf.write(nan, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
  (voices / "id00001" / "video1" / "00092.wav").mkdir()
  config = config_loading.load_config(SPEAKERS)
  config.data_root, config.skip_bad_files = str(voices), True
  summary = ReDimNetMRLTask(config).prepare_data(tmp_path, batch_sizes(config)).summary
  assert summary["utterances"] == 8 and len(summary["bad_files"]) == 3
  for path, expected in ((flac, "truncated or corrupt FLAC file"), (nan, "audio contains NaN or Inf samples"),
                         (voices / "id00001" / "video1" / "00092.wav", "is a folder, not a file")):
    assert any(m.startswith(f"{path}: {expected}") for m in summary["bad_files"]), summary["bad_files"]
