"""Synthetic DCASE and speaker corpora: layout, format, determinism, realism checks and option errors."""
import json
import pathlib
import re

import numpy as np
import pytest
import soundfile as sf

from vqax.data import synth_dcase, synth_speakers
from vqax.errors import ConfigError

DCASE_RE = re.compile(r"^(normal|anomaly)_id_(\d{2})_(\d{8})\.wav$")
VOX_RE = re.compile(r"^id\d{5}/vid\d{2}/\d{5}\.wav$")
SMALL = dict(machine_types=("fan", "pump", "slider", "valve"), machine_ids=(0, 2), n_train=3, n_test_normal=2,
             n_test_anomaly=4, seconds=1.0)
SPEAKERS = dict(n_speakers=4, n_videos=2, utts_per_video=3, seconds=(1.5, 2.0))


@pytest.fixture(scope="module")
def dcase_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("dcase")
  synth_dcase.generate_dcase(out, **SMALL)
  return out


@pytest.fixture(scope="module")
def speakers_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("speakers")
  synth_speakers.generate_speakers(out, **SPEAKERS)
  return out


def _wav_names(folder: pathlib.Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir())


def _rms_db(x):
  return 20.0 * np.log10(np.sqrt(np.mean(x ** 2)))


def _band_spectrum(x, n_fft=1024, bands=64):
  """Clip-average log power in log-spaced bands, level removed (spectral shape only)."""
  frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::n_fft // 2] * np.hanning(n_fft)
  power = np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0)
  edges = np.unique(np.geomspace(1, n_fft // 2 + 1, bands + 1).astype(int))
  db = 10.0 * np.log10(np.add.reduceat(power, edges[:-1]) + 1e-12)
  return db - db.mean()


def _f0(x, sr=16000):
  """Median F0 of clearly voiced 40 ms frames, by normalised autocorrelation."""
  n = int(0.04 * sr)
  frames = np.lib.stride_tricks.sliding_window_view(x, n)[::n // 2]
  frames = frames - frames.mean(axis=1, keepdims=True)
  energy = np.sum(frames ** 2, axis=1)
  frames = frames[energy > 0.1 * energy.max()]
  ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * n, axis=1)) ** 2, axis=1)[:, :n]
  ac /= ac[:, :1] + 1e-12
  lo, hi = sr // 400, sr // 60
  lag = lo + np.argmax(ac[:, lo:hi], axis=1)
  voiced = ac[np.arange(len(ac)), lag] > 0.5
  assert voiced.sum() >= 3
  return float(np.median(sr / lag[voiced]))


# ----- DCASE ----------------------------------------------------------------------------------------------


def test_dcase_layout_names_and_format(dcase_dir):
  assert sorted(p.name for p in dcase_dir.iterdir()) == ["fan", "pump", "slider", "synth_manifest.json", "valve"]
  for machine in SMALL["machine_types"]:
    assert sorted(p.name for p in (dcase_dir / machine).iterdir()) == ["test", "train"]
    train, test = _wav_names(dcase_dir / machine / "train"), _wav_names(dcase_dir / machine / "test")
    assert all(DCASE_RE.match(n) for n in train + test)
    assert all(n.startswith("normal_") for n in train)
    for mid in SMALL["machine_ids"]:
      assert [n for n in train if f"_id_{mid:02d}_" in n] == [f"normal_id_{mid:02d}_{i:08d}.wav" for i in range(3)]
      for label, count in (("normal", 2), ("anomaly", 4)):
        want = [f"{label}_id_{mid:02d}_{i:08d}.wav" for i in range(count)]
        assert [n for n in test if n.startswith(f"{label}_id_{mid:02d}_")] == want
  for path in dcase_dir.glob("*/*/*.wav"):
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
    assert info.frames == 16000
  manifest = json.loads((dcase_dir / "synth_manifest.json").read_text())
  assert manifest["complete"] and manifest["n_files"] == 4 * 2 * 9
  assert manifest["counts"]["valve"]["id_02"] == {"train_normal": 3, "test_normal": 2, "test_anomaly": 4}
  assert set(manifest["anomalies"]["fan"].values()) == set(synth_dcase.ANOMALY_KINDS["fan"])


def test_dcase_clip_is_independent_of_other_clips(dcase_dir, tmp_path):
  # Same seed, a different selection of clips: every shared file is byte-identical.
  synth_dcase.generate_dcase(tmp_path, machine_types=("valve", "fan"), machine_ids=(2,), n_train=2,
                             n_test_normal=1, n_test_anomaly=3, seconds=1.0)
  shared = sorted(p.relative_to(tmp_path) for p in tmp_path.glob("*/*/*.wav"))
  assert len(shared) == 2 * 6
  for rel in shared:
    assert (tmp_path / rel).read_bytes() == (dcase_dir / rel).read_bytes(), rel


def test_dcase_seed_changes_audio():
  a, _ = synth_dcase.synth_clip("pump", 0, "train", "normal", 0, seed=0, seconds=0.5)
  b, _ = synth_dcase.synth_clip("pump", 0, "train", "normal", 0, seed=1, seconds=0.5)
  c, _ = synth_dcase.synth_clip("pump", 0, "train", "normal", 1, seed=0, seconds=0.5)
  again, _ = synth_dcase.synth_clip("pump", 0, "train", "normal", 0, seed=0, seconds=0.5)
  np.testing.assert_array_equal(a, again)
  assert not np.allclose(a, b) and not np.allclose(a, c)


@pytest.mark.parametrize("machine", synth_dcase.MACHINE_TYPES)
def test_dcase_anomalies_differ_in_spectrum_not_level(machine):
  clip = lambda split, label, i: synth_dcase.synth_clip(machine, 0, split, label, i, seconds=1.5)
  train = np.array([_band_spectrum(clip("train", "normal", i)[0]) for i in range(16)])
  normals = [clip("test", "normal", i) for i in range(8)]
  anomalies = [clip("test", "anomaly", i) for i in range(8)]  # two of each fault kind
  assert {kind for _, kind in anomalies} == set(synth_dcase.ANOMALY_KINDS[machine])
  level_gap = np.mean([_rms_db(x) for x, _ in anomalies]) - np.mean([_rms_db(x) for x, _ in normals])
  assert abs(level_gap) < 2.0
  mean, std = train.mean(axis=0), train.std(axis=0) + 0.5
  distance = lambda x: np.mean(((_band_spectrum(x) - mean) / std) ** 2)
  normal_d = np.mean([distance(x) for x, _ in normals])
  anomaly_d = np.mean([distance(x) for x, _ in anomalies])
  assert anomaly_d > 1.1 * normal_d, (normal_d, anomaly_d)


def test_dcase_manifest_skip_and_overwrite(tmp_path):
  opts = dict(machine_types=("slider",), machine_ids=(4,), n_train=3, n_test_normal=1, n_test_anomaly=1,
              seconds=0.5)
  first = synth_dcase.generate_dcase(tmp_path, **opts)
  assert not first["skipped"]
  wav = tmp_path / "slider" / "train" / "normal_id_04_00000002.wav"
  stamp = wav.stat().st_mtime_ns
  again = synth_dcase.generate_dcase(tmp_path, **opts)
  assert again["skipped"] and wav.stat().st_mtime_ns == stamp
  with pytest.raises(ConfigError, match="n_train.*overwrite"):
    synth_dcase.generate_dcase(tmp_path, **{**opts, "n_train": 2})
  redone = synth_dcase.generate_dcase(tmp_path, **{**opts, "n_train": 2}, overwrite=True)
  assert not redone["skipped"] and redone["params"]["n_train"] == 2
  assert not wav.exists()  # stale clips of the earlier set are gone
  assert len(list(tmp_path.glob("slider/*/*.wav"))) == 4


def test_dcase_refuses_foreign_wavs(tmp_path):
  (tmp_path / "fan" / "train").mkdir(parents=True)
  sf.write(str(tmp_path / "fan" / "train" / "normal_id_00_00000000.wav"), np.zeros(100), 16000)
  with pytest.raises(ConfigError, match="synth_manifest.json"):
    synth_dcase.generate_dcase(tmp_path, machine_types=("fan",), machine_ids=(0,), n_train=1, seconds=0.5)


@pytest.mark.parametrize("option, value", [
    ("n_train", 0), ("n_train", -3), ("n_test_anomaly", -1), ("machine_types", ("fan", "drill")),
    ("machine_types", "fan"), ("machine_ids", (0, 100)), ("seconds", 0.0), ("sample_rate", 100), ("seed", -1),
])
def test_dcase_bad_options(tmp_path, option, value):
  with pytest.raises(ConfigError, match=option):
    synth_dcase.generate_dcase(tmp_path, **{option: value})
  assert not any(tmp_path.iterdir())


# ----- Speakers -------------------------------------------------------------------------------------------


def test_speakers_layout_and_format(speakers_dir):
  files = sorted(p.relative_to(speakers_dir).as_posix() for p in speakers_dir.rglob("*.wav"))
  assert len(files) == 4 * 2 * 3 and all(VOX_RE.match(f) for f in files)
  assert files[0] == "id00000/vid00/00000.wav" and files[-1] == "id00003/vid01/00002.wav"
  for f in files:
    info = sf.info(str(speakers_dir / f))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert 1.5 <= info.duration <= 2.0


def test_speakers_are_deterministic_per_utterance(speakers_dir, tmp_path):
  synth_speakers.generate_speakers(tmp_path, n_speakers=2, n_videos=1, utts_per_video=2, seconds=(1.5, 2.0))
  shared = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.wav"))
  assert len(shared) == 4
  for rel in shared:
    assert (tmp_path / rel).read_bytes() == (speakers_dir / rel).read_bytes(), rel
  other = synth_speakers.synth_utterance(0, 0, 0, seed=1, seconds=(1.5, 2.0))
  first = sf.read(str(speakers_dir / "id00000/vid00/00000.wav"))[0]
  assert other.shape != first.shape or not np.allclose(other, first, atol=1e-3)


def test_speakers_pitch_is_speaker_specific(speakers_dir):
  manifest = json.loads((speakers_dir / "synth_manifest.json").read_text())
  f0 = {s: [_f0(sf.read(str(p))[0]) for p in sorted((speakers_dir / s).rglob("*.wav"))]
        for s in manifest["speakers"]}
  means = {s: np.mean(v) for s, v in f0.items()}
  for s, values in f0.items():
    assert 80.0 < means[s] < 270.0
    assert np.std(values) / means[s] < 0.08, (s, values)  # stable within a speaker, across videos
    assert abs(means[s] / manifest["speakers"][s]["f0_hz"] - 1.0) < 0.12
    for v in values:  # and each utterance is nearest to its own speaker
      assert min(means, key=lambda o: abs(np.log(v / means[o]))) == s
  ordered = sorted(means.values())
  assert min(b / a for a, b in zip(ordered, ordered[1:])) > 1.08


def test_speakers_are_speech_like(speakers_dir):
  x = sf.read(str(speakers_dir / "id00001/vid01/00001.wav"))[0]
  frames = np.lib.stride_tricks.sliding_window_view(x, 320)[::160]
  level = 10.0 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
  assert level.max() - np.percentile(level, 10) > 20.0  # syllables and pauses, not a steady tone
  power = np.abs(np.fft.rfft(frames * np.hanning(320), axis=1)) ** 2
  high = (power[:, 64:].sum(axis=1) / (power.sum(axis=1) + 1e-12))[level > level.max() - 25.0]  # above 3.2 kHz
  assert high.max() > 0.3 and np.median(high) < 0.2  # fricative noise as well as voiced (low-heavy) frames


def test_speakers_manifest_skip(tmp_path):
  opts = dict(n_speakers=1, n_videos=1, utts_per_video=1, seconds=0.5)
  assert not synth_speakers.generate_speakers(tmp_path, **opts)["skipped"]
  assert synth_speakers.generate_speakers(tmp_path, **opts)["skipped"]
  with pytest.raises(ConfigError, match="n_videos"):
    synth_speakers.generate_speakers(tmp_path, **{**opts, "n_videos": 2})
  assert synth_speakers.generate_speakers(tmp_path, **{**opts, "n_videos": 2}, overwrite=True)["n_files"] == 2


@pytest.mark.parametrize("option, value", [
    ("n_speakers", 0), ("n_videos", 0), ("utts_per_video", -1), ("seconds", (3.0, 2.0)), ("seconds", 0.0),
    ("n_videos", 100),
])
def test_speakers_bad_options(tmp_path, option, value):
  with pytest.raises(ConfigError, match=option):
    synth_speakers.generate_speakers(tmp_path, **{option: value})
