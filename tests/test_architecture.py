"""The house rules: packages import downwards only, and a task is one directory plus one registry line."""
import ast
import json
import os
import shutil
import subprocess
import sys

from conftest import REPO

# Lowest first. A module may import its own package and anything below it, nothing above.
LAYERS = ["errors", "stop_signals", "commands", "platforms", "audio", "ops", "models", "config_loading", "data", "eval", "train",
          "tasks", "planning", "run", "cli"]


def _imports():
  """{(importing package, imported package): first file} over every import in vqax/, function-level too."""
  edges = {}
  for path in sorted((REPO / "vqax").rglob("*.py")):
    parts = path.relative_to(REPO).with_suffix("").parts
    if len(parts) < 2 or parts[1] == "__init__":
      continue
    me = parts[1]
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names] if node.module == "vqax" else [node.module]
      else:
        continue
      for name in names:
        bits = name.split(".")
        if bits[0] == "vqax" and len(bits) > 1 and bits[1] != me:
          edges.setdefault((me, bits[1]), str(path.relative_to(REPO)))
  return edges


def test_every_package_has_a_layer():
  packages = {p.stem if p.is_file() else p.name for p in (REPO / "vqax").iterdir()
              if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
  assert packages == set(LAYERS), f"add new packages to LAYERS: {sorted(packages ^ set(LAYERS))}"


def test_imports_point_downwards_only():
  rank = {name: i for i, name in enumerate(LAYERS)}
  upward = [f"{src} imports vqax.{dst} ({where})" for (src, dst), where in _imports().items()
            if dst in rank and rank[dst] >= rank[src]]
  assert not upward, "upward or same-layer imports:\n" + "\n".join(upward)


def test_generic_code_names_no_task():
  """The trainer, planner and CLI find tasks through the registry only."""
  task_names = ["vqvae", "redimnet", "VQVAE", "ReDimNet"]
  for folder in ("train", "planning"):
    for path in (REPO / "vqax" / folder).rglob("*.py"):
      code = path.read_text()
      found = [name for name in task_names if f"import {name}" in code or f"tasks.{name}" in code]
      assert not found, f"{path} names {found}"


def test_an_example_task_is_one_directory_plus_one_registry_line(tmp_path):
  """Copy the package, add tests/example_task as vqax/tasks/linear_probe and one line to the registry,
  then train, resume and plan it through the ordinary CLI."""
  package = tmp_path / "vqax"
  shutil.copytree(REPO / "vqax", package, ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copytree(REPO / "tests" / "example_task", package / "tasks" / "linear_probe")
  registry = package / "tasks" / "__init__.py"
  text = registry.read_text()
  line = '    "linear_probe": "vqax.tasks.linear_probe.task:LinearProbeTask",\n'
  registry.write_text(text.replace("REGISTRY = {\n", "REGISTRY = {\n" + line, 1))
  config = package / "tasks" / "linear_probe" / "config.py"
  env = dict(os.environ, PYTHONPATH=str(tmp_path), JAX_PLATFORMS="cpu")

  def vqax(*args):
    proc = subprocess.run([sys.executable, "-m", "vqax.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout

  out = vqax("train", "--config", str(config), "--workdir", str(tmp_path / "run"), "--no_progress", "--max_steps", "6")
  assert "trained to step 6/" in out
  out = vqax("train", "--config", str(config), "--workdir", str(tmp_path / "run"), "--no_progress")
  assert "resumed from" in out
  last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["accuracy"] > 0.9  # the probe separates the two Gaussian classes it was trained on
  out = vqax("plan", "--config", str(config), "--variants", "plain,accumulation", "--budget", "1MiB")
  assert "compiled peak" in out and "batch_size x accum." in out
  assert "vqax train --config" in out  # the fitted command line, from the generic planner
