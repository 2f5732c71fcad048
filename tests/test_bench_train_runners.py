"""tools/bench_train.py's runner names: framework, precision and allocator read back from one string.

The benchmark itself needs torch (an optional extra) and minutes per case, so only its name handling is
tested here: a misread name would time one setting and label it as another.
"""

import pytest

from tools import bench_train


@pytest.mark.parametrize("runner, framework, bf16, allocator", [
    ("vqax", "vqax", False, ""),
    ("vqax plain", "vqax plain", False, ""),
    ("vqax bf16", "vqax", True, ""),
    ("vqax bf16 +huge pages", "vqax", True, bench_train.HUGE),
    ("torch eager +kept memory", "torch eager", False, bench_train.KEPT),
    ("torch.compile bf16 +kept memory", "torch.compile", True, bench_train.KEPT),
    ("vqax plain bf16", "vqax plain", True, ""),
])
def test_runner_name_parts(runner, framework, bf16, allocator):
  assert bench_train.framework(runner) == framework
  assert bench_train.is_bf16(runner) is bf16
  assert bench_train.allocator(runner) == allocator


def test_unknown_runner_is_named(capsys):
  with pytest.raises(SystemExit):
    bench_train.main(["--runners", "vqax bf16 +huge pages,torch eager fp16", "--json", ""])
  err = capsys.readouterr().err
  assert "unknown torch eager fp16" in err and "vqax bf16 +huge pages" in err
