"""tools/bench_winograd.py's Winograd F(3x3, 2x2) convolution computes lax's convolution, gradients included.

The benchmark's figures compare it with vqax's convolution; they mean something only if both compute the
same thing, for output sizes that are and are not multiples of the 3x3 tile.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tools import bench_winograd


def test_one_dimensional_identity_holds_exactly():
  at, g, bt = (m.astype(np.float64) for m in (bench_winograd.WINOGRAD_AT, bench_winograd.WINOGRAD_G,
                                                bench_winograd.WINOGRAD_BT))
  rng = np.random.default_rng(0)
  for _ in range(5):
    d, k = rng.standard_normal(4), rng.standard_normal(2)
    np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), [d[i] * k[0] + d[i + 1] * k[1] for i in range(3)],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("x_shape, cout, padding", [
    ((2, 8, 8, 3), 5, ((1, 1), (1, 1))),   # 9 x 9 outputs: whole tiles
    ((2, 7, 5, 4), 3, ((0, 0), (0, 0))),   # 6 x 4 outputs: the last column of tiles is cropped
    ((1, 6, 9, 2), 4, ((1, 0), (0, 1))),   # asymmetric padding
])
def test_winograd_matches_lax_forward_and_gradients(x_shape, cout, padding):
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], x_shape, jnp.float64)
    kernel = jax.random.normal(keys[1], (2, 2, x_shape[-1], cout), jnp.float64)
    plain = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), padding,
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    winograd = lambda x, k: bench_winograd.winograd_conv2x2(x, k, padding)
    y_plain, vjp_plain = jax.vjp(plain, x, kernel)
    y_winograd, vjp_winograd = jax.vjp(winograd, x, kernel)
    assert y_winograd.shape == y_plain.shape and y_winograd.dtype == jnp.float64
    np.testing.assert_allclose(y_winograd, y_plain, rtol=1e-10, atol=1e-10)
    dy = jax.random.normal(keys[2], y_plain.shape, jnp.float64)
    for got, want in zip(vjp_winograd(dy), vjp_plain(dy)):
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_unknown_case_is_named(capsys):
  with pytest.raises(SystemExit):
    bench_winograd.main(["--cases", "up2,up9", "--json", ""])
  assert "--cases 'up2,up9'" in capsys.readouterr().err
