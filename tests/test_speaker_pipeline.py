"""Speaker data, ReDimNet-MRL training (frozen stage, EER) and verification, on synthetic and real speech.

One small training run is shared by the slow tests (module fixture `trained`): the smoke config (a narrow
two-stride ReDimNet; full b0 needs minutes to compile on a CPU) on 12 synthetic speakers, its backbone
started from a converted folder so the frozen stage can be checked against known values.
"""
import json
import pathlib

import jax
import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, shared_path
from vqax import run
from vqax import cli, config_loading
from vqax.audio.io import read_audio
from vqax.data import speakers
from vqax.data.synth_speakers import generate_speakers
from vqax.errors import CheckpointError, DataError
from vqax.tasks.redimnet_mrl import verification
from vqax.models.redimnet_convert import save_converted
from vqax.tasks.redimnet_mrl.task import ReDimNetMRLTask, backbone_config
from vqax.train import trainer
from vqax.train.task import DataInfo
from vqax.train.checkpointing import Checkpointer


def smoke_config(data_root, **overrides):
  config = config_loading.load_config(str(REPO / "configs" / "redimnet_mrl.py") + ":smoke")
  config.data_root = str(data_root)
  for key, value in overrides.items():
    config[key] = value
  return config


def write_wave(path: pathlib.Path, seconds: float, seed: int = 0, rate: int = 16000):
  path.parent.mkdir(parents=True, exist_ok=True)
  wave = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))
  sf.write(path, wave.astype(np.float32), rate, subtype="PCM_16")


# ----------------------------------------------------------------------------------------------------------
# Listing and the training pipeline


def test_lists_voxceleb_librispeech_and_flat_layouts(tmp_path):
  write_wave(tmp_path / "id00001" / "vidA" / "00001.wav", 0.2)  # VoxCeleb
  write_wave(tmp_path / "id00001" / "vidB" / "00002.wav", 0.2)
  write_wave(tmp_path / "1688" / "142285" / "1688-142285-0000.flac", 0.2)  # LibriSpeech
  write_wave(tmp_path / "367" / "367-130732-0000.flac", 0.2)  # flat (shared/ LibriSpeech sample)
  write_wave(tmp_path / "367" / "367-130732-0001.flac", 0.2)
  (tmp_path / "README.md").write_text("ignored")
  (tmp_path / "367" / "notes.txt").write_text("ignored")
  (tmp_path / ".cache").mkdir()
  utterances, names = speakers.list_utterances(tmp_path)
  assert names == ["1688", "367", "id00001"]
  assert [(u.relpath, u.speaker, u.label) for u in utterances] == [
      ("1688/142285/1688-142285-0000.flac", "1688", 0),
      ("367/367-130732-0000.flac", "367", 1),
      ("367/367-130732-0001.flac", "367", 1),
      ("id00001/vidA/00001.wav", "id00001", 2),
      ("id00001/vidB/00002.wav", "id00001", 2),
  ]
  assert all(pathlib.Path(u.path).is_absolute() for u in utterances)


def test_listing_errors_name_the_problem(tmp_path):
  with pytest.raises(DataError, match="folder not found"):
    speakers.list_utterances(tmp_path / "missing")
  (tmp_path / "README.md").write_text("x")
  with pytest.raises(DataError, match="no speaker folders"):
    speakers.list_utterances(tmp_path)
  write_wave(tmp_path / "a" / "1.wav", 0.1)
  (tmp_path / "b" / "video").mkdir(parents=True)
  with pytest.raises(DataError, match=r"/b: speaker folder holds no audio"):
    speakers.list_utterances(tmp_path)


def test_random_crop_repeats_short_waves_and_windows_long_ones():
  rng = np.random.default_rng(0)
  short = np.arange(5, dtype=np.float32)
  np.testing.assert_array_equal(speakers.random_crop(short, 12, rng), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])
  long = np.arange(100, dtype=np.float32)
  starts = set()
  for _ in range(20):
    crop = speakers.random_crop(long, 10, rng)
    np.testing.assert_array_equal(crop, np.arange(crop[0], crop[0] + 10))
    starts.add(int(crop[0]))
  assert len(starts) > 5 and max(starts) <= 90
  np.testing.assert_array_equal(speakers.random_crop(long, 100, rng), long)


def test_loader_batches_fixed_crops_and_rejects_too_short_files(tmp_path):
  for s in range(3):
    for u in range(4):
      write_wave(tmp_path / f"spk{s}" / f"{u}.wav", 0.5 if s < 2 else 0.05, seed=10 * s + u)
  utterances, _ = speakers.list_utterances(tmp_path)
  loader = speakers.train_loader(utterances, batch_size=4, segment_samples=3200, seed=0, min_samples=1600)
  labels = []
  for _, batch in zip(range(4), loader):
    assert batch["wave"].shape == (4, 3200) and batch["wave"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    labels += batch["label"].tolist()
  assert set(labels) == {0, 1}  # speaker 2's 0.05 s files are shorter than min_samples: rejected


def test_unreadable_files_raise_or_are_skipped(tmp_path):
  for u in range(3):
    write_wave(tmp_path / "spk" / f"{u}.wav", 0.2, seed=u)
  (tmp_path / "spk" / "3.wav").write_bytes(b"not audio")
  utterances, _ = speakers.list_utterances(tmp_path)
  with pytest.raises(DataError, match="3.wav: not a readable audio file"):
    list(zip(range(2), speakers.train_loader(utterances, batch_size=4, segment_samples=800, seed=0)))
  loader = speakers.train_loader(utterances, batch_size=3, segment_samples=800, seed=0, skip_bad_files=True)
  assert next(iter(loader))["wave"].shape == (3, 800)


# ----------------------------------------------------------------------------------------------------------
# Trials


def test_make_trials_is_balanced_and_read_trials_checks_lines(tmp_path):
  for s in range(4):
    for u in range(3):
      write_wave(tmp_path / "data" / f"spk{s}" / f"{u}.wav", 0.05, seed=s * 3 + u)
  made = verification.make_trials(tmp_path / "data", tmp_path / "trials.txt", 10, 10, seed=0)
  assert (made["n_target"], made["n_nontarget"]) == (10, 10)
  trials = verification.read_trials(tmp_path / "trials.txt")
  assert len({(e, t) for _, e, t in trials}) == 20
  for label, enroll, test in trials:
    assert label == int(enroll.split("/")[0] == test.split("/")[0]) and enroll != test
  # Asking for more target pairs than exist writes all of them (4 speakers x 3 pairs).
  assert verification.make_trials(tmp_path / "data", tmp_path / "all.txt", 50, 5)["n_target"] == 12

  bad = tmp_path / "bad.txt"
  bad.write_text("1 a.wav b.wav\n\n# comment\n2 a.wav b.wav\n")
  with pytest.raises(DataError, match=r"bad.txt:4: expected 'label enroll test'"):
    verification.read_trials(bad)
  bad.write_text("1 a.wav\n")
  with pytest.raises(DataError, match=r"bad.txt:1:"):
    verification.read_trials(bad)


def test_whole_utterances_are_repeat_padded_to_length_buckets():
  assert verification.bucket_length(16000, 1.25, 16000) == 16000
  assert verification.bucket_length(16001, 1.25, 16000) == 20000
  assert verification.bucket_length(24000, 1.25, 16000) == 25000
  assert verification.bucket_length(5000, 1.25, 16000) == 16000
  assert verification.bucket_length(23456, 1.0, 16000) == 23456
  embedder = verification.Embedder(model=None, variables=None, bucket_ratio=2.0, max_seconds=3.0)
  wave = np.arange(20000, dtype=np.float32)
  np.testing.assert_array_equal(embedder.prepare(wave), np.concatenate([wave, wave[:12000]]))
  long = np.arange(60000, dtype=np.float32)
  np.testing.assert_array_equal(embedder.prepare(long), long[6000:54000])  # centre 3 s, not padded past it


# ----------------------------------------------------------------------------------------------------------
# Model setup


def random_backbone(config) -> dict:
  """Backbone variables drawn like ReDimNet's own init (PyTorch-style uniform kernels), in numpy: no
  jitted init to compile."""
  program = ReDimNetMRLTask(config).build(DataInfo(1, num_classes=2), "cpu")
  shapes = jax.eval_shape(lambda rng: program.init_variables(rng, None), jax.random.key(0))
  rng = np.random.default_rng(1)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      bound = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
      return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
    return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)
  return {name: jax.tree_util.tree_map_with_path(draw, shapes[name]["backbone"]) for name in shapes}


def test_init_from_must_match_the_model_size(tmp_path):
  config = smoke_config(tmp_path)
  save_converted(random_backbone(config), backbone_config(config), tmp_path / "converted")
  config.init_from = str(tmp_path / "converted")
  program = ReDimNetMRLTask(config).build(DataInfo(1, num_classes=3), "cpu")
  from_folder = jax.eval_shape(lambda rng: program.init_variables(rng, None), jax.random.key(0))
  config.init_from = ""
  scratch = ReDimNetMRLTask(config).build(DataInfo(1, num_classes=3), "cpu")
  from_scratch = jax.eval_shape(lambda rng: scratch.init_variables(rng, None), jax.random.key(0))
  assert jax.tree.structure(from_folder) == jax.tree.structure(from_scratch)
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape, from_folder, from_scratch)))
  config.init_from = str(tmp_path / "converted")
  config.model.overrides.C = 12
  with pytest.raises(CheckpointError, match="differs in C"):
    ReDimNetMRLTask(config)


# ----------------------------------------------------------------------------------------------------------
# Training and verification (one shared run)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("speakers")
  generate_speakers(root / "train", seed=0, n_speakers=12, n_videos=2, utts_per_video=4, seconds=(1.0, 2.0))
  generate_speakers(root / "held_out", seed=1, n_speakers=8, n_videos=2, utts_per_video=3, seconds=(1.0, 2.0))
  config = smoke_config(root / "train")
  backbone = random_backbone(config)
  save_converted(backbone, backbone_config(config), root / "converted")
  config.init_from = str(root / "converted")
  workdir = root / "workdir"
  # Stop at the end of the frozen stage (1 epoch = 12 steps), look, then resume to the end.
  frozen = run.train(config, workdir, max_steps=12, progress=False)
  frozen_state, frozen_step = Checkpointer(workdir / "checkpoints").restore(None)
  t = trainer.make_trainer(config, ReDimNetMRLTask(config), DataInfo(12, num_classes=12))
  initial = jax.device_get(t.init_state())
  full = run.train(config, workdir, progress=False)
  return {"root": root, "config": config, "workdir": workdir, "backbone": backbone, "initial": initial,
          "frozen_state": frozen_state, "frozen_step": frozen_step, "frozen": frozen, "full": full}


def test_frozen_stage_keeps_the_backbone_bit_identical(trained):
  assert trained["frozen_step"] == 12
  assert {h["phase"] for h in trained["frozen"]["history"]} == {"frozen_backbone"}
  state, backbone, initial = trained["frozen_state"], trained["backbone"], trained["initial"]
  jax.tree.map(np.testing.assert_array_equal, state["params"]["backbone"], backbone["params"])
  jax.tree.map(np.testing.assert_array_equal, state["model_state"]["batch_stats"]["backbone"],
               backbone["batch_stats"])
  # ... while every head parameter and BatchNorm statistic moved.
  head_before = {"params": initial.params["head"], "batch_stats": initial.model_state["batch_stats"]["head"]}
  head_after = {"params": state["params"]["head"], "batch_stats": state["model_state"]["batch_stats"]["head"]}
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), head_before, head_after)
  assert all(jax.tree.leaves(changed)), changed


def test_full_stage_trains_everything_and_learns(trained):
  full = trained["full"]
  assert full["final_step"] == full["total_steps"] == 72
  assert {h["phase"] for h in full["history"]} == {"full"}
  state, _ = Checkpointer(trained["workdir"] / "checkpoints").restore(None)
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), state["params"]["backbone"],
                       trained["backbone"]["params"])
  assert sum(jax.tree.leaves(moved)) > 0.9 * len(jax.tree.leaves(moved))
  last = full["history"][-1]
  assert last["margin"] == pytest.approx(0.2)
  assert last["accuracy_256"] > 0.5 and last["loss"] < trained["frozen"]["history"][0]["loss"]


def test_training_lowers_eer_on_held_out_speakers(trained, tmp_path):
  result = verification.evaluate(trained["workdir"], data_root=trained["root"] / "held_out", out_dir=tmp_path,
                                 make_trials_n=200, verbose=False)
  eers = {dim: v["eer"] for dim, v in result["report"]["dims"].items()}
  print("held-out synthetic speakers, EER by dim:", eers)
  assert set(eers) == {64, 128, 192, 256}
  assert all(e < 0.35 for e in eers.values()), eers  # chance is 0.5


def test_librispeech_flac_clips_load_and_eval_sv_runs_end_to_end(trained, tmp_path, capsys):
  root = shared_path("data", "librispeech_test_other")
  utterances, names = speakers.list_utterances(root)
  assert len(names) == 10 and len(utterances) == 100
  assert all(u.relpath.endswith(".flac") and u.relpath.startswith(u.speaker + "/") for u in utterances)
  wave = read_audio(utterances[0].path, 16000)
  assert wave.dtype == np.float32 and wave.shape[0] > 2 * 16000

  out = tmp_path / "libri"
  assert cli.main(["eval-sv", "--workdir", str(trained["workdir"]), "--data_root", str(root),
                   "--make_trials", "100", "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "minDCF@0.01" in printed and "minDCF@0.05" in printed
  result = json.loads((out / "results.json").read_text())
  assert set(result["report"]["dims"]) == {"64", "128", "192", "256"}
  print("LibriSpeech test-other sample, EER by dim:",
        {d: round(v["eer"], 4) for d, v in result["report"]["dims"].items()})
  assert (out / "det.png").stat().st_size > 10_000
  assert len((out / "trials.txt").read_text().splitlines()) == 200
  assert len((out / "scores.txt").read_text().splitlines()) == 201


def test_embed_command_and_trial_file_errors(trained, tmp_path, capsys):
  held_out = trained["root"] / "held_out"
  out = tmp_path / "emb.npy"
  assert cli.main(["embed", "--workdir", str(trained["workdir"]), "--data_root", str(held_out),
                   "--out", str(out)]) == 0
  embeddings = np.load(out)
  files = (tmp_path / "emb.files.txt").read_text().splitlines()
  assert embeddings.shape == (48, 256) and len(files) == 48 and files[0] == "id00000/vid00/00000.wav"
  assert np.all(np.isfinite(embeddings))

  trials = tmp_path / "trials.txt"
  trials.write_text("1 id00000/vid00/00000.wav id00000/vid01/00009.wav\n")
  assert cli.main(["eval-sv", "--workdir", str(trained["workdir"]), "--data_root", str(held_out),
                   "--trials", str(trials)]) == 2
  assert "trial file id00000/vid01/00009.wav not found" in capsys.readouterr().err


def test_convert_command_writes_an_init_from_folder(tmp_path, capsys):
  fixture = shared_path("fixtures", "redimnet_b0_parity.npz")  # a random-init official b0 state_dict
  out = tmp_path / "b0"
  assert cli.main(["convert", "redimnet", str(fixture), "--out", str(out)]) == 0
  assert (out / "model_config.json").is_file() and (out / "variables").is_dir()
  config = config_loading.load_config(str(REPO / "configs" / "redimnet_mrl.py"))
  config.init_from, config.model.size = str(out), "b1"
  with pytest.raises(CheckpointError, match="model.size=b1 .differs in C, F"):
    ReDimNetMRLTask(config)
  assert cli.main(["convert", "redimnet", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2
  assert "missing.npz: no such file" in capsys.readouterr().err
