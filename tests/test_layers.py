"""The layers against independent float64 numpy references (direct loops, no jax/lax).

The Flax modules run in float32; every reference below is written from the papers'
definitions and the two frameworks' padding rules, and takes only the module's own
parameters and batch statistics from the Flax side.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobileshuffle_jax import fast, layers
from mobileshuffle_jax.models import common

EPSILON = 1e-3
RTOL = 1e-5

# ---------------------------------------------------------------------------------------
# numpy float64 references


def reference_pads(size: int, kernel: int, stride: int, convention: str) -> tuple[int, int]:
  """(before, after) padding of one spatial axis, written from each framework's rule."""
  if convention == "symmetric":  # PyTorch: padding=k//2 on both sides
    return kernel // 2, kernel // 2
  # TensorFlow SAME: the output is ceil(size / stride); the extra goes after.
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def reference_conv(x, kernel, stride, convention, groups):
  """Grouped 2-D conv, NHWC, kernel (kh, kw, in // groups, out): one matmul per tap/group."""
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  kh, kw, in_per_group, out_channels = kernel.shape
  assert in_per_group * groups == x.shape[-1]
  out_per_group = out_channels // groups
  (top, bottom), (left, right) = (reference_pads(x.shape[1], kh, stride, convention),
                                  reference_pads(x.shape[2], kw, stride, convention))
  padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  out_h = (padded.shape[1] - kh) // stride + 1
  out_w = (padded.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, out_channels))
  for i in range(kh):
    for j in range(kw):
      rows = slice(i, i + stride * (out_h - 1) + 1, stride)
      cols = slice(j, j + stride * (out_w - 1) + 1, stride)
      tap = padded[:, rows, cols]
      for g in range(groups):
        inputs = tap[..., g * in_per_group:(g + 1) * in_per_group]
        weights = kernel[i, j, :, g * out_per_group:(g + 1) * out_per_group]
        out[..., g * out_per_group:(g + 1) * out_per_group] += np.einsum(
            "nhwc,co->nhwo", inputs, weights)
  return out


def reference_pool(x, kind, convention):
  """3x3 stride-2 pool; 'same' averages only real pixels, 'symmetric' divides by 9."""
  x = np.asarray(x, np.float64)
  (top, bottom), (left, right) = (reference_pads(x.shape[1], 3, 2, convention),
                                  reference_pads(x.shape[2], 3, 2, convention))
  pad = ((0, 0), (top, bottom), (left, right), (0, 0))
  padded = np.pad(x, pad, constant_values=-np.inf if kind == "max" else 0.0)
  real = np.pad(np.ones_like(x), pad)  # 1 on real pixels, 0 on padding
  out_h, out_w = (padded.shape[1] - 3) // 2 + 1, (padded.shape[2] - 3) // 2 + 1
  windows = [(padded[:, i:i + 2 * out_h - 1:2, j:j + 2 * out_w - 1:2],
              real[:, i:i + 2 * out_h - 1:2, j:j + 2 * out_w - 1:2])
             for i in range(3) for j in range(3)]
  if kind == "max":
    return np.max([w for w, _ in windows], axis=0)
  total = np.sum([w for w, _ in windows], axis=0)
  count = np.sum([r for _, r in windows], axis=0) if convention == "same" else 9.0
  return total / count


def shuffle_permutation(channels, groups):
  """The paper's shuffle as an index formula: output j * g + i is input i * n + j."""
  n = channels // groups
  permutation = np.empty(channels, int)
  for i in range(groups):
    for j in range(n):
      permutation[j * groups + i] = i * n + j
  return permutation


def reference_shuffle(x, groups):
  return np.asarray(x)[..., shuffle_permutation(x.shape[-1], groups)]


def reference_batch_norm(x, params, stats):
  to64 = lambda name, tree: np.asarray(tree[name], np.float64)
  return ((x - to64("mean", stats)) / np.sqrt(to64("var", stats) + EPSILON)
          * to64("scale", params) + to64("bias", params))


def reference_conv_bn(x, variables, name, stride, convention, groups, relu):
  """One `layers.ConvBN` called `name`, from the module's own parameters and statistics."""
  params, stats = variables["params"][name], variables["batch_stats"][name]
  y = reference_conv(x, params["conv"]["kernel"], stride, convention, groups)
  y = reference_batch_norm(y, params["bn"], stats["bn"])
  return np.maximum(y, 0.0) if relu else y


# ---------------------------------------------------------------------------------------
# helpers


def random_input(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def conv_and_norm(conv=nn.Conv, norm=layers.BatchNorm):
  """The conv and BN factories the models build, at inference (train=False), float32;
  by default the paper's (XLA's own convolution)."""
  return common.conv_and_norm(conv, norm, train=False, dtype=jnp.float32, bn_momentum=0.9,
                              bn_epsilon=EPSILON)


def random_variables(module, x, seed=1):
  """The module's own variable tree, filled with random values drawn in numpy.

  The tree (names and shapes) comes from `module.init` under `jax.eval_shape`; the values
  are drawn here because compiling Flax's initializers costs seconds per module on CPU,
  and random BN statistics and affine parameters make a wrong BN formula show.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
    elif name == "mean":
      value = rng.normal(0.0, 0.5, shape)
    elif name == "var":
      value = rng.uniform(0.3, 2.0, shape)
    elif name == "scale":
      value = rng.uniform(0.5, 1.5, shape)
    elif name == "bias":
      value = rng.normal(0.0, 0.5, shape)
    else:
      raise AssertionError(f"unexpected variable {path}")
    return jnp.asarray(value, jnp.float32)

  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def assert_matches(actual, reference):
  reference = np.asarray(reference)
  np.testing.assert_allclose(np.asarray(actual, np.float64), reference, rtol=RTOL,
                             atol=RTOL * np.max(np.abs(reference)))


def differs_clearly(a, b):
  """True when a and b differ by far more than float32 rounding."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) > 1e3 * RTOL * np.max(np.abs(b))


# ---------------------------------------------------------------------------------------
# padding conventions


def test_reference_padding_rules_are_the_frameworks():
  # TF SAME at stride 2 on an even size pads nothing before and one after; odd sizes 1/1.
  assert reference_pads(8, 3, 2, "same") == (0, 1)
  assert reference_pads(9, 3, 2, "same") == (1, 1)
  assert reference_pads(8, 3, 1, "same") == (1, 1)
  assert reference_pads(8, 3, 2, "symmetric") == (1, 1)
  assert layers.spatial_padding(3, "symmetric") == ((1, 1), (1, 1))
  assert layers.spatial_padding(1, "symmetric") == ((0, 0), (0, 0))


def test_bad_padding_name_raises():
  with pytest.raises(ValueError, match=r"padding='valid'.*allowed values: 'same', 'symm"):
    layers.spatial_padding(3, "valid")


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("convention", layers.PADDING_CONVENTIONS)
def test_depthwise_conv_matches_reference(convention, stride, size):
  channels = 6
  x = random_input((2, size, size + 1, channels))  # unequal sides catch a swapped axis
  conv = nn.Conv(channels, (3, 3), strides=(stride, stride),
                 padding=layers.spatial_padding(3, convention),
                 feature_group_count=channels, use_bias=False)
  params = random_variables(conv, x)
  kernel = params["params"]["kernel"]
  assert kernel.shape == (3, 3, 1, channels)
  assert_matches(conv.apply(params, x),
                 reference_conv(x, kernel, stride, convention, groups=channels))


def test_padding_conventions_differ_at_stride_2_on_even_input_and_agree_at_stride_1():
  x = random_input((1, 8, 8, 4))
  outputs = {}
  for stride in (1, 2):
    for convention in layers.PADDING_CONVENTIONS:
      conv = nn.Conv(5, (3, 3), strides=(stride, stride),
                     padding=layers.spatial_padding(3, convention), use_bias=False)
      params = random_variables(conv, x)  # same seed: identical kernels
      outputs[stride, convention] = np.asarray(conv.apply(params, x))
  assert outputs[2, "same"].shape == outputs[2, "symmetric"].shape == (1, 4, 4, 5)
  assert differs_clearly(outputs[2, "same"], outputs[2, "symmetric"])
  np.testing.assert_array_equal(outputs[1, "same"], outputs[1, "symmetric"])


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
def test_pointwise_group_conv_matches_reference(groups):
  in_channels, out_channels = 24, 48
  x = random_input((2, 5, 5, in_channels))
  conv = nn.Conv(out_channels, (1, 1), feature_group_count=groups, use_bias=False,
                 padding=layers.spatial_padding(1, "same"))
  params = random_variables(conv, x)
  kernel = params["params"]["kernel"]
  assert kernel.shape == (1, 1, in_channels // groups, out_channels)
  assert_matches(conv.apply(params, x), reference_conv(x, kernel, 1, "same", groups))
  if groups > 1:
    # Each output group must ignore the other groups' inputs: zeroing group 0's inputs
    # leaves every other group's outputs unchanged.
    per_in, per_out = in_channels // groups, out_channels // groups
    masked = x.copy()
    masked[..., :per_in] = 0.0
    np.testing.assert_array_equal(np.asarray(conv.apply(params, masked))[..., per_out:],
                                  np.asarray(conv.apply(params, x))[..., per_out:])


# ---------------------------------------------------------------------------------------
# channel shuffle


@pytest.mark.parametrize("groups,channels", [(2, 8), (3, 12), (4, 8), (8, 24), (3, 60)])
def test_channel_shuffle_is_the_papers_permutation(groups, channels):
  x = random_input((2, 3, 3, channels))
  shuffled = np.asarray(layers.channel_shuffle(x, groups))
  np.testing.assert_array_equal(shuffled, reference_shuffle(x, groups))
  # The same as reshape (g, n) -> transpose -> flatten, written with numpy.
  np.testing.assert_array_equal(
      shuffled, x.reshape(2, 3, 3, groups, channels // groups).swapaxes(-1, -2)
      .reshape(x.shape))
  # A permutation: every input channel appears exactly once.
  labels = np.arange(channels, dtype=np.float32)
  assert sorted(np.asarray(layers.channel_shuffle(labels, groups)).tolist()) == labels.tolist()
  # The paper's point: each group of the next grouped conv sees every previous group.
  source_group = np.asarray(layers.channel_shuffle(labels, groups)).astype(int) // (
      channels // groups)
  per_group = channels // groups
  if per_group >= groups:
    for block in source_group.reshape(groups, per_group):
      assert set(block) == set(range(groups))
  # The inverse undoes it from both sides.
  np.testing.assert_array_equal(
      np.asarray(layers.inverse_channel_shuffle(layers.channel_shuffle(x, groups), groups)), x)
  np.testing.assert_array_equal(
      np.asarray(layers.channel_shuffle(layers.inverse_channel_shuffle(x, groups), groups)), x)
  inverse = np.argsort(shuffle_permutation(channels, groups))
  np.testing.assert_array_equal(np.asarray(layers.inverse_channel_shuffle(x, groups)),
                                x[..., inverse])


def test_channel_shuffle_with_one_group_is_identity_and_otherwise_not():
  x = random_input((1, 2, 2, 12))
  np.testing.assert_array_equal(np.asarray(layers.channel_shuffle(x, 1)), x)
  assert not np.array_equal(np.asarray(layers.channel_shuffle(x, 3)), x)


@pytest.mark.parametrize("shuffle", [layers.channel_shuffle, layers.inverse_channel_shuffle])
@pytest.mark.parametrize("groups", [0, -1, 5, 24])
def test_channel_shuffle_rejects_bad_groups(shuffle, groups):
  with pytest.raises(ValueError, match=f"groups={groups}"):
    shuffle(jnp.zeros((1, 2, 2, 12)), groups)


# ---------------------------------------------------------------------------------------
# pooling


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("convention", layers.PADDING_CONVENTIONS)
def test_pool_matches_reference(convention, kind, size):
  # Shifted negative so that a max over zero padding, or a mean counting it, would show.
  x = random_input((2, size, size, 3)) - 3.0
  assert_matches(layers.pool(x, kind, convention), reference_pool(x, kind, convention))


def test_avg_pool_border_rules_differ_between_conventions():
  # On an odd size both conventions pad 1/1; only the divisor at the border differs:
  # TF excludes the padding (corner = mean of 4 pixels), PyTorch includes it (sum / 9).
  x = np.ones((1, 9, 9, 1), np.float32)
  same = np.asarray(layers.pool(x, "avg", "same"))
  symmetric = np.asarray(layers.pool(x, "avg", "symmetric"))
  assert same[0, 0, 0, 0] == pytest.approx(1.0)
  assert symmetric[0, 0, 0, 0] == pytest.approx(4.0 / 9.0)
  assert symmetric[0, 1, 1, 0] == pytest.approx(1.0)  # interior windows agree


# ---------------------------------------------------------------------------------------
# whole blocks


@pytest.mark.parametrize("stride,convention,activation", [
    (1, "same", "relu"), (2, "same", "relu6"), (2, "symmetric", "relu"),
    (1, "symmetric", "relu6")])
def test_depthwise_separable_block_matches_reference(stride, convention, activation):
  in_channels, features = 8, 12
  # Large inputs so that ReLU6's clip at 6 is exercised as well as ReLU's at 0.
  x = 4.0 * random_input((2, 8, 7, in_channels))
  conv, norm = conv_and_norm()
  block = layers.DepthwiseSeparable(features, stride, conv=conv, norm=norm,
                                    activation=layers.ACTIVATIONS[activation],
                                    padding=convention)
  variables = random_variables(block, x)
  act = (lambda y: np.maximum(y, 0.0)) if activation == "relu" else (
      lambda y: np.clip(y, 0.0, 6.0))

  def reference(x):
    params, stats = variables["params"], variables["batch_stats"]
    y = reference_conv(x, params["depthwise"]["conv"]["kernel"], stride, convention,
                       groups=in_channels)
    y = act(reference_batch_norm(y, params["depthwise"]["bn"], stats["depthwise"]["bn"]))
    y = reference_conv(y, params["pointwise"]["conv"]["kernel"], 1, convention, groups=1)
    return act(reference_batch_norm(y, params["pointwise"]["bn"], stats["pointwise"]["bn"]))

  expected = reference(x)
  assert expected.shape == (2, -(-8 // stride), -(-7 // stride), features)
  if activation == "relu6":
    assert np.any(expected == 6.0)  # the clip is really exercised
  assert_matches(block.apply(variables, x), expected)


SHUFFLE_UNIT_CASES = [
    # stride, groups, in, out, shuffle, concat_order, padding, size, compress_groups
    (1, 3, 48, 48, True, "main_first", "same", 8, None),
    (1, 4, 48, 48, False, "main_first", "symmetric", 7, None),
    (1, 8, 64, 64, True, "main_first", "symmetric", 8, None),
    (2, 3, 24, 48, True, "main_first", "same", 8, None),
    (2, 3, 24, 48, True, "shortcut_first", "symmetric", 8, None),
    (2, 4, 16, 48, False, "shortcut_first", "same", 9, None),
    (2, 8, 16, 64, True, "main_first", "symmetric", 9, None),
    (2, 2, 8, 32, True, "shortcut_first", "same", 8, 1),  # Stage 2's ungrouped first 1x1
]


@pytest.mark.parametrize("implementation", ["paper", "fast"])
@pytest.mark.parametrize(
    "stride,groups,in_channels,out_channels,shuffle,concat_order,padding,size,compress_groups",
    SHUFFLE_UNIT_CASES)
def test_shuffle_unit_matches_reference(stride, groups, in_channels, out_channels, shuffle,
                                        concat_order, padding, size, compress_groups,
                                        implementation):
  """The paper's unit, and `fast.ShuffleUnit` (channel blocks) with its conv and norm."""
  x = random_input((2, size, size, in_channels))
  fields = dict(compress_groups=compress_groups, shuffle=shuffle, padding=padding,
                concat_order=concat_order)
  unit = layers.ShuffleUnit(out_channels, stride, groups, *conv_and_norm(), **fields)
  if implementation == "fast":
    paper_variables = jax.eval_shape(unit.init, jax.random.key(0), x)
    unit = fast.ShuffleUnit(out_channels, stride, groups,
                            *conv_and_norm(fast.Conv, fast.BatchNorm), **fields)
    # The same variables, names and shapes, as the paper's unit.
    assert (jax.tree.map(np.shape, jax.eval_shape(unit.init, jax.random.key(0), x))
            == jax.tree.map(np.shape, paper_variables))
  variables = random_variables(unit, x)
  bottleneck = out_channels // 4
  branch = out_channels - in_channels if stride == 2 else out_channels
  params = variables["params"]
  # Parameter layout: bottleneck of out/4, grouped 1x1s, the main branch makes out - in.
  assert params["compress"]["conv"]["kernel"].shape == (
      1, 1, in_channels // (compress_groups or groups), bottleneck)
  assert params["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, bottleneck)
  assert params["expand"]["conv"]["kernel"].shape == (1, 1, bottleneck // groups, branch)

  def main_branch(x, shuffle, relu_after_depthwise=False):
    y = reference_conv_bn(x, variables, "compress", 1, padding, compress_groups or groups,
                          relu=True)
    if shuffle:
      y = reference_shuffle(y, groups)
    y = reference_conv_bn(y, variables, "depthwise", stride, padding, bottleneck,
                          relu=relu_after_depthwise)
    return reference_conv_bn(y, variables, "expand", 1, padding, groups, relu=False)

  def merge(x, y):
    if stride == 1:
      return np.maximum(x + y, 0.0)
    shortcut = reference_pool(x, "avg", padding)
    parts = (y, shortcut) if concat_order == "main_first" else (shortcut, y)
    return np.maximum(np.concatenate(parts, axis=-1), 0.0)

  out = np.asarray(unit.apply(variables, x))
  out_size = -(-size // stride)
  assert out.shape == (2, out_size, out_size, out_channels)
  expected = merge(x, main_branch(x, shuffle))
  assert_matches(out, expected)

  # No ReLU after the depthwise conv: adding one to the reference breaks the match.
  assert differs_clearly(out, merge(x, main_branch(x, shuffle, relu_after_depthwise=True)))
  # The shuffle is really applied (or really not): the other choice gives other numbers.
  assert differs_clearly(out, merge(x, main_branch(x, not shuffle)))

  if stride == 2:
    # The pooled shortcut sits where concat_order says, untouched by the main branch.
    shortcut = np.maximum(reference_pool(x, "avg", padding), 0.0)
    if concat_order == "main_first":
      shortcut_part = out[..., branch:]
    else:
      shortcut_part = out[..., :in_channels]
    assert_matches(shortcut_part, shortcut)


@pytest.mark.parametrize("unit", [layers.ShuffleUnit, fast.ShuffleUnit])
def test_stride_1_shuffle_unit_needs_matching_channels(unit):
  unit = unit(48, 1, 3, *conv_and_norm())
  with pytest.raises(ValueError, match="in_channels == out_channels"):
    jax.eval_shape(unit.init, jax.random.key(0), jnp.zeros((1, 8, 8, 24)))


def test_check_images_names_the_problem():
  with pytest.raises(ValueError, match="4-D"):
    layers.check_images(jnp.zeros((8, 8, 3)), 3, 4)
  with pytest.raises(ValueError, match="input_channels=3"):
    layers.check_images(jnp.zeros((1, 8, 8, 1)), 3, 4)
  with pytest.raises(ValueError, match="resolution 8x8 is too small"):
    layers.check_images(jnp.zeros((1, 8, 8, 3)), 3, 32)
  with pytest.raises(ValueError, match="floating"):
    layers.check_images(jnp.zeros((1, 8, 8, 3), jnp.int32), 3, 4)
