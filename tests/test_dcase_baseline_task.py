"""The DCASE2020 baseline autoencoder as a registered task: `vqax train`, resume, `vqax score`, `vqax plan`."""
import json

import chex
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO
from vqax import cli, config_loading, tasks
from vqax.data.synth_dcase import generate_dcase
from vqax.eval.references import context_vectors
from vqax.tasks.dcase_baseline.task import SampleContextVectors
from vqax.train.checkpointing import restore_trained
from vqax.train.task import DataInfo

SMOKE = str(REPO / "configs" / "dcase_baseline.py") + ":smoke"
EPOCHS = 20  # 24 clips / 8 per step = 3 steps an epoch: 60 steps


def vqax(capsys, *argv):
  code = cli.main(list(argv))
  captured = capsys.readouterr()
  assert code == 0, captured.err
  return captured.out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One machine with clear faults (as tests/test_anomaly_learning.py), trained in two parts and scored.
  Cached log-mels and epoch-end checkpoints only keep it short (measured: reading clips and checkpoints
  were 2/3 of the time)."""
  root = tmp_path_factory.mktemp("dcase_baseline")
  generate_dcase(root / "data", seed=0, machine_types=("fan",), machine_ids=(0,), n_train=24, n_test_normal=10,
                 n_test_anomaly=10, seconds=4.0, min_severity=0.9)
  argv = ["train", "--config", SMOKE, "--workdir", str(root / "work"), "--data_root", str(root / "data"),
          "--no_progress", "--epochs", str(EPOCHS), "--config.log_every_steps=3",
          "--config.checkpoint_every_steps=1000", f"--config.feature_cache_dir={root / 'features'}"]
  assert cli.main(argv + ["--max_steps", "6"]) == 0
  first = restore_trained(root / "work", "dcase_baseline", "test")
  assert cli.main(argv) == 0
  assert cli.main(["score", "--workdir", str(root / "work")]) == 0
  return root / "work", first


def test_smoke_config_trains_and_resumes_through_vqax_train(run):
  workdir, (_, first_state, first_step) = run
  config, state, step = restore_trained(workdir, "dcase_baseline", "test")
  assert first_step == 6 and step == EPOCHS * 3
  history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [h["step"] for h in history if "recon_loss" in h]
  assert steps == sorted(set(steps)) and steps[-1] == step  # resumed after step 6, no step logged twice
  losses = [h["recon_loss"] for h in history if "recon_loss" in h]
  assert losses[-1] < 0.8 * losses[0]  # the normalised features' variance is 1: it learned to reconstruct
  # BatchNorm running statistics live in model_state and moved on after the resume.
  stats = state["model_state"]["batch_stats"]["enc0"]["BatchNorm_0"]
  before = first_state["model_state"]["batch_stats"]["enc0"]["BatchNorm_0"]
  chex.assert_shape(stats["mean"], (int(config.model.hidden[0]),))
  assert not np.allclose(stats["mean"], before["mean"]) and np.all(np.asarray(stats["var"]) > 0)


def test_vqax_score_writes_the_table_and_ranks_faults_above_normals(run):
  workdir, _ = run
  scores = workdir / "scores"
  saved = json.loads((scores / "results.json").read_text())
  assert saved["scorers"] == ["dcase_ae"] and saved["checkpoint_step"] == EPOCHS * 3
  assert len(saved["clips"]) == 20 and sum(c["label"] for c in saved["clips"]) == 10
  rows = (scores / "anomaly_score_fan_id_00.csv").read_text().splitlines()
  assert len(rows) == 20 and all(r.split(",")[0].endswith(".wav") for r in rows)
  assert (scores / "roc_fan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  fan = saved["reports"]["dcase_ae"]["machine_types"]["fan"]
  assert fan["mean"]["auc"] > 0.7, fan  # measured 0.83 (chance: 0.5)


def test_vqax_score_prints_the_table_and_rejects_other_options(run, capsys):
  workdir, _ = run
  out = vqax(capsys, "score", "--workdir", str(workdir), "--out", str(workdir / "again"))
  assert "dcase_ae AUC" in out and "fan           id_00" in out and "all types" in out
  code = cli.main(["score", "--workdir", str(workdir), "--method", "recon"])
  err = capsys.readouterr().err
  assert code == 2 and "'--method' is not a scoring option" in err and err.count("\n") == 1


def test_vqax_plan_compiles_the_smoke_config(capsys):
  out = vqax(capsys, "plan", "--config", SMOKE, "--variants", "plain,remat")
  assert "compiled peak" in out and "remat" in out


def test_the_optimizer_is_plain_adam_at_a_constant_rate():
  config = config_loading.load_config(SMOKE)
  program = tasks.create(config).build(DataInfo(steps_per_epoch=3), "cpu")
  tx, schedule = program.make_optimizer(1000)
  assert float(schedule(0)) == float(schedule(999)) == pytest.approx(3e-3)
  params = {"w": jnp.arange(4.0)}
  grads = {"w": jnp.array([0.5, -1.0, 2.0, 0.0])}
  ours, _ = tx.update(grads, tx.init(params), params)
  adam = optax.adam(3e-3)
  reference, _ = adam.update(grads, adam.init(params), params)
  chex.assert_trees_all_close(ours, reference)


def test_non_adam_settings_are_one_line_errors(capsys, tmp_path):
  code = cli.main(["train", "--config", SMOKE, "--workdir", str(tmp_path), "--config.weight_decay=0.01"])
  err = capsys.readouterr().err
  assert code == 2 and "weight_decay=0.01: the dcase_baseline task trains with plain Adam" in err


def test_sampled_vectors_are_context_vectors_of_the_clip():
  features = np.random.default_rng(0).normal(size=(64, 40)).astype(np.float32)
  sampled = SampleContextVectors(frames=5, count=12).random_map({"features": features}, np.random.default_rng(1))
  chex.assert_shape(sampled["vectors"], (12, 320))
  chex.assert_type(sampled["vectors"], jnp.float32)
  every = context_vectors(features, 5)
  rows = [np.flatnonzero(np.all(every == v, axis=1)) for v in sampled["vectors"]]
  assert all(len(r) == 1 for r in rows) and len({int(r[0]) for r in rows}) == 12  # distinct rows of the clip
