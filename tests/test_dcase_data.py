"""DCASE layout, features, normalisation stats, patching and the grain loader."""
import pathlib

import numpy as np
import pytest
import soundfile as sf

from conftest import shared_path
from vqax.audio.features import LogMelConfig, log_mel
from vqax.data import dcase, dcase_loader
from vqax.errors import ConfigError, DataError


def write_clip(path: pathlib.Path, seconds=3.0, rate=16000, seed=0, channels=1):
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  wave = (rng.standard_normal((int(seconds * rate), channels)) * 0.05).astype(np.float32)
  sf.write(path, wave if channels > 1 else wave[:, 0], rate, subtype="PCM_16")


@pytest.fixture
def tiny_tree(tmp_path):
  for machine_type in ("fan", "pump"):
    for i in range(5):
      write_clip(tmp_path / machine_type / "train" / f"normal_id_00_{i:08d}.wav", seed=i)
    write_clip(tmp_path / machine_type / "test" / "normal_id_00_00000000.wav", seed=10)
    write_clip(tmp_path / machine_type / "test" / "anomaly_id_00_00000000.wav", seed=11)
  return tmp_path


def test_listing_parses_names_and_resolves_machine_types(tiny_tree):
  assert dcase.resolve_machine_types(tiny_tree, "all") == ["fan", "pump"]
  assert dcase.resolve_machine_types(tiny_tree, "pump") == ["pump"]
  test = dcase.list_clips(tiny_tree, ["fan"], "test")
  assert [(r.label, r.machine_id, r.split) for r in test] == [(1, "00", "test"), (0, "00", "test")]
  with pytest.raises(ConfigError, match="machine_type 'valve' not found.*available: fan, pump"):
    dcase.resolve_machine_types(tiny_tree, "valve")
  with pytest.raises(DataError, match="folder not found"):
    dcase.resolve_machine_types(tiny_tree / "missing", "all")


def test_log_mel_shape_and_frames():
  wave = np.random.default_rng(0).standard_normal(160000).astype(np.float32)
  features = log_mel(wave)
  assert features.shape == (64, 313) and features.dtype == np.float32
  assert np.all(np.isfinite(features))


def test_patch_starts_sampling_and_repetition():
  np.testing.assert_array_equal(dcase.patch_starts(313, 64), [0, 64, 128, 192])
  np.testing.assert_array_equal(dcase.patch_starts(64, 10), [0])
  rng = np.random.default_rng(0)
  # More candidates than needed: distinct, sorted, all on the stride grid.
  starts = dcase.sample_patch_starts(313, 16, 5, rng)
  assert len(set(starts.tolist())) == 5 and np.all(np.diff(starts) > 0) and np.all(starts % 16 == 0)
  # Fewer candidates than needed: every candidate appears, then repeats fill up.
  starts = dcase.sample_patch_starts(313, 64, 10, rng)
  assert len(starts) == 10 and set(starts.tolist()) == {0, 64, 128, 192}
  features = np.arange(64 * 200, dtype=np.float32).reshape(64, 200)
  patches = dcase.cut_patches(features, np.array([0, 100]))
  assert patches.shape == (2, 64, 64, 1)
  np.testing.assert_array_equal(patches[1, :, :, 0], features[:, 100:164])
  with pytest.raises(DataError, match="shorter than one 64-frame patch"):
    dcase.patch_starts(40, 8)


def test_norm_stats_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  arrays = [rng.normal(3.0, 2.0, (64, 50)).astype(np.float32) for _ in range(4)]
  stats = dcase.compute_norm_stats({"fan": arrays})
  dcase.save_norm_stats(tmp_path / "stats.json", stats)
  loaded = dcase.load_norm_stats(tmp_path / "stats.json", ["fan"])
  stacked = np.concatenate(arrays, axis=1)
  np.testing.assert_allclose(loaded["fan"]["mean"], stacked.mean(axis=1), rtol=1e-5)
  np.testing.assert_allclose(loaded["fan"]["std"], stacked.std(axis=1), rtol=1e-5)
  normalised = dcase.normalize(stacked, loaded["fan"])
  np.testing.assert_allclose(normalised.mean(axis=1), 0, atol=1e-4)
  with pytest.raises(DataError, match="no statistics for machine type"):
    dcase.load_norm_stats(tmp_path / "stats.json", ["pump"])


def test_precomputed_npy_variant_and_feature_cache(tmp_path, tiny_tree):
  record = dcase.list_clips(tiny_tree, ["fan"], "train")[0]
  from_wav = dcase.load_features(record)
  npy_root = tmp_path / "npy_tree"
  npy = npy_root / "fan" / "train" / "normal_id_00_00000000.npy"
  npy.parent.mkdir(parents=True)
  np.save(npy, from_wav)
  npy_record = dcase.list_clips(npy_root, ["fan"], "train")[0]
  assert npy_record.path.endswith(".npy")
  np.testing.assert_array_equal(dcase.load_features(npy_record), from_wav)
  cached = dcase.load_features(record, cache_dir=tmp_path / "cache")
  assert list((tmp_path / "cache").rglob("*.npy"))
  np.testing.assert_array_equal(dcase.load_features(record, cache_dir=tmp_path / "cache"), cached)


def _loader(records, stats, **kw):
  return dcase_loader.train_loader(records, stats, batch_size=3, n_patches=4, stride=16, seed=7, **kw)


def test_loader_is_deterministic_and_resumes_at_the_next_batch(tiny_tree):
  records = dcase.list_clips(tiny_tree, ["fan", "pump"], "train")
  feats = {}
  for r in records:
    feats.setdefault(r.machine_type, []).append(dcase.load_features(r))
  stats = {m: {k: np.asarray(v[k], np.float32) for k in ("mean", "std")}
           for m, v in dcase.compute_norm_stats(feats).items()}
  first = iter(_loader(records, stats))
  batches = [next(first)["patches"] for _ in range(5)]
  assert batches[0].shape == (3, 4, 64, 64, 1) and batches[0].dtype == np.float32
  again = iter(_loader(records, stats))
  for expected in batches:
    np.testing.assert_array_equal(next(again)["patches"], expected)
  # Save the iterator after 2 batches; a fresh iterator restored from it yields batch 3 onwards.
  resumed_from = iter(_loader(records, stats))
  next(resumed_from), next(resumed_from)
  state = resumed_from.get_state()
  fresh = iter(_loader(records, stats))
  fresh.set_state(state)
  for expected in batches[2:]:
    np.testing.assert_array_equal(next(fresh)["patches"], expected)
  other_seed = iter(dcase_loader.train_loader(records, stats, batch_size=3, n_patches=4, stride=16, seed=8))
  assert not np.array_equal(next(other_seed)["patches"], batches[0])


@pytest.mark.parametrize("writer, message", [
    (lambda p: p.write_bytes(b""), "not a readable audio file"),
    (lambda p: p.write_text("this is not audio"), "not a readable audio file"),
    (lambda p: write_clip(p, rate=8000), "expected sample rate 16000 Hz, got 8000 Hz"),
    (lambda p: write_clip(p, seconds=0.5), "need at least"),
])
def test_bad_clips_are_named_in_one_line(tmp_path, writer, message):
  path = tmp_path / "fan" / "train" / "normal_id_00_00000000.wav"
  path.parent.mkdir(parents=True)
  writer(path)
  record = dcase.list_clips(tmp_path, ["fan"], "train")[0]
  with pytest.raises(DataError, match=message) as info:
    dcase.load_features(record)
  assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_npy_arrays_are_rejected(tmp_path):
  folder = tmp_path / "fan" / "train"
  folder.mkdir(parents=True)
  np.save(folder / "normal_id_00_00000000.npy", np.zeros((32, 100), np.float32))
  bad = np.zeros((64, 100), np.float32)
  bad[3, 4] = np.nan
  np.save(folder / "normal_id_00_00000001.npy", bad)
  wrong_shape, non_finite = dcase.list_clips(tmp_path, ["fan"], "train")
  with pytest.raises(DataError, match=r"expected a log-mel array of shape \[64, T\], got \[32, 100\]"):
    dcase.load_features(wrong_shape)
  with pytest.raises(DataError, match="NaN or Inf"):
    dcase.load_features(non_finite)


def test_empty_machine_folder_is_named(tmp_path):
  (tmp_path / "fan" / "train").mkdir(parents=True)
  with pytest.raises(DataError, match="fan/train: no clips named like"):
    dcase.list_clips(tmp_path, ["fan"], "train")


def test_reads_the_real_dcase_sample():
  root = shared_path("data", "dcase2020_id00_sample")
  types = dcase.resolve_machine_types(root, "all")
  assert types == ["unknown_machine"]
  train = dcase.list_clips(root, types, "train")
  test = dcase.list_clips(root, types, "test")
  assert len(train) == 60 and len(test) == 16 and sum(r.label for r in test) == 1
  features = dcase.load_features(train[0], LogMelConfig())
  assert features.shape == (64, 313) and np.all(np.isfinite(features))
  assert len(dcase.patch_starts(features.shape[1], 32)) == 8


def test_worker_process_matches_in_process_loading_and_resumes(tiny_tree):
  # Reading in a worker process changes where the work runs, not what comes out; the saved iterator
  # state (which records the worker count) resumes at the next batch. With several workers grain builds
  # each batch inside one worker, so the stream depends on worker_count but not on timing.
  records = dcase.list_clips(tiny_tree, ["fan"], "train")
  feats = {"fan": [dcase.load_features(r) for r in records]}
  stats = {m: {k: np.asarray(v[k], np.float32) for k in ("mean", "std")}
           for m, v in dcase.compute_norm_stats(feats).items()}
  in_process = iter(_loader(records, stats))
  expected = [next(in_process)["patches"] for _ in range(3)]
  worker = iter(_loader(records, stats, worker_count=1))
  np.testing.assert_array_equal(next(worker)["patches"], expected[0])
  state = worker.get_state()
  np.testing.assert_array_equal(next(worker)["patches"], expected[1])
  resumed = iter(_loader(records, stats, worker_count=1))
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["patches"], expected[1])
  np.testing.assert_array_equal(next(resumed)["patches"], expected[2])
