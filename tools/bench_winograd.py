"""Would Winograd convolution make the VQ-VAE's phase convolutions faster on this host? Timed against vqax's.

  python -m tools.bench_winograd                  # table + docs/bench_winograd.json
  python -m tools.bench_winograd --cases up2 --repeats 9
  python -m tools.bench_winograd --step_rounds 5   # also the VQ-VAE train step, up2's gradients by Winograd

Why: the VQ-VAE step is its convolutions, and on two cores it runs them near XLA:CPU's matmul speed, so a
faster step needs fewer FLOPs. Its up- and downsampling layers are 2x2 stride-1 convolutions (polyphase,
space-to-depth), and Winograd's F(3x3, 2x2) computes each 3x3 output tile from a 4x4 input tile with 16
multiplications instead of 36 (2.25x fewer): input tiles and kernels are transformed by small constant
matrices, multiplied per transform position (16 batched matmuls contracting the input channels), and the
products transformed back (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
Its gradients come from autodiff: the transposes of the same linear steps, again 16 batched matmuls.
This times, per VQ-VAE layer at 256 patches (float32): vqax's convolution (`vqax.ops.conv.conv`, the
forms the model uses), the Winograd form, and the Winograd form's matmuls alone: forward, and both
gradients without the forward (XLA drops the unused output), in turns (median of `--repeats`). Each case first checks that both forms agree.
With `--step_rounds`, it then times bench_train's VQ-VAE step (16 x 16 patches) as the models run it
against the same step with the up2 layer's two gradients computed by one Winograd vjp (this process
patches `vqax.ops.conv` for that, nothing else), compiled side by side and run in turns
(`tools/ab_step.py`).
Not used by the models: alone its gradients can be faster, but the step was slower (README, Performance).
"""
import argparse
import contextlib
import json
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]

# F(3, 2) with interpolation points 0, 1, -1 and infinity: y = A^T [(G g) * (B^T d)] for a 4-sample input
# tile d, a 2-tap kernel g and 3 outputs y_i = d_i g_0 + d_(i+1) g_1 (correlation, as convolutions here are).
WINOGRAD_AT = np.array([[1, 1, 1, 0], [0, 1, -1, 0], [0, 1, 1, 1]], np.float32)
WINOGRAD_G = np.array([[-1, 0], [0.5, 0.5], [0.5, -0.5], [0, 1]], np.float32)
WINOGRAD_BT = np.array([[-1, 0, 1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]], np.float32)
TILE_OUT, TILE_IN = 3, 4

# The VQ-VAE's largest 2x2 convolutions at batch 16 x 16 patches: (x shape, output channels, padding).
WINOGRAD_STEP = "winograd gradients (up2)"
CASES = {
    "up2": ((256, 32, 32, 64), 128, ((1, 1), (1, 1))),    # decoder's last upsampling, 64 -> 4 phases x 32
    "up1": ((256, 16, 16, 96), 256, ((1, 1), (1, 1))),    # 96 -> 4 phases x 64
    "down1": ((256, 17, 17, 128), 64, ((0, 0), (0, 0))),  # encoder's space-to-depth 4 x 32 -> 64
}


def _combine(parts, coefficients):
  """sum_i coefficients[i] * parts[i], skipping zeros and multiplying only where needed (one fused loop)."""
  total = None
  for part, c in zip(parts, coefficients):
    if c == 0:
      continue
    term = part if c == 1 else -part if c == -1 else part * c
    total = term if total is None else total + term
  return total


def input_tiles(x, tiles_h, tiles_w):
  """[N, H, W, C] (padded, covering every tile) -> V = B^T d B per tile: [16, N * tiles, C].

  Tile (i, j) reads rows 3i .. 3i+3 and columns 3j .. 3j+3; row a of every tile is one strided slice.
  """
  import jax
  import jax.numpy as jnp
  rows = [jax.lax.slice_in_dim(x, a, a + TILE_OUT * (tiles_h - 1) + 1, TILE_OUT, axis=1) for a in range(TILE_IN)]
  transformed = []
  for row_coefficients in WINOGRAD_BT:
    r = _combine(rows, row_coefficients)
    cols = [jax.lax.slice_in_dim(r, b, b + TILE_OUT * (tiles_w - 1) + 1, TILE_OUT, axis=2) for b in range(TILE_IN)]
    transformed.extend(_combine(cols, col_coefficients) for col_coefficients in WINOGRAD_BT)
  return jnp.stack(transformed).reshape(TILE_IN * TILE_IN, -1, x.shape[-1])


def kernel_tiles(kernel):
  """[2, 2, Cin, Cout] -> U = G g G^T per channel pair: [16, Cin, Cout]."""
  import jax.numpy as jnp
  g = jnp.asarray(WINOGRAD_G, kernel.dtype)
  return jnp.einsum("pa,qb,abio->pqio", g, g, kernel).reshape(TILE_IN * TILE_IN, *kernel.shape[2:])


def output_tiles(m, n, tiles_h, tiles_w):
  """[16, N * tiles, Cout] products -> A^T M A per tile, assembled: [N, 3 * tiles_h, 3 * tiles_w, Cout]."""
  import jax.numpy as jnp
  m = m.reshape(TILE_IN, TILE_IN, n, tiles_h, tiles_w, m.shape[-1])
  out_rows = [_combine([m[p] for p in range(TILE_IN)], row_coefficients) for row_coefficients in WINOGRAD_AT]
  tiles = [jnp.stack([_combine([r[q] for q in range(TILE_IN)], col_coefficients)
                      for col_coefficients in WINOGRAD_AT], axis=3) for r in out_rows]  # [N, th, tw, 3, C]
  y = jnp.stack(tiles, axis=2)  # [N, th, 3 (row in tile), tw, 3 (column in tile), C]
  return y.reshape(n, TILE_OUT * tiles_h, TILE_OUT * tiles_w, y.shape[-1])


def output_tiling(h, w, padding):
  """(out_h, out_w, tiles_h, tiles_w) of a stride-1 2x2 convolution over an h x w input: the 3x3 output
  tiles that cover its outputs, the last ones cropped."""
  out_h, out_w = h + sum(padding[0]) - 1, w + sum(padding[1]) - 1
  return out_h, out_w, -(-out_h // TILE_OUT), -(-out_w // TILE_OUT)


def winograd_conv2x2(x, kernel, padding):
  """Stride-1 2x2 convolution of NHWC x with an HWIO kernel by F(3x3, 2x2): lax.conv_general_dilated's sums."""
  import jax
  import jax.numpy as jnp
  n, h, w, _ = x.shape
  out_h, out_w, tiles_h, tiles_w = output_tiling(h, w, padding)
  # Pad the far side so that the last tile is whole; its extra outputs are cropped.
  x = jnp.pad(x, ((0, 0), (padding[0][0], TILE_OUT * tiles_h + 1 - h - padding[0][0]),
                  (padding[1][0], TILE_OUT * tiles_w + 1 - w - padding[1][0]), (0, 0)))
  v, u = input_tiles(x, tiles_h, tiles_w), kernel_tiles(kernel)
  m = jax.lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))  # 16 batched [N * tiles, Cin] @ [Cin, Cout]
  return output_tiles(m, n, tiles_h, tiles_w)[:, :out_h, :out_w]


def measure(case: str, repeats: int) -> list[dict]:
  import jax
  import jax.numpy as jnp
  from tools.bench_kernels import interleaved_medians
  from vqax.ops.conv import conv as vqax_conv
  x_shape, cout, padding = CASES[case]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
  kernel = jnp.asarray(rng.standard_normal((2, 2, x_shape[-1], cout), np.float32) / np.sqrt(4 * x_shape[-1]))
  forms = {"vqax conv": lambda x, k: vqax_conv(x, k, (1, 1), padding),
           "winograd": lambda x, k: winograd_conv2x2(x, k, padding)}
  y_ref = jax.jit(forms["vqax conv"])(x, kernel)
  dy = jnp.asarray(rng.standard_normal(y_ref.shape, np.float32))
  fns, labels = [], []
  for name, form in forms.items():
    forward = jax.jit(form)
    with_grads = jax.jit(lambda x, k, form=form: jax.vjp(form, x, k)[1](dy))
    error = float(jnp.max(jnp.abs(forward(x, kernel) - y_ref)) / jnp.max(jnp.abs(y_ref)))
    if error > 1e-4:
      raise AssertionError(f"{case}: {name} differs from vqax's convolution by {error:.1e} (relative)")
    fns += [lambda f=forward: f(x, kernel).block_until_ready(),
            lambda f=with_grads: jax.block_until_ready(f(x, kernel))]
    labels += [(name, "forward", error), (name, "both gradients", error)]
  n, h, w, cin = x_shape
  *_, tiles_h, tiles_w = output_tiling(h, w, padding)
  tiles = n * tiles_h * tiles_w
  v = jnp.asarray(rng.standard_normal((TILE_IN * TILE_IN, tiles, cin), np.float32))
  u = jnp.asarray(rng.standard_normal((TILE_IN * TILE_IN, cin, cout), np.float32))
  batched = jax.jit(lambda v, u: jax.lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,)))))
  fns.append(lambda: batched(v, u).block_until_ready())
  labels.append(("winograd", "its 16 matmuls alone", None))
  matmul_gflop = 2 * v.shape[0] * tiles * cin * cout / 1e9
  rows = []
  for (runner, part, error), seconds in zip(labels, interleaved_medians(fns, repeats)):
    row = {"case": case, "x": x_shape, "cout": cout, "runner": runner, "part": part, "seconds": seconds}
    if error is not None:
      row["max_rel_error"] = error
    else:
      row["gflop_per_s"] = matmul_gflop / seconds
    rows.append(row)
  return rows


@contextlib.contextmanager
def winograd_gradients(kernel_channels: tuple[int, int]):
  """While tracing inside this, `vqax.ops.conv` computes both gradients of its convolutions with
  (Cin, Cout) = kernel_channels (stride-1 2x2 ones) by one vjp of `winograd_conv2x2` (two would transform
  dy twice). Which convolutions: `ab_step.overridden_forms`, with "winograd" as their gradient forms."""
  import jax
  from tools.ab_step import overridden_forms
  from vqax.ops import conv

  def backward(dy, x, kernel, strides, padding, groups):
    if tuple(kernel.shape[:2]) != (2, 2) or tuple(strides) != (1, 1) or groups != 1:
      raise ValueError(f"Winograd F(3x3, 2x2) needs a stride-1 2x2 kernel, got {kernel.shape} stride {strides}")
    return jax.vjp(lambda x_, k_: winograd_conv2x2(x_, k_, padding), x, kernel)[1](dy)

  with conv.joint_backward_form("winograd", backward):
    with overridden_forms([(tuple(kernel_channels), 1, "winograd"), (tuple(kernel_channels), 2, "winograd")]):
      yield


def measure_step(rounds: int, steps: int = 3) -> dict:
  """bench_train's VQ-VAE 16 x 16 step, as the models run it and with up2's gradients by Winograd, in turns."""
  from tools.ab_step import CHOSEN, compare_steps
  (*_, up2_inputs), up2_outputs, _ = CASES["up2"]
  return compare_steps("vqvae_16x16", {CHOSEN: None, WINOGRAD_STEP: lambda: winograd_gradients((up2_inputs, up2_outputs))},
                       rounds, steps)


def table(rows: list[dict]) -> str:
  base = {(r["case"], r["part"]): r["seconds"] for r in rows if r["runner"] == "vqax conv"}
  lines = ["| case | runner | part | ms | vs vqax conv | GFLOP/s |", "|---|---|---|---:|---:|---:|"]
  for r in rows:
    vqax_seconds = base.get((r["case"], r["part"]))
    speed = f"{vqax_seconds / r['seconds']:.2f}x" if vqax_seconds else "-"
    rate = f"{r['gflop_per_s']:.0f}" if "gflop_per_s" in r else "-"
    lines.append(f"| {r['case']} | {r['runner']} | {r['part']} | {1000 * r['seconds']:.0f} | {speed} | {rate} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--step_rounds", type=int, default=0,
                      help="also time the VQ-VAE step with up2's gradients by Winograd, this many rounds x 3 steps")
  parser.add_argument("--json", default=str(REPO / "docs" / "bench_winograd.json"))
  args = parser.parse_args(argv)
  cases = [c for c in args.cases.split(",") if c]
  unknown = [c for c in cases if c not in CASES]
  if unknown or not cases:
    parser.error(f"--cases {args.cases!r}: expected names from {', '.join(CASES)}")
  if args.repeats < 1:
    parser.error(f"--repeats {args.repeats}: expected a positive integer")
  if args.step_rounds < 0:
    parser.error(f"--step_rounds {args.step_rounds}: expected 0 (no step) or a positive integer")
  from tools.bench_train import machine
  rows = [row for case in cases for row in measure(case, args.repeats)]
  host, tunables = machine(with_torch=False), os.environ.get("GLIBC_TUNABLES", "")
  print(f"{host}; GLIBC_TUNABLES={tunables!r}; float32, median of {args.repeats}")
  print(table(rows))
  step = measure_step(args.step_rounds) if args.step_rounds else None
  if step:
    print(f"VQ-VAE 16x16 step, {args.step_rounds} rounds x 3: " +
          ", ".join(f"{name} {1000 * s:.0f} ms" for name, s in step["step_s"].items()) +
          f"; Winograd's speed vs the chosen forms {step['speed_vs_baseline'][WINOGRAD_STEP]:.2f}x "
          "(median of the per-round ratios)")
  if args.json:
    record = {"machine": host, "glibc_tunables": tunables, "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "date": time.strftime("%Y-%m-%d"), "repeats": args.repeats, "rows": rows, "step": step}
    pathlib.Path(args.json).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
