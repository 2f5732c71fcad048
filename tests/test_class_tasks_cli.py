"""The GAN and ViT classifier tasks through the ordinary CLI: train and resume their smoke configs, plan
them (both GAN networks and optimizers; the ViT per unfreezing stage) with --budget, and the bad-input rows
of class-folder data, each one line."""
import json

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO

from vqax import cli
from vqax.data.synth_classes import generate_classes
from vqax.train import trainer

GAN = f"{REPO}/configs/spectrogram_gan.py:smoke"
VIT = f"{REPO}/configs/vit_classifier.py:smoke"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("classes") / "data"
  generate_classes(root, classes=("tone_low", "chirp_up", "noise_band"), clips_per_class=4, seconds=0.6)
  return root


def vqax(capsys, *args):
  code = cli.main(list(args))
  captured = capsys.readouterr()
  assert code == 0, captured.err[-2000:]
  return captured.out


@pytest.mark.parametrize("config", [GAN, VIT], ids=["gan", "vit"])
def test_smoke_config_trains_and_resumes(capsys, tmp_path, data, config):
  work = str(tmp_path / "run")
  out = vqax(capsys, "train", "--config", config, "--workdir", work, "--data_root", str(data), "--no_progress",
             "--max_steps", "1")
  assert "trained to step 1/" in out
  out = vqax(capsys, "train", "--config", config, "--workdir", work, "--data_root", str(data), "--no_progress")
  assert "resumed from" in out and "trained to step" in out
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert rows and all(np.isfinite(r["loss"]) for r in rows)
  assert json.loads((tmp_path / "run" / "classes.json").read_text())["classes"] == ["chirp_up", "noise_band",
                                                                                     "tone_low"]


def test_augmentation_loop_writes_its_table_distances_pictures_and_sounds(capsys, tmp_path, data):
  """`vqax augment` after a (2-step) GAN: both settings over 2 seeds, the table, the Frechet distances,
  faithfulness by class, grid and curve PNGs, one WAV per class."""
  gan = str(tmp_path / "gan")
  vqax(capsys, "train", "--config", GAN, "--workdir", gan, "--data_root", str(data), "--no_progress")
  out = vqax(capsys, "augment", "--config", VIT, "--gan_workdir", gan, "--seeds", "2", "--per_class", "2",
             "--out", str(tmp_path / "aug"))
  assert "| real only |" in out and "| real + 2/class |" in out and "Frechet distance" in out
  result = json.loads((tmp_path / "aug" / "results.json").read_text())
  assert [len(v) for v in result["accuracies"].values()] == [2, 2]
  assert all(0.0 <= a <= 1.0 for v in result["accuracies"].values() for a in v)
  assert result["frechet_distance"] >= 0 and result["frechet_distance_real_train_vs_held_out"] >= 0
  assert len(result["condition_faithfulness"]["per_class"]) == 3
  for path in [result["grid_png"], result["curves_png"], *result["wavs"]]:
    assert (tmp_path / "aug" / path.split("/")[-1]).stat().st_size > 1000, path
  assert len(result["wavs"]) == 3
  synthetic = np.load(tmp_path / "aug" / "real_plus_2" / "seed0" / "synthetic.npy")
  assert synthetic.shape == (6, 16, 32) and np.isfinite(synthetic).all()


def _plan(capsys, tmp_path, config, *extra, budget=True):
  path = tmp_path / "plan.json"
  out = vqax(capsys, "plan", "--config", config, "--variants", "plain", "--json", str(path), *extra,
             *(["--budget", "64MiB"] if budget else []))
  result = json.loads(path.read_text())
  assert f"(phase {result['plans']['config']['phase']!r}; no data read)" in out  # the phase it compiled
  return result


def test_plan_covers_both_gan_networks_and_optimizers_and_fits_the_batch(capsys, tmp_path):
  result = _plan(capsys, tmp_path, GAN)
  plan = result["plans"]["config"]
  # Adam: two moments per parameter of both networks (+ a few scalar counts).
  assert 2 * plan["params"] <= plan["optimizer_state"] <= 2 * plan["params"] + 64
  assert plan["batch"] == 4 * 2 * 16 * 32 * 4 + 4 * 2 * 4  # [B, n_critic, mels, frames] f32 + labels
  fit = result["fits"]["plain"]
  assert fit["size"] and fit["peak"] <= 64 * 2**20 < fit["next_peak"]


def test_plan_of_each_unfreezing_stage(capsys, tmp_path):
  first = _plan(capsys, tmp_path, VIT, "--config.last_stage=0", budget=False)["plans"]["config"]
  every = _plan(capsys, tmp_path, VIT)
  last = every["plans"]["config"]
  assert first["params"] == last["params"]
  assert first["phase"] != last["phase"]  # named in the plan's header: not "full" for every stage
  # Stage 0 trains the head, final norm and one of three layers: its optimizer state is a fraction.
  assert first["optimizer_state"] * 2 < last["optimizer_state"]
  assert 2 * last["params"] <= last["optimizer_state"] <= 2 * last["params"] + 64
  assert every["fits"]["plain"]["size"]


# ---------------------------------------------------------------------------------------------------------
# Bad input: one line each, before any long work (building the trainer is patched to refuse).


class LongWorkStarted(Exception):
  pass


def write_wav(path, seconds, seed=0):
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(path, np.random.default_rng(seed).standard_normal(int(seconds * 16000)).astype(np.float32) * 0.05,
           16000, subtype="PCM_16")
  return path


def two_classes(root, seconds=0.6):
  for c in ("a", "b"):
    for i in range(3):
      write_wav(root / c / f"{c}{i}.wav", seconds, seed=i)
  return root


def no_usable_clips(tmp):
  root = two_classes(tmp / "data")
  for i in range(3):
    write_wav(root / "c" / f"short{i}.wav", 0.2)
  return [GAN, "--config.skip_short=true"], f"{root / 'c'}: no usable clips (every file is shorter than 0.5 s)"


def no_audio_in_a_class(tmp):
  root = two_classes(tmp / "data")
  (root / "c").mkdir()
  (root / "c" / "notes.txt").write_text("no audio here")
  return [VIT], f"{root / 'c'}: class folder holds no audio files"


def single_class(tmp):
  root = tmp / "data"
  write_wav(root / "only" / "x.wav", 0.6)
  return [GAN], f"data_root {root}: a classifier needs at least two class folders"


def shorter_than_a_spectrogram(tmp):
  root = two_classes(tmp / "data")
  path = write_wav(root / "b" / "short.wav", 0.3)
  return [VIT], f"{path}: shorter than one spectrogram clip (0.5 s = 8000 samples)"


def condition_size_mismatch(tmp):
  root = two_classes(tmp / "data")
  return [GAN, "--config.model.num_classes=3"], (f"model.num_classes=3 (the condition / head size) does not match "
                                                 f"the 2 class folders under data_root {root}")


def schedule_names_a_missing_layer(tmp):
  two_classes(tmp / "data")
  return [VIT, '--config.unfreeze_schedule.1=("layer.7",)'], "unfreezing schedule names layer 'layer.7', which does not exist"


@pytest.mark.parametrize("case", [no_usable_clips, no_audio_in_a_class, single_class, shorter_than_a_spectrogram,
                                  condition_size_mismatch, schedule_names_a_missing_layer],
                         ids=lambda c: c.__name__)
def test_bad_class_data_is_one_line(capsys, monkeypatch, tmp_path, case):
  def refuse(*args, **kwargs):
    raise LongWorkStarted
  monkeypatch.setattr(trainer, "make_trainer", refuse)
  (config, *extra), message = case(tmp_path)
  code = cli.main(["train", "--config", config, "--workdir", str(tmp_path / "work"), "--data_root",
                   str(tmp_path / "data"), *extra])
  err = capsys.readouterr().err
  assert code == 2, err
  assert err.startswith("vqax: error: ") and err.count("\n") == 1, err
  assert message in err, err
