"""`vqax score` end to end: VQ-VAE scorers and references in one table, one ROC PNG, one results.json."""
import json

import pytest

from conftest import shared_path, smoke_config
from vqax.data.synth_dcase import generate_dcase
from vqax.errors import ConfigError
from vqax import run
from vqax.tasks.vqvae.scoring import score_workdir

SCORERS = ["latent", "density", "recon", "pca", "dcase_ae"]
QUICK_REFERENCES = ["--config.score.references=pca,dcase_ae", "--config.score.baseline_epochs=2"]


def train_smoke(data_root, workdir, **overrides):
  config = smoke_config(data_root, log_every_steps=100, checkpoint_every_steps=1000, **overrides)
  run.train(config, workdir, progress=False)
  return workdir


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("scoring")
  generate_dcase(root / "data", seed=0, machine_types=("valve",), machine_ids=(0, 2), n_train=8, n_test_normal=4,
                 n_test_anomaly=4, seconds=3.0, min_severity=0.8)
  return train_smoke(root / "data", root / "work", epochs=2, phase3_epochs=0)


def test_score_prints_one_table_and_draws_one_roc_per_type_with_every_scorer(synthetic_run, capsys):
  result = score_workdir(synthetic_run, method="all", overrides=QUICK_REFERENCES)
  table = capsys.readouterr().out
  header = next(line for line in table.splitlines() if line.startswith("machine type"))
  for scorer in SCORERS:
    assert f"{scorer} AUC" in header and f"{scorer} pAUC" in header
  assert "valve         id_00" in table and "all types" in table
  scores = synthetic_run / "scores"
  assert (scores / "roc_valve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  saved = json.loads((scores / "results.json").read_text())
  assert saved["scorers"] == SCORERS == list(saved["reports"])
  assert saved["best"] in SCORERS and saved["primary"] == "latent"
  for scorer in SCORERS:
    folder = scores if scorer == "latent" else scores / scorer
    assert len((folder / "anomaly_score_valve_id_02.csv").read_text().splitlines()) == 8
  assert len(saved["clips"]) == 16 and all(set(SCORERS) <= set(c) for c in saved["clips"])
  assert result["reports"]["pca"]["machine_types"]["valve"]["ids"]["id_00"]["n_anomaly"] == 4


def test_score_options_come_from_score_overrides_only(synthetic_run):
  with pytest.raises(ConfigError, match="not a scoring option"):
    score_workdir(synthetic_run, overrides=["--config.learning_rate=1"], verbose=False)
  with pytest.raises(ConfigError, match="score.references"):
    score_workdir(synthetic_run, overrides=["--config.score.references=svm"], verbose=False)
  with pytest.raises(ConfigError, match="score.density_model"):
    score_workdir(synthetic_run, overrides=["--config.score.density_model=hmm"], verbose=False)


def test_real_dcase_sample_goes_through_the_same_scoring(tmp_path):
  """60 train normals, 15 test normals and 1 anomaly of one real machine (shared/data): every scorer ranks
  the anomaly among the normals; the ranks are printed (1 = scored highest of all 16 test clips)."""
  data = shared_path("data", "dcase2020_id00_sample")
  workdir = train_smoke(data, tmp_path / "work", epochs=2, phase3_epochs=0, batch_size=8)
  result = score_workdir(workdir, method="all", overrides=QUICK_REFERENCES, verbose=False)
  clips = result["clips"]
  assert len(clips) == 16 and sum(c["label"] for c in clips) == 1
  ranks = {}
  for scorer in SCORERS:
    anomaly = next(c[scorer] for c in clips if c["label"] == 1)
    ranks[scorer] = 1 + sum(c[scorer] > anomaly for c in clips if c["label"] == 0)
  print("rank of the anomaly among 16 test clips:", ranks)
  assert all(1 <= r <= 16 for r in ranks.values())
  # PCA is deterministic given the data (no training): the louder, anomalous clip lies off the normals'
  # subspace more than all but at most two normals (measured: rank 2).
  assert ranks["pca"] <= 3, ranks
