"""The command line: one-line errors for user mistakes, and the train -> score path."""
import subprocess
import sys

import pytest

from conftest import REPO, write_noise_tree
from vqax import cli


def run_cli(capsys, *argv):
  code = cli.main(list(argv))
  captured = capsys.readouterr()
  return code, captured.out, captured.err


@pytest.mark.parametrize("extra, message", [
    (["--data_root", "/nonexistent/dcase"], "data_root /nonexistent/dcase: folder not found"),
    (["--batch_size", "0"], "batch_size=0: expected a positive integer"),
    (["--n_patches", "-1"], "n_patches=-1: expected a positive integer"),
    (["--config.remat_policy=sometimes"], "remat_policy='sometimes': expected one of"),
    (["--config.batch_size=eight"], "--config.batch_size=eight: expected an integer"),
    (["--config.no_such_field=1"], "--config.no_such_field: no such config field"),
    (["--machine_type", "valve"], "machine_type 'valve' not found"),
    (["--stride", "100000"], "stride=100000 frames exceeds the shortest training clip"),
    (["--device", "abacus"], "device='abacus': expected auto, cpu, gpu or tpu"),
])
def test_bad_options_give_one_line_errors(capsys, tmp_path, extra, message):
  data = write_noise_tree(tmp_path / "data", machine_types=("fan",), n_train=2)
  code, out, err = run_cli(capsys, "train", "--config", str(REPO / "configs/vqvae_dcase.py:smoke"),
                           "--workdir", str(tmp_path / "work"), "--data_root", str(data), *extra)
  assert code == 2
  assert message in err, err
  assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_config_and_unknown_variant(capsys, tmp_path):
  code, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path))
  assert code == 2 and "config file not found" in err
  code, _, err = run_cli(capsys, "train", "--config", str(REPO / "configs/vqvae_dcase.py:huge"),
                         "--workdir", str(tmp_path))
  assert code == 2 and "unknown variant 'huge'" in err


def test_unwritable_workdir(capsys, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  code, _, err = run_cli(capsys, "train", "--config", str(REPO / "configs/vqvae_dcase.py:smoke"),
                         "--workdir", str(blocker / "work"))
  assert code == 2 and "not writable" in err


def test_score_without_training(capsys, tmp_path):
  code, _, err = run_cli(capsys, "score", "--workdir", str(tmp_path))
  assert code == 2 and "no config.json" in err


def test_console_script_reports_errors_without_traceback(tmp_path):
  result = subprocess.run([sys.executable, "-m", "vqax.cli", "train", "--workdir", str(tmp_path / "w"),
                           "--data_root", str(tmp_path / "missing")], capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 2
  assert result.stderr.strip().startswith("vqax: error: data_root") and "Traceback" not in result.stderr
