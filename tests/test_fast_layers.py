"""The fast layer formulations compute the same function and gradients as the plain layers they replace.

Every form in `vqax.ops.conv` (per pass: XLA's convolution, one wide matmul plus shifted adds, or fused
multiply-adds) and the re-expressed stride-2 layers (space-to-depth downsampling, polyphase and sub-pixel
upsampling) are checked in float64 against lax / flax's own layers with the same weights, forward and
both gradients, so only summation order separates them.
"""
import itertools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqax.ops import conv as fast_conv
from vqax.ops import forms
from vqax.ops.forms import LAYER_FORMS
from vqax.ops.dense import dense_dot_general, materialized
from vqax.models.downsample import Downsample2x
from vqax.ops.resample import downsample2x
from vqax.models.upsample import Upsample2x
from vqax.ops.resample import upsample2x
from vqax.models.vqvae import VQVAE

# Each form for every pass (forward, input gradient, kernel gradient); None: the forms chosen by shape.
PASS_FORMS = [(form,) * 3 for form in fast_conv.PASS_IMPLS] + [None]

# (input shape NHWC or NWC, kernel shape, strides, padding, groups)
CONV_CASES = {
    "dense_wide_to_narrow": ((2, 7, 6, 8), (3, 3, 8, 3), (1, 1), ((1, 1), (1, 1)), 1),
    "dense_narrow_to_wide": ((2, 5, 6, 3), (3, 3, 3, 8), (1, 1), ((1, 1), (1, 1)), 1),
    "dense_2x2_unpadded": ((2, 6, 5, 12), (2, 2, 12, 4), (1, 1), ((0, 0), (0, 0)), 1),
    "few_inputs_2x2": ((2, 6, 5, 4), (2, 2, 4, 6), (1, 1), ((0, 0), (0, 0)), 1),  # the encoder's first layer
    "asymmetric_padding": ((1, 6, 7, 4), (3, 2, 4, 5), (1, 1), ((2, 0), (0, 1)), 1),
    "single_channel_in": ((2, 6, 6, 1), (3, 3, 1, 4), (1, 1), ((1, 1), (1, 1)), 1),
    "single_channel_out": ((2, 6, 5, 6), (3, 3, 6, 1), (1, 1), ((1, 1), (1, 1)), 1),  # the VQ-VAE's output layer
    "depthwise": ((2, 6, 7, 6), (3, 3, 1, 6), (1, 1), ((1, 1), (1, 1)), 6),
    "grouped": ((2, 5, 5, 8), (3, 3, 2, 8), (1, 1), ((1, 1), (1, 1)), 4),
    "grouped_squeeze": ((3, 5, 6, 12), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)), 4),  # ReDimNet's squeeze
    "grouped_4x4_asymmetric": ((2, 6, 7, 8), (3, 2, 4, 8), (1, 1), ((2, 0), (0, 1)), 2),  # ReDimNet-b2's
    "grouped_expand": ((2, 6, 5, 3), (3, 3, 1, 6), (1, 1), ((1, 1), (1, 1)), 3),
    "grouped_strided": ((2, 9, 8, 6), (3, 3, 2, 6), (2, 1), ((1, 1), (1, 1)), 3),
    "depthwise_long_1d": ((3, 40, 5), (19, 1, 5), (1,), ((9, 9),), 5),  # a time-context block's conv
    "strided": ((2, 9, 8, 3), (4, 4, 3, 5), (2, 2), ((1, 1), (1, 1)), 1),
    "one_dimensional": ((3, 11, 4), (5, 4, 6), (1,), ((2, 2),), 1),
}


def _reference(x, kernel, strides, padding, groups):
  nd = x.ndim - 2
  spatial = "HW"[:nd]
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, feature_group_count=groups,
                                      dimension_numbers=("N" + spatial + "C", spatial + "IO", "N" + spatial + "C"))


def _value_and_grads(fn, x, kernel, dy):
  y, vjp = jax.vjp(fn, x, kernel)
  return (y,) + vjp(dy)


def _assert_matches_reference(case, conv_fn, seed, label=""):
  """conv_fn(x, kernel, strides, padding, groups): output and both gradients against lax's, in float64."""
  x_shape, k_shape, strides, padding, groups = CONV_CASES[case]
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(keys[0], x_shape, jnp.float64)
    kernel = jax.random.normal(keys[1], k_shape, jnp.float64)
    y = _reference(x, kernel, strides, padding, groups)
    dy = jax.random.normal(keys[2], y.shape, jnp.float64)
    expected = _value_and_grads(lambda a, b: _reference(a, b, strides, padding, groups), x, kernel, dy)
    got = _value_and_grads(lambda a, b: conv_fn(a, b, strides, padding, groups), x, kernel, dy)
    for name, g, e in zip(("output", "input grad", "kernel grad"), got, expected):
      chex.assert_shape(g, e.shape)
      np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10, err_msg=f"{case} {label} {name}")


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_every_pass_form_matches_xla_convolution(case):
  for impls in PASS_FORMS:
    _assert_matches_reference(
        case, lambda x, k, strides, padding, groups: fast_conv.conv(x, k, strides, padding, groups, impls), 0,
        str(impls))


def test_forms_keep_bfloat16_and_accumulate_kernel_grad_in_float32():
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 16), jnp.bfloat16)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 16, 4), jnp.bfloat16)
  pad = ((1, 1), (1, 1))
  y, vjp = jax.vjp(lambda a, b: fast_conv.conv(a, b, (1, 1), pad), x, kernel)
  dx, dk = vjp(jnp.ones_like(y))
  chex.assert_type([y, dx, dk], jnp.bfloat16)
  _, ref_vjp = jax.vjp(lambda a, b: _reference(a, b, (1, 1), pad, 1), x.astype(jnp.float32), kernel.astype(jnp.float32))
  _, dk_ref = ref_vjp(jnp.ones(y.shape, jnp.float32))
  np.testing.assert_allclose(np.asarray(dk, np.float32), dk_ref, rtol=2e-2, atol=2e-2)


SUMMED_PAIR_CASES = ["grouped", "grouped_squeeze", "grouped_strided"]


@pytest.mark.parametrize("case", SUMMED_PAIR_CASES)
def test_grouped_conv_as_summed_depthwise_pairs_matches_xla_convolution(case):
  # Checked directly, not only through conv(impls=None): that route takes it on CPU alone.
  _, k_shape, _, _, groups = CONV_CASES[case]
  assert k_shape[-2] > 1 and fast_conv.sums_input_pairs(k_shape, groups)
  _assert_matches_reference(case, fast_conv.summed_pairs_conv, 1)


def test_summed_pairs_keep_bfloat16():
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, 12), jnp.bfloat16)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 4), jnp.bfloat16)
  pad = ((1, 1), (1, 1))
  y, vjp = jax.vjp(lambda a, b: fast_conv.summed_pairs_conv(a, b, (1, 1), pad, 4), x, kernel)
  dx, dk = vjp(jnp.ones_like(y))
  chex.assert_type([y, dx, dk], jnp.bfloat16)
  reference = _reference(x.astype(jnp.float32), kernel.astype(jnp.float32), (1, 1), pad, 4)
  np.testing.assert_allclose(np.asarray(y, np.float32), reference, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (4, 9, 6), (5, 6)])
def test_flattened_dense_matmul_is_nn_dense(shape):
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
    plain = nn.Dense(4, param_dtype=jnp.float64)
    flat = nn.Dense(4, param_dtype=jnp.float64, dot_general=dense_dot_general)
    variables = plain.init(jax.random.key(1), x)
    chex.assert_trees_all_equal_shapes(variables, flat.init(jax.random.key(1), x))
    loss = lambda module: lambda v, x_: jnp.sum(jnp.sin(module.apply(v, x_)))
    np.testing.assert_allclose(flat.apply(variables, x), plain.apply(variables, x), rtol=1e-12)
    chex.assert_trees_all_close(jax.grad(loss(flat), argnums=(0, 1))(variables, x),
                                jax.grad(loss(plain), argnums=(0, 1))(variables, x), rtol=1e-10, atol=1e-12)
  y = nn.Dense(4, dtype=jnp.bfloat16, dot_general=dense_dot_general).init_with_output(
      jax.random.key(1), jnp.ones(shape, jnp.bfloat16))[0]
  chex.assert_shape(y, shape[:-1] + (4,))
  chex.assert_type(y, jnp.bfloat16)


@pytest.mark.parametrize("shape, features, axis", [((2, 5, 12), (3, 4), -1),  # attention's q/k/v projections
                                                   ((2, 5, 3, 4), 12, (-2, -1)),  # and its output
                                                   ((2, 3, 5, 4), (2, 3), (-2, -1))])
def test_flattened_dense_general_is_nn_dense_general(shape, features, axis):
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
    plain = nn.DenseGeneral(features, axis=axis, param_dtype=jnp.float64)
    flat = nn.DenseGeneral(features, axis=axis, param_dtype=jnp.float64, dot_general=dense_dot_general)
    variables = plain.init(jax.random.key(1), x)
    loss = lambda module: lambda v, x_: jnp.sum(jnp.sin(module.apply(v, x_)))
    np.testing.assert_allclose(flat.apply(variables, x), plain.apply(variables, x), rtol=1e-12)
    chex.assert_trees_all_close(jax.grad(loss(flat), argnums=(0, 1))(variables, x),
                                jax.grad(loss(plain), argnums=(0, 1))(variables, x), rtol=1e-10, atol=1e-12)
    # On XLA:CPU the product is one 2-D matmul (the form that spares the kernel gradient a transpose).
    dots = [eqn for eqn in jax.make_jaxpr(lambda v: flat.apply(v, x))(variables).jaxpr.eqns
            if eqn.primitive.name == "dot_general"]
    assert [tuple(len(v.aval.shape) for v in eqn.invars) for eqn in dots] == [(2, 2)]


def test_materialized_is_exactly_the_identity_and_a_matmul_on_cpu():
  x = jax.random.normal(jax.random.key(0), (3, 5, 7, 6))
  y, vjp = jax.vjp(jax.jit(materialized), x)
  dy = jax.random.normal(jax.random.key(1), x.shape)
  np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(vjp(dy)[0], dy)
  primitives = {eqn.primitive.name for eqn in jax.make_jaxpr(materialized)(x).jaxpr.eqns}
  assert ("dot_general" in primitives) == (jax.default_backend() == "cpu")
  assert not jax.make_jaxpr(lambda a: materialized(a, enabled=False))(x).jaxpr.eqns


def test_drop_in_for_nn_conv_keeps_parameters_and_results():
  x = jax.random.normal(jax.random.key(0), (2, 9, 7, 5))
  plain = nn.Conv(6, (3, 3), padding="SAME")
  fast = nn.Conv(6, (3, 3), padding="SAME", conv_general_dilated=fast_conv.conv_general_dilated)
  variables = plain.init(jax.random.key(1), x)
  chex.assert_trees_all_equal_shapes(variables, fast.init(jax.random.key(1), x))
  loss = lambda module: lambda v, x_: jnp.sum(jnp.sin(module.apply(v, x_)))
  np.testing.assert_allclose(fast.apply(variables, x), plain.apply(variables, x), rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(jax.grad(loss(fast), argnums=(0, 1))(variables, x),
                              jax.grad(loss(plain), argnums=(0, 1))(variables, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hw", [(8, 8), (9, 6), (7, 11)])
def test_space_to_depth_downsampling_is_the_strided_nn_conv(hw):
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2,) + hw + (3,), jnp.float64)
    kernel = jax.random.normal(jax.random.key(1), (4, 4, 3, 5), jnp.float64)
    plain = nn.Conv(5, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False,
                    dtype=jnp.float64, param_dtype=jnp.float64)
    reference = lambda a, k: plain.apply({"params": {"kernel": k}}, a)
    y = reference(x, kernel)
    dy = jax.random.normal(jax.random.key(2), y.shape, jnp.float64)
    expected = _value_and_grads(reference, x, kernel, dy)
    for impl, layer_forms in itertools.product(("space_to_depth", "strided", None), LAYER_FORMS):
      with forms.use(layer_forms):
        got = _value_and_grads(lambda a, k: downsample2x(a, k, impl), x, kernel, dy)
      for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10, err_msg=f"{impl} {layer_forms}")


def test_phase_upsampling_is_the_transposed_nn_conv():
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3), jnp.float64)
    kernel = jax.random.normal(jax.random.key(1), (4, 4, 3, 4), jnp.float64)
    # PyTorch's ConvTranspose2d(k=4, s=2, p=1) is flax's with the flipped kernel and padding k-1-p = 2.
    plain = nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=False,
                             dtype=jnp.float64, param_dtype=jnp.float64)
    reference = lambda a, k: plain.apply({"params": {"kernel": k[::-1, ::-1]}}, a)
    y = reference(x, kernel)
    chex.assert_shape(y, (2, 10, 12, 4))
    dy = jax.random.normal(jax.random.key(2), y.shape, jnp.float64)
    expected = _value_and_grads(reference, x, kernel, dy)
    for impl, layer_forms in itertools.product(("polyphase", "subpixel", "transpose", None), LAYER_FORMS):
      with forms.use(layer_forms):
        got = _value_and_grads(lambda a, k: upsample2x(a, k, impl), x, kernel, dy)
      for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10, err_msg=f"{impl} {layer_forms}")


def test_layer_modules_share_parameters_across_forms():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
  for layer, impls in ((Downsample2x, ("space_to_depth", "strided")),
                       (Upsample2x, ("polyphase", "subpixel", "transpose"))):
    modules = [layer(7, impl=impl) for impl in impls]
    variables = modules[0].init(jax.random.key(1), x)
    for other in modules[1:]:
      chex.assert_trees_all_equal_shapes(variables, other.init(jax.random.key(1), x))
    grads = [jax.grad(lambda v, m=m: jnp.sum(m.apply(v, x) ** 2))(variables) for m in modules]
    for g in grads[1:]:
      chex.assert_trees_all_close(g, grads[0], rtol=1e-4, atol=1e-4)


def test_vqvae_fast_and_plain_forms_give_the_same_loss_and_gradients():
  """The whole model, all fast forms against all plain layers, in float64.

  In float32 the two differ by more than summation order suggests at some inits: a ReLU input or a
  straight-through latent within rounding of a tie flips, and a gradient jumps (either form is then the
  one closer to the float64 value, by luck). float64 leaves only the rounding of the sums.
  """
  fast = VQVAE(dtype=jnp.float64, layer_forms="cpu")
  plain = VQVAE(dtype=jnp.float64, layer_forms="xla")
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 1), jnp.float64)
    variables = VQVAE().init(jax.random.key(1), x.astype(jnp.float32))
    chex.assert_trees_all_equal_shapes(variables, plain.init(jax.random.key(1), x))
    # Nonzero biases, so that pre-activations are not exactly 0 (ReLU's kink) at init.
    leaves, treedef = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = treedef.unflatten([(p + 0.05 * jax.random.normal(k, p.shape) if p.ndim == 1 else p).astype(jnp.float64)
                                for p, k in zip(leaves, keys)])

    def loss(model):
      def fn(params):
        recon, aux = model.apply({"params": params}, x)
        return jnp.mean((recon - x) ** 2) + aux["codebook_loss"] + 0.25 * aux["commitment_loss"], aux["codes"]
      return jax.jit(jax.value_and_grad(fn, has_aux=True))

    (fast_loss, fast_codes), fast_grads = loss(fast)(params)
    (plain_loss, plain_codes), plain_grads = loss(plain)(params)
  np.testing.assert_array_equal(fast_codes, plain_codes)
  np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-6)
  for (path, f), p in zip(jax.tree_util.tree_leaves_with_path(fast_grads), jax.tree.leaves(plain_grads)):
    scale = np.max(np.abs(np.asarray(p)))
    assert scale > 0, jax.tree_util.keystr(path)
    np.testing.assert_allclose(f, p, rtol=0, atol=1e-9 * scale, err_msg=jax.tree_util.keystr(path))
