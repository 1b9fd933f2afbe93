"""The fast conv lowering equals XLA's convolution: forward, input and kernel gradients."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from mobileshuffle_jax import layers, lowering, models
from mobileshuffle_jax.models import common

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
  fast = jax.jit(_conv(lowering.fast_conv, strides, padding, groups))
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
  np.testing.assert_array_equal(conv(lowering.fast_conv)(x, kernel),
                                conv(lax.conv_general_dilated)(x, kernel))


def test_dilated_and_nchw_convs_fall_back_to_xla():
  x, kernel = _random(0, (2, 9, 9, 4)), _random(1, (3, 3, 1, 4))
  dilated = dict(rhs_dilation=(2, 2), dimension_numbers=NHWC, feature_group_count=4)
  np.testing.assert_array_equal(
      lowering.fast_conv(x, kernel, (1, 1), "SAME", **dilated),
      lax.conv_general_dilated(x, kernel, (1, 1), "SAME", **dilated))
  x_nchw, kernel_oihw = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(kernel, (3, 2, 0, 1))
  nchw = dict(dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=4)
  np.testing.assert_array_equal(
      lowering.fast_conv(x_nchw, kernel_oihw, (1, 1), "SAME", **nchw),
      lax.conv_general_dilated(x_nchw, kernel_oihw, (1, 1), "SAME", **nchw))


def test_bfloat16_depthwise_accumulates_in_float32():
  x = _random(0, (2, 8, 8, 16)).astype(jnp.bfloat16)
  kernel = _random(1, (3, 3, 1, 16)).astype(jnp.bfloat16)
  fast = lowering.fast_conv(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC,
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
    y = jax.jit(lowering.materialized)(x)
    assert y.dtype == dtype
    # Bit for bit: the sign of zero and NaN included.
    np.testing.assert_array_equal(np.asarray(y).view(bits), np.asarray(x).view(bits))


def _fusions_with_slices(compiled_text: str, at_least: int) -> int:
  """How many fused computations of a compiled program hold at least `at_least` slices."""
  bodies = compiled_text.split("\n\n")
  return sum(1 for body in bodies
             if not body.startswith("ENTRY") and body.count(" slice(") >= at_least)


@pytest.mark.parametrize("conv,kernel_shape,stride", [
    (lowering.depthwise_conv, (3, 3, 6), 1), (lowering.depthwise_conv, (3, 3, 6), 2),
    (lowering.broadcast_conv, (3, 3, 3, 6), 2)], ids=["depthwise", "depthwise-s2", "stem"])
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
  if conv is lowering.depthwise_conv:
    output = jax.eval_shape(consumers, x, kernel)[1]

    def input_grad_consumers(x, kernel, cotangent):
      grad = jax.vjp(lambda x: conv(x, kernel, stride, ((1, 1), (1, 1))), x)[1](cotangent)[0]
      return jnp.sum(grad, axis=(0, 1, 2)), grad * 2.0, jnp.maximum(grad, 0.0)

    backward = jax.jit(input_grad_consumers).lower(
        x, kernel, _random(2, output.shape)).compile().as_text()
    # stride 1: one window of the output gradient per tap; stride 2: the parity planes'.
    assert _fusions_with_slices(backward, 4) == 1


def test_shuffle_units_compute_each_residual_sum_once():
  """In a stack of stride-1 units on group blocks, no fused loop adds the residuals of two
  units: left to itself XLA:CPU recomputes each unit's output inside the next one's."""
  conv, norm = common.conv_and_norm(train=False, dtype=jnp.float32, bn_momentum=0.9,
                                    bn_epsilon=1e-3, conv_lowering=lowering.fast_conv)
  unit = functools.partial(layers.ShuffleUnit, 24, 1, 3, conv=conv, norm=norm,
                           block_conv=common.group_blocks_conv(lowering.fast_conv, jnp.float32))

  class Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
      for index in range(3):
        x = unit(name=f"unit{index}")(x)
      return x

  x = jax.ShapeDtypeStruct((2, 8, 8, 24), jnp.float32)
  variables = jax.eval_shape(Stack().init, jax.random.key(0), x)
  compiled = jax.jit(Stack().apply).lower(variables, x).compile().as_text()
  fused = [body for body in compiled.split("\n\n") if not body.startswith("ENTRY")]
  units_added = [set(re.findall(r'op_name="[^"]*/(unit\d)/add"', body)) for body in fused]
  assert {"unit0", "unit1", "unit2"} <= set().union(*units_added)
  assert max(len(units) for units in units_added) == 1


def test_conv_lowering_names():
  assert lowering.conv_lowering("xla") is None
  assert lowering.conv_lowering("fast") is lowering.fast_conv
  assert lowering.conv_lowering("auto", "cpu") is lowering.fast_conv
  assert lowering.conv_lowering("auto", "gpu") is None
  assert lowering.conv_lowering("auto", "tpu") is None
  assert callable(lowering.conv_lowering("auto"))
  with pytest.raises(ValueError, match="lowering='cudnn' is not supported"):
    lowering.conv_lowering("cudnn")


def test_build_resolves_lowering_and_an_explicit_callable_wins():
  assert models.build("mobilenet_v1", lowering="xla").conv_lowering is None
  assert models.build("mobilenet_v1", lowering="fast").conv_lowering is lowering.fast_conv
  assert models.build("shufflenet_v1").conv_lowering is lowering.conv_lowering("auto")
  explicit = models.build("mobilenet_v1", lowering="fast",
                          conv_lowering=lax.conv_general_dilated)
  assert explicit.conv_lowering is lax.conv_general_dilated
  assert models.build("mobilenet_v1", lowering="fast", conv_lowering=None).conv_lowering is None
  with pytest.raises(ValueError, match="lowering="):
    models.build("mobilenet_v1", lowering="winograd")


# Only compile time matters for these small checks; LLVM's optimizations take half of it.
QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
WHOLE_MODELS = pytest.mark.parametrize("name,options", [
    ("mobilenet_v1", dict(alpha=0.25, num_classes=10)),
    ("shufflenet_v1", dict(groups=3, scale=0.5, num_classes=10)),
], ids=["mobilenet_0.25", "shufflenet_g3_0.5x"])


def _jit(function, *args):
  return jax.jit(function).lower(*args).compile(QUICK_COMPILE)(*args)


def _logits_and_grads(model, variables, images, labels):
  """Eval logits and the gradients of a train-mode loss, in one compiled function."""

  def logits_and_grads(variables):
    def loss(params):
      logits, _ = model.apply({**variables, "params": params}, images, train=True,
                              mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return model.apply(variables, images, train=False), jax.grad(loss)(variables["params"])

  return _jit(logits_and_grads, variables)


@WHOLE_MODELS
def test_whole_model_logits_and_gradients_match(name, options):
  """Eval logits in float32; all parameter gradients of a train-mode loss in float64.

  Float32 gradients cannot be held to float32 tolerance: a pre-activation within rounding
  of zero turns a ReLU on in one lowering and off in the other. That happens (MobileNet
  0.25, batch 16: a depthwise kernel gradient moves by 2% of its largest entry, with
  either lowering of the stem alone), while in float64 the two agree to the last digits.
  The classifier runs in float32 whatever the model's dtype, hence the float64 tolerance.
  """
  xla, fast = (models.build(name, lowering=which, **options) for which in ("xla", "fast"))
  images = _random(0, (4, 64, 64, 3))
  variables = jax.jit(xla.init)(jax.random.key(1), images)  # the same for both lowerings
  np.testing.assert_allclose(_jit(lambda v: fast.apply(v, images), variables),
                             _jit(lambda v: xla.apply(v, images), variables),
                             rtol=1e-4, atol=1e-5)

  with jax.enable_x64(True):
    xla, fast = (models.build(name, lowering=which, dtype=jnp.float64, **options)
                 for which in ("xla", "fast"))
    images = images.astype(jnp.float64)
    variables = jax.tree.map(lambda v: v.astype(jnp.float64), variables)
    labels = jnp.arange(len(images)) % xla.num_classes
    logits, grads = jax.device_get(_logits_and_grads(xla, variables, images, labels))
    fast_logits, fast_grads = jax.device_get(
        _logits_and_grads(fast, variables, images, labels))
  np.testing.assert_allclose(fast_logits, logits, rtol=1e-6, atol=1e-7)
  assert jax.tree.structure(fast_grads) == jax.tree.structure(grads)
  # Some gradients are zero but for rounding (a BN bias followed by a conv and BN):
  # those are held to the scale of all gradients instead of their own.
  overall = max(np.max(np.abs(g)) for g in jax.tree.leaves(grads))
  for (path, grad), fast_grad in zip(jax.tree_util.tree_leaves_with_path(grads),
                                     jax.tree.leaves(fast_grads)):
    np.testing.assert_allclose(fast_grad, grad, rtol=1e-5,
                               atol=1e-6 * (np.max(np.abs(grad)) + overall),
                               err_msg=jax.tree_util.keystr(path))
