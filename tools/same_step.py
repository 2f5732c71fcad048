"""Do two checkouts compile the same train step? The optimized HLO of bench_train's vqax step, side by side.

  python -m tools.same_step --baseline_tree /tmp/prev --cases vqvae_16x16,redimnet_b0

Why: a refactor that must not change speed is best checked where speed comes from. On a shared 2-core host
step timings drift by tens of percent between minutes; two programs whose optimized HLO is the same
instruction for instruction run the same work by construction. Each tree compiles the step in its own
process (its own vqax and its own tools/bench_train.py); the texts are compared after removing what names
them rather than what they compute: source locations, and the names of jitted functions and Python scopes.
Exits 1 when a case differs and writes both texts beside --out for a diff.
"""
import argparse
import hashlib
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

_DUMP = r"""
import importlib.util, pathlib, sys
tree, case, out = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
sys.path[:0] = [str(tree), str(tree / "tools")]
spec = importlib.util.spec_from_file_location("tree_bench_train", tree / "tools" / "bench_train.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
import vqax
assert pathlib.Path(vqax.__file__).resolve().is_relative_to(tree.resolve()), vqax.__file__
from vqax.train import sharding, trainer
task_name, overrides, _, _ = bench.CASES[case]
config = bench.bench_config(task_name, overrides)
t, _, state = bench.initial_state(config, task_name)
batch = sharding.global_batch(t.mesh, bench.make_batch(task_name, config))
step = t.compile_train_step(trainer.phase_at(t.phases, 0))
pathlib.Path(out).write_text(step.lower(state, batch).compile().as_text())
"""


def normalized(text: str) -> str:
  """The HLO without source locations and without the names of Python functions, classes and scopes."""
  if "\nFileNames" in text:  # the stack-frame tables: file, function and line of every op
    start = text.index("\nFileNames")
    text = text[:start] + text[text.index("\n\n", text.index("\nStackFrames")):]
  text = re.sub(r", metadata=\{[^}]*\}", "", text)
  text = re.sub(r", stack_frame_id=\d+", "", text)
  text = re.sub(r"^HloModule [^,\n]*", "HloModule m", text, flags=re.M)
  text = re.sub(r"jit_[A-Za-z0-9_]+?_(?=[.\d])", "jit_", text)  # jit_train_step_ / jit_step_ ...
  return re.sub(r"%[A-Za-z]\w*?__(\w+)", r"%SCOPE__\1", text)  # e.g. %VQVAETask__track_codes


def compiled_text(tree: pathlib.Path, case: str, out: pathlib.Path) -> str:
  subprocess.run([sys.executable, "-c", _DUMP, str(tree), case, str(out)], check=True, cwd=tree)
  return out.read_text()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--baseline_tree", required=True, help="the other checkout, e.g. `git worktree add /tmp/prev HEAD~1`")
  parser.add_argument("--cases", default="vqvae_16x16,redimnet_b0", help="bench_train cases")
  parser.add_argument("--out", default="/tmp/vqax-same-step", help="folder for the HLO texts")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  differ = []
  for case in args.cases.split(","):
    texts = {name: normalized(compiled_text(tree, case, out / f"{case}.{name}.hlo"))
             for name, tree in (("baseline", pathlib.Path(args.baseline_tree)), ("this", REPO))}
    same = texts["baseline"] == texts["this"]
    digest = {name: hashlib.sha256(t.encode()).hexdigest()[:12] for name, t in texts.items()}
    print(f"{case}: {'same' if same else 'DIFFERENT'} optimized HLO (baseline {digest['baseline']}, "
          f"this tree {digest['this']}, {len(texts['this'].splitlines())} lines)", flush=True)
    if not same:
      differ.append(case)
      for name, text in texts.items():
        (out / f"{case}.{name}.normalized.hlo").write_text(text)
  return 1 if differ else 0


if __name__ == "__main__":
  sys.exit(main())
