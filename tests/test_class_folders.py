"""Class-folder spectrogram data: the synthetic set, listing and loading, bad input, LibriSpeech speakers."""
import chex
import numpy as np
import pytest
import soundfile as sf
from conftest import shared_path

from vqax.audio.features import LogMelConfig
from vqax.data import class_folders as cf
from vqax.data.synth_classes import CLASSES, generate_classes, synth_clip
from vqax.errors import ConfigError, DataError

CFG = cf.ClipConfig(LogMelConfig(n_fft=512, hop_length=256, n_mels=32), clip_seconds=1.0)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("synth")
  generate_classes(root, clips_per_class=6, seconds=1.0)
  return root


def test_synthetic_set_is_deterministic_and_resumable(tmp_path, synth_root):
  manifest = generate_classes(tmp_path / "a", classes=("tone_low", "clicks"), clips_per_class=2, seconds=1.0)
  assert manifest["n_files"] == 4 and not manifest["skipped"]
  assert generate_classes(tmp_path / "a", classes=("tone_low", "clicks"), clips_per_class=2, seconds=1.0)["skipped"]
  # A clip depends on (seed, class, index) only: the same file in a bigger set is bit-identical.
  small, _ = sf.read(tmp_path / "a" / "clicks" / "clicks_0001.wav", dtype="int16")
  big, _ = sf.read(synth_root / "clicks" / "clicks_0001.wav", dtype="int16")
  np.testing.assert_array_equal(small, big)
  assert not np.array_equal(synth_clip("clicks", 0, seconds=1.0), synth_clip("clicks", 0, seed=1, seconds=1.0))
  with pytest.raises(ConfigError, match="'whistle' is not one of"):
    generate_classes(tmp_path / "b", classes=("tone_low", "whistle"))
  with pytest.raises(ConfigError, match="at least two distinct"):
    generate_classes(tmp_path / "b", classes=("tone_low",))


def test_synthetic_classes_differ_in_their_spectrograms_and_hard_pairs_are_close(synth_root):
  """Nearest class centroid of the time-averaged log-mel (leave-one-out) separates the easy classes; the
  hard pairs' centroids are far closer than an easy pair's."""
  records, classes = cf.list_clips(synth_root, CFG)
  assert classes == sorted(CLASSES)
  specs, labels = cf.load_arrays(records, CFG)
  chex.assert_shape(specs, (len(CLASSES) * 6, 32, 63))
  profiles = specs.mean(axis=2)
  centroid = lambda c, exclude=None: profiles[(labels == c) & (np.arange(len(labels)) != exclude)].mean(0)
  idx = {name: i for i, name in enumerate(classes)}
  easy = [idx[n] for n in ("tone_high", "chirp_up", "noise_band", "tone_low")]
  hits = [int(np.argmin([np.linalg.norm(profiles[i] - centroid(c, i)) for c in easy]) == easy.index(labels[i]))
          for i in range(len(labels)) if labels[i] in easy]
  assert np.mean(hits) == 1.0
  gap = lambda a, b: np.linalg.norm(centroid(idx[a]) - centroid(idx[b]))
  assert gap("tone_low", "tone_semitone") < 0.5 * gap("tone_low", "tone_high")
  assert gap("am_slow", "am_fast") < 0.5 * gap("am_slow", "noise_band")


def test_clips_hop_and_loader_batches(synth_root):
  cfg = cf.ClipConfig(CFG.features, clip_seconds=0.4, clip_hop_seconds=0.35)
  records, classes = cf.list_clips(synth_root, cfg)
  assert len(records) == len(classes) * 6 * 2  # starts 0 and 0.35 s fit in 1 s, 0.7 s does not
  assert {r.start for r in records} == {0, 5600}
  norm = cf.fit_normalization(records, cfg)
  loader = cf.class_loader(records, cfg, batch_size=8, seed=0, normalization=norm)
  batch = next(iter(loader))
  chex.assert_shape(batch["spectrogram"], (8, 32, cfg.frames))
  assert cfg.frames == 1 + 6400 // 256
  assert batch["spectrogram"].dtype == np.float32 and batch["label"].dtype == np.int32
  assert isinstance(batch["spectrogram"], np.ndarray)  # host memory: the loader never touches a device
  all_specs, _ = cf.load_arrays(records, cfg, norm)
  assert abs(all_specs.mean()) < 0.05 and abs(all_specs.std() - 1) < 0.05
  train, test = cf.split_by_file(records, 0.34, seed=0)
  assert {r.path for r in train}.isdisjoint({r.path for r in test})
  assert {r.label for r in test} == set(range(len(classes)))


def test_seed_frame_count():
  seed = cf.ClipConfig(LogMelConfig(sample_rate=22050, hop_length=512, n_fft=2048, n_mels=128), clip_seconds=30.0)
  assert seed.shape == (128, 1292)


def _wav(path, seconds, rate=16000):
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(path, np.zeros(int(seconds * rate), np.float32) + 0.01, rate)


@pytest.mark.parametrize("layout, kwargs, message", [
    ({"a/x.wav": 1.0}, {}, "at least two class folders .* found only 'a'"),
    ({"a/x.wav": 1.0, "b/readme.txt": None}, {}, "b: class folder holds no audio"),
    ({"a/x.wav": 1.0, "b/y.wav": 0.5}, {}, "b/y.wav: shorter than one spectrogram clip"),
    ({"a/x.wav": 1.0, "b/y.wav": 0.5}, {"skip_short": True}, "b: no usable clips"),
    ({"a/x.wav": 1.0, "b/y.wav": (1.0, 8000)}, {}, "b/y.wav: expected sample rate 16000 Hz, got 8000"),
    ({"a/x.wav": 1.0, "b/y.wav": "garbage"}, {}, "b/y.wav: not a readable audio file"),
])
def test_bad_class_folders_raise_one_data_error_each(tmp_path, layout, kwargs, message):
  for rel, spec in layout.items():
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec is None:
      path.write_text("notes")
    elif spec == "garbage":
      path.write_bytes(b"not audio at all")
    elif isinstance(spec, tuple):
      _wav(path, *spec)
    else:
      _wav(path, spec)
  with pytest.raises(DataError, match=message):
    cf.list_clips(tmp_path, CFG, **kwargs)


def test_missing_root(tmp_path):
  with pytest.raises(DataError, match="folder not found"):
    cf.list_clips(tmp_path / "nope", CFG)


def test_librispeech_speakers_load_as_ten_classes():
  root = shared_path("data", "librispeech_test_other")
  cfg = cf.ClipConfig(LogMelConfig(n_fft=512, hop_length=160, n_mels=64), clip_seconds=2.0)
  records, classes = cf.list_clips(root, cfg)
  assert len(classes) == 10 and all(name.isdigit() for name in classes)
  assert sorted({r.label for r in records}) == list(range(10))
  assert all(len({r.path for r in records if r.label == c}) == 10 for c in range(10))
  batch = next(iter(cf.class_loader(records, cfg, batch_size=4, seed=0, normalization=None)))
  chex.assert_shape(batch["spectrogram"], (4, 64, 201))
  assert np.isfinite(batch["spectrogram"]).all()
