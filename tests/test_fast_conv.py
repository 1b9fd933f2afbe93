"""`fast.Conv`'s convolutions equal XLA's: forward, input and kernel gradients."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mobileshuffle_jax import fast, layers
from mobileshuffle_jax.fast.conv import (broadcast_conv, depthwise_conv, fast_conv,
                                         materialized)
from mobileshuffle_jax.models import common
from tests.test_layers import assert_matches, random_input, reference_conv

NHWC = ("NHWC", "HWIO", "NHWC")
# float32 results of differently ordered sums of the same products.
TOLERANCE = dict(rtol=2e-5, atol=2e-5)


def _random(key, shape):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def _conv(conv_general_dilated, strides, padding, groups):
  return lambda x, kernel: conv_general_dilated(
      x, kernel, strides, padding, dimension_numbers=NHWC, feature_group_count=groups)


def assert_same_conv(x, kernel, strides, padding, groups):
  """fast_conv's output and gradients (w.r.t. x and kernel) are lax's."""
  reference = jax.jit(_conv(lax.conv_general_dilated, strides, padding, groups))
  fast = jax.jit(_conv(fast_conv, strides, padding, groups))
  expected = reference(x, kernel)
  np.testing.assert_allclose(fast(x, kernel), expected, **TOLERANCE)
  cotangent = _random(2, expected.shape)
  expected_grads = jax.vjp(reference, x, kernel)[1](cotangent)
  grads = jax.vjp(fast, x, kernel)[1](cotangent)
  for grad, expected_grad in zip(grads, expected_grads):
    scale = float(jnp.max(jnp.abs(expected_grad)))
    np.testing.assert_allclose(grad, expected_grad, rtol=2e-5, atol=2e-6 * scale)


@pytest.mark.parametrize("padding", ["SAME", ((1, 1), (1, 1))], ids=["same", "symmetric"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("height,width", [(8, 8), (7, 9)], ids=["even", "odd"])
def test_depthwise_3x3(height, width, stride, padding):
  channels = 5
  x = _random(0, (2, height, width, channels))
  kernel = _random(1, (3, 3, 1, channels))
  assert_same_conv(x, kernel, (stride, stride), padding, channels)


def test_depthwise_other_kernel_sizes_and_valid_padding():
  x = _random(0, (2, 11, 10, 4))
  assert_same_conv(x, _random(1, (5, 5, 1, 4)), (2, 2), "SAME", 4)
  assert_same_conv(x, _random(1, (3, 3, 1, 4)), (1, 1), "VALID", 4)
  assert_same_conv(x, _random(1, (3, 3, 1, 4)), (2, 2), ((0, 2), (1, 0)), 4)


@pytest.mark.parametrize("width,stride", [(16, 1), (22, 1), (13, 1), (24, 2), (7, 2)],
                         ids=["two-runs", "runs-of-2", "prime", "s2-runs-of-6", "s2-odd"])
def test_depthwise_kernel_grad_over_runs_of_columns(width, stride):
  """The kernel gradient sums runs of output columns first (runs of 8 where the width
  allows, of a smaller divisor where not, of 1 for a prime width): each equals XLA's."""
  x = _random(0, (3, 5, width, 4))
  assert_same_conv(x, _random(1, (3, 3, 1, 4)), (stride, stride), "SAME", 4)


def test_depthwise_kernel_grad_reads_the_activations_in_one_pass():
  """One fused loop reads all nine windows of the input for the kernel gradient, where a
  reduction per tap would read the input and the output gradient nine times."""
  x, kernel = _random(0, (2, 10, 16, 6)), _random(1, (3, 3, 6))
  out = jax.eval_shape(lambda x: depthwise_conv(x, kernel, 1, ((1, 1), (1, 1))), x)

  def kernel_grad(x, kernel, cotangent):
    return jax.vjp(lambda kernel: depthwise_conv(x, kernel, 1, ((1, 1), (1, 1))),
                   kernel)[1](cotangent)[0]

  compiled = jax.jit(kernel_grad).lower(x, kernel, _random(2, out.shape)).compile().as_text()
  assert _fusions_with_slices(compiled, 9) == 1


def test_dense_1x1():
  assert_same_conv(_random(0, (2, 5, 6, 12)), _random(1, (1, 1, 12, 20)), (1, 1), "SAME", 1)


@pytest.mark.parametrize("groups", [2, 3, 8])
def test_grouped_1x1(groups):
  x = _random(0, (2, 5, 6, 4 * groups))
  kernel = _random(1, (1, 1, 4, 3 * groups))
  assert_same_conv(x, kernel, (1, 1), "VALID", groups)


@pytest.mark.parametrize("padding", ["SAME", ((1, 1), (1, 1))], ids=["same", "symmetric"])
@pytest.mark.parametrize("height,width", [(8, 8), (7, 9)], ids=["even", "odd"])
def test_rgb_stem_3x3(height, width, padding):
  x = _random(0, (2, height, width, 3))
  assert_same_conv(x, _random(1, (3, 3, 3, 8)), (2, 2), padding, 1)


@pytest.mark.parametrize("case", [
    dict(kernel=(3, 3, 4, 8), strides=(2, 2), groups=1),  # dense 3x3, 36 terms per output
    dict(kernel=(1, 1, 32, 8), strides=(2, 2), groups=1),  # strided 1x1, 32 terms
    dict(kernel=(3, 3, 2, 6), strides=(1, 1), groups=3),  # grouped, not depthwise
], ids=["dense3x3", "strided1x1", "grouped3x3"])
def test_other_convs_fall_back_to_xla(case):
  channels = case["kernel"][2] * case["groups"]
  x = _random(0, (2, 9, 9, channels))
  kernel = _random(1, case["kernel"])
  conv = functools.partial(_conv, strides=case["strides"], padding="SAME",
                           groups=case["groups"])
  np.testing.assert_array_equal(conv(fast_conv)(x, kernel),
                                conv(lax.conv_general_dilated)(x, kernel))


def test_dilated_and_nchw_convs_fall_back_to_xla():
  x, kernel = _random(0, (2, 9, 9, 4)), _random(1, (3, 3, 1, 4))
  dilated = dict(rhs_dilation=(2, 2), dimension_numbers=NHWC, feature_group_count=4)
  np.testing.assert_array_equal(
      fast_conv(x, kernel, (1, 1), "SAME", **dilated),
      lax.conv_general_dilated(x, kernel, (1, 1), "SAME", **dilated))
  x_nchw, kernel_oihw = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(kernel, (3, 2, 0, 1))
  nchw = dict(dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=4)
  np.testing.assert_array_equal(
      fast_conv(x_nchw, kernel_oihw, (1, 1), "SAME", **nchw),
      lax.conv_general_dilated(x_nchw, kernel_oihw, (1, 1), "SAME", **nchw))


def test_bfloat16_depthwise_accumulates_in_float32():
  x = _random(0, (2, 8, 8, 16)).astype(jnp.bfloat16)
  kernel = _random(1, (3, 3, 1, 16)).astype(jnp.bfloat16)
  fast = fast_conv(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC,
                            feature_group_count=16)
  exact = lax.conv_general_dilated(x.astype(jnp.float32), kernel.astype(jnp.float32), (1, 1),
                                   "SAME", dimension_numbers=NHWC, feature_group_count=16)
  assert fast.dtype == jnp.bfloat16
  np.testing.assert_allclose(fast.astype(jnp.float32), exact, rtol=1e-2, atol=1e-2)


def test_materialized_changes_no_value():
  # Subnormals are left out: XLA:CPU flushes them to zero in every arithmetic op (x * 1 too).
  special = jnp.array([0.0, -0.0, 1.5, -2.0, jnp.inf, -jnp.inf, jnp.nan, 1.2e-38, 3e38])
  for dtype, bits in ((jnp.float32, np.uint32), (jnp.bfloat16, np.uint16)):
    x = special.astype(dtype)
    y = jax.jit(materialized)(x)
    assert y.dtype == dtype
    # Bit for bit: the sign of zero and NaN included.
    np.testing.assert_array_equal(np.asarray(y).view(bits), np.asarray(x).view(bits))


def _fusions_with_slices(compiled_text: str, at_least: int) -> int:
  """How many fused computations of a compiled program hold at least `at_least` slices."""
  bodies = compiled_text.split("\n\n")
  return sum(1 for body in bodies
             if not body.startswith("ENTRY") and body.count(" slice(") >= at_least)


@pytest.mark.parametrize("conv,kernel_shape,stride", [
    (depthwise_conv, (3, 3, 6), 1), (depthwise_conv, (3, 3, 6), 2),
    (broadcast_conv, (3, 3, 3, 6), 2)], ids=["depthwise", "depthwise-s2", "stem"])
def test_conv_taps_are_computed_once_for_all_consumers(conv, kernel_shape, stride):
  """Four ops read the conv's output (as BN, an activation and the next layers do), and one
  fused loop computes its taps; the same for the depthwise input gradient."""
  in_channels = kernel_shape[2] if len(kernel_shape) == 4 else kernel_shape[-1]
  taps = int(np.prod(kernel_shape[:-1])) if len(kernel_shape) == 4 else 9
  x = _random(0, (2, 10, 10, in_channels))
  kernel = _random(1, kernel_shape)

  def consumers(x, kernel):
    y = conv(x, kernel, stride, ((1, 1), (1, 1)))
    return jnp.mean(y, axis=(0, 1, 2)), jnp.maximum(y, 0.0), y * 3.0, y[..., :2] - 1.0

  forward = jax.jit(consumers).lower(x, kernel).compile().as_text()
  assert _fusions_with_slices(forward, taps) == 1
  if conv is depthwise_conv:
    output = jax.eval_shape(consumers, x, kernel)[1]

    def input_grad_consumers(x, kernel, cotangent):
      grad = jax.vjp(lambda x: conv(x, kernel, stride, ((1, 1), (1, 1))), x)[1](cotangent)[0]
      return jnp.sum(grad, axis=(0, 1, 2)), grad * 2.0, jnp.maximum(grad, 0.0)

    backward = jax.jit(input_grad_consumers).lower(
        x, kernel, _random(2, output.shape)).compile().as_text()
    # stride 1: one window of the output gradient per tap; stride 2: the parity planes'.
    assert _fusions_with_slices(backward, 4) == 1


def test_conv_on_channel_blocks_is_the_grouped_conv_with_its_variable():
  """`fast.Conv` on the blocks of x initializes the same kernel as the grouped `nn.Conv`
  (values too) and computes the same conv, block by block."""
  groups, x = 4, random_input((2, 5, 5, 12))
  def model_conv(factory):  # as the models bind it: dtype, initializer
    conv, _ = common.conv_and_norm(factory, layers.BatchNorm, train=False, dtype=jnp.float32,
                                   bn_momentum=0.9, bn_epsilon=1e-3)
    return conv(8, (1, 1), feature_group_count=groups, use_bias=False)

  grouped, blocks = model_conv(nn.Conv), model_conv(fast.Conv)
  split = tuple(np.split(x, groups, axis=-1))
  variables = grouped.init(jax.random.key(3), x)
  jax.tree.map(np.testing.assert_array_equal, blocks.init(jax.random.key(3), split),
               variables)
  out = blocks.apply(variables, split)
  assert [block.shape for block in out] == [(2, 5, 5, 2)] * groups
  assert_matches(jnp.concatenate(out, axis=-1),
                 reference_conv(x, variables["params"]["kernel"], 1, "same", groups))
  with pytest.raises(ValueError, match="one block of one width per group"):
    blocks.init(jax.random.key(3), (x[..., :4], x[..., 4:]))
