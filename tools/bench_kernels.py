"""GFLOP/s of the two primitives every train step here is made of, in XLA:CPU and PyTorch, float32 and bfloat16.

  python -m tools.bench_kernels                   # table + docs/bench_kernels.json
  python -m tools.bench_kernels --repeats 9

Why: `tools/bench_train.py` says how fast a step is; this says what the host's kernels allow. A step can
not run faster than its matmuls, and when PyTorch's matmul (oneDNN / MKL) is faster than XLA:CPU's on a
host, or runs bfloat16 on the CPU's matrix units (Intel AMX) while XLA:CPU does not, that bounds every
ratio in bench_train's table. Measured, per dtype: a square matmul and a 3x3 stride-1 convolution of
VQ-VAE-decoder-like size (channels-last in both frameworks), forward only, and the two matmul shapes the
VQ-VAE's largest layer (the last upsampling, 256 patches) spends its backward pass in: "tall matmul",
[M, a] @ [a, b] with M ~ 280,000 rows (the input gradient's dy @ [all taps' W^T]), and "kernel-grad
matmul", [M, a]^T @ [M, b], contracting the rows (a tap's x^T @ dy). Median of `--repeats` calls timed in
turns across the runners of a dtype; "vqax conv" is `vqax.ops.conv.conv` (the form the models use,
chosen by shape). XLA_FLAGS and GLIBC_TUNABLES (huge pages: `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, as
`vqax` runs; see `vqax.ops.host_allocator`), if set, are recorded with the figures.
Needs the torch extra (`pip install -e '.[torch]'`).
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def interleaved_medians(fns: list, repeats: int) -> list[float]:
  """Median seconds per call of each fn, timed in turns (one call each per round) after one untimed call,
  so that the host's drift between seconds falls on every fn alike."""
  for fn in fns:
    fn()
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, fn_times in zip(fns, times):
      start = time.perf_counter()
      fn()
      fn_times.append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


# The VQ-VAE's last upsampling layer at 256 patches: its phase convolution's input gradient reads
# [256 * 33 * 33, 128] output-gradient rows (TALL), each kernel-gradient tap [256 * 32 * 32, 64] input rows
# against as many 128-channel gradient rows (KERNEL_GRAD).
TALL_MATMUL = (256 * 33 * 33, 128, 256)
KERNEL_GRAD_MATMUL = (256 * 32 * 32, 64, 128)


def measure(m: int, conv_shape: tuple, repeats: int) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from vqax.ops.conv import conv as vqax_conv

  n, h, w, cin, cout = conv_shape
  matmul_flop, conv_flop = 2 * m**3, 2 * n * h * w * cin * cout * 9
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((m, m), np.float32), rng.standard_normal((m, m), np.float32)
  x, k = rng.standard_normal((n, h, w, cin), np.float32), rng.standard_normal((3, 3, cin, cout), np.float32)
  rows_t, a_t, b_t = TALL_MATMUL
  tall_l, tall_r = rng.standard_normal((rows_t, a_t), np.float32), rng.standard_normal((a_t, b_t), np.float32)
  rows_g, a_g, b_g = KERNEL_GRAD_MATMUL
  grad_l, grad_r = rng.standard_normal((rows_g, a_g), np.float32), rng.standard_normal((rows_g, b_g), np.float32)
  tall_flop, grad_flop = 2 * rows_t * a_t * b_t, 2 * rows_g * a_g * b_g
  rows = []
  for name, jdtype, tdtype in (("float32", jnp.float32, torch.float32), ("bfloat16", jnp.bfloat16, torch.bfloat16)):
    ja, jb, jx, jk, jtl, jtr, jgl, jgr = (jnp.asarray(v, jdtype)
                                          for v in (a, b, x, k, tall_l, tall_r, grad_l, grad_r))
    matmul = jax.jit(jnp.matmul)
    rows_contracted = jax.jit(lambda l, r: jax.lax.dot_general(l, r, (((0,), (0,)), ((), ()))))
    xla_conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                                 dimension_numbers=("NHWC", "HWIO", "NHWC")))
    own_conv = jax.jit(lambda x, k: vqax_conv(x, k, (1, 1), ((1, 1), (1, 1))))
    ta, tb = torch.from_numpy(a).to(tdtype), torch.from_numpy(b).to(tdtype)
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).to(tdtype)  # NCHW view of NHWC memory: channels_last
    tk = torch.from_numpy(k).permute(3, 2, 0, 1).contiguous().to(tdtype)
    ttl, ttr, tgl, tgr = (torch.from_numpy(v).to(tdtype) for v in (tall_l, tall_r, grad_l, grad_r))
    cases = [
        ("matmul", "XLA", matmul_flop, lambda: matmul(ja, jb).block_until_ready()),
        ("matmul", "torch", matmul_flop, lambda: torch.matmul(ta, tb)),
        ("3x3 conv", "XLA", conv_flop, lambda: xla_conv(jx, jk).block_until_ready()),
        ("3x3 conv", "vqax conv", conv_flop, lambda: own_conv(jx, jk).block_until_ready()),
        ("3x3 conv", "torch", conv_flop, lambda: torch.nn.functional.conv2d(tx, tk, padding=1)),
        ("tall matmul", "XLA", tall_flop, lambda: matmul(jtl, jtr).block_until_ready()),
        ("tall matmul", "torch", tall_flop, lambda: torch.matmul(ttl, ttr)),
        ("kernel-grad matmul", "XLA", grad_flop, lambda: rows_contracted(jgl, jgr).block_until_ready()),
        ("kernel-grad matmul", "torch", grad_flop, lambda: torch.matmul(tgl.T, tgr)),
    ]
    with torch.no_grad():
      medians = interleaved_medians([fn for *_, fn in cases], repeats)
    for (op, runner, flop, _), seconds in zip(cases, medians):
      rows.append({"op": op, "runner": runner, "dtype": name, "seconds": seconds, "gflop_per_s": flop / seconds / 1e9})
  return rows


def table(rows: list[dict]) -> str:
  torch_rate = {(r["op"], r["dtype"]): r["gflop_per_s"] for r in rows if r["runner"] == "torch"}
  f32_rate = {(r["op"], r["runner"]): r["gflop_per_s"] for r in rows if r["dtype"] == "float32"}
  lines = ["| op | runner | dtype | ms | GFLOP/s | vs torch, same dtype | vs its own float32 |",
           "|---|---|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['op']} | {r['runner']} | {r['dtype']} | {1000 * r['seconds']:.1f} | {r['gflop_per_s']:.0f} | "
                 f"{r['gflop_per_s'] / torch_rate[r['op'], r['dtype']]:.2f}x | "
                 f"{r['gflop_per_s'] / f32_rate[r['op'], r['runner']]:.2f}x |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--matmul", type=int, default=2048, help="square matmul size")
  parser.add_argument("--conv", default="64,32,32,64,128", help="N,H,W,Cin,Cout of the 3x3 convolution")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--json", default=str(REPO / "docs" / "bench_kernels.json"))
  args = parser.parse_args(argv)
  try:
    conv_shape = tuple(int(v) for v in args.conv.split(","))
    if len(conv_shape) != 5 or min(conv_shape) < 1:
      raise ValueError
  except ValueError:
    parser.error(f"--conv {args.conv!r}: expected five positive integers N,H,W,Cin,Cout")
  from tools.bench_train import machine
  rows = measure(args.matmul, conv_shape, args.repeats)
  xla_flags, tunables, host = os.environ.get("XLA_FLAGS", ""), os.environ.get("GLIBC_TUNABLES", ""), machine()
  print(f"{host}; XLA_FLAGS={xla_flags!r}; GLIBC_TUNABLES={tunables!r}; matmul {args.matmul}^3, "
        f"conv {conv_shape} (N,H,W,Cin,Cout), tall matmul {TALL_MATMUL} and kernel-grad matmul "
        f"{KERNEL_GRAD_MATMUL} (M,a,b), median of {args.repeats}")
  print(table(rows))
  if args.json:
    record = {"machine": host, "xla_flags": xla_flags, "glibc_tunables": tunables, "date": time.strftime("%Y-%m-%d"),
              "matmul": args.matmul, "conv": conv_shape, "tall_matmul": TALL_MATMUL,
              "kernel_grad_matmul": KERNEL_GRAD_MATMUL, "repeats": args.repeats, "rows": rows}
    pathlib.Path(args.json).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
