"""End to end on synthetic machine sounds: train briefly, score, and anomalies must score higher.

One machine type with clear faults (`min_severity`) keeps this to about a minute on a 2-core CPU; the
demo (`make demo`) runs the full-width model on the default, harder set.
"""
import csv
import json

import pytest

from conftest import smoke_config
from vqax import run
from vqax.data.synth_dcase import generate_dcase
from vqax.tasks.vqvae.scoring import score_workdir

EPOCHS, CHANNELS, LATENT, CODES = 100, (8, 16, 16), 16, 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("anomaly")
  data = root / "data"
  generate_dcase(data, seed=0, machine_types=("fan",), machine_ids=(0,), n_train=24, n_test_normal=10,
                 n_test_anomaly=10, seconds=4.0, min_severity=0.9)
  config = smoke_config(data, epochs=EPOCHS, n_patches=4, stride=16, batch_size=8, log_every_steps=50,
                        checkpoint_every_steps=1000, phase1_epochs=1, phase3_epochs=2, learning_rate=2e-3,
                        warmup_steps=10)
  config.model.encoder_channels, config.model.latent_dim, config.model.num_embeddings = CHANNELS, LATENT, CODES
  config.score.stride = 16
  summary = run.train(config, root / "work", progress=False)
  result = score_workdir(root / "work", method="both", verbose=False)
  return root / "work", summary, result


def test_training_lowers_the_reconstruction_loss(trained):
  _, summary, _ = trained
  history = summary["history"]
  assert summary["final_step"] == summary["total_steps"]
  full = [h for h in history if h["phase"] != "vq_only"]
  assert full[-1]["recon_loss"] < full[0]["recon_loss"]


def test_anomalies_score_higher_than_normals(trained):
  _, _, result = trained
  fan = result["reports"]["recon"]["machine_types"]["fan"]
  assert fan["mean"]["auc"] > 0.7, fan


def test_scoring_writes_dcase_csvs_json_and_roc(trained):
  workdir, _, result = trained
  scores = workdir / "scores"
  rows = list(csv.reader(open(scores / "anomaly_score_fan_id_00.csv")))
  assert len(rows) == 20 and all(r[0].endswith(".wav") and float(r[1]) == float(r[1]) for r in rows)
  assert (scores / "recon" / "anomaly_score_fan_id_00.csv").is_file()
  assert (scores / "roc_fan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  saved = json.loads((scores / "results.json").read_text())
  assert set(saved["reports"]) == {"density", "recon"} and saved["checkpoint_step"] == result["checkpoint_step"]
