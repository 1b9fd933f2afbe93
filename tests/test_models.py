"""The models end to end: every variant's shapes and channel widths against the papers,
a real training step, XLA's own FLOP count against the complexity counter, and clear
errors for bad input.

Shapes are traced with `jax.eval_shape` (nothing compiled); only the training step and
the FLOP count compile, at small sizes.
"""

import dataclasses
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobileshuffle_jax import complexity, layers, models
from mobileshuffle_jax.models import mobilenet_v1, shufflenet_v1

RESOLUTIONS = (224, 192, 160, 128, 161)  # the paper's four and an odd one
PADDINGS = layers.PADDING_CONVENTIONS

# MobileNet paper Table 1: the stem's filters, then each block's (stride, pointwise filters).
PAPER_MOBILENET_STEM = 32
PAPER_MOBILENET_BLOCKS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
                          (1, 512), (1, 512), (1, 512), (1, 512), (1, 512),
                          (2, 1024), (1, 1024))
PAPER_MOBILENET_SHALLOW_DROPS = {7, 8, 9, 10, 11}  # Table 5: the five 14x14x512 blocks
# ShuffleNet paper Table 1: Stage 2-4 output channels at 1x.
PAPER_SHUFFLENET_TABLE1 = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960),
                           4: (272, 544, 1088), 8: (384, 768, 1536)}
SHUFFLENET_SCALES = (0.25, 0.5, 1.0, 1.5, 2.0)


def halved(size: int, times: int) -> int:
  """Spatial size after `times` 3x3 stride-2 layers: ceil(size / 2) each time.

  True in both conventions: TF SAME gives ceil(n / 2) by definition, PyTorch's pad 1 gives
  floor((n + 2 - 3) / 2) + 1 = ceil(n / 2).
  """
  for _ in range(times):
    size = -(-size // 2)
  return size


@dataclasses.dataclass
class Trace:
  """What `trace` saw: logits and variable shapes, every conv call, every BN output, and
  the input and output shape of every top-level block (`stem`, `block3`, `stage2_unit1`)."""

  logits: tuple
  variables: dict
  convs: list  # (path, input shape, output shape, feature_group_count, kernel, strides)
  norms: list  # (path, output shape)
  blocks: dict  # name -> (input shape, output shape)


def trace(model, resolution, batch=2) -> Trace:
  """Shapes only: `model.init` under `jax.eval_shape`, nothing computed or compiled.

  Traced in the paper's form (lowering 'xla'; test_fast.py proves the faster forms equal
  to it).
  """
  model = models.with_lowering(model, "xla")
  convs, norms, blocks = [], [], {}

  def record(next_fun, args, kwargs, context):
    outputs = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__":
      path = "/".join(module.path)
      if isinstance(module, nn.Conv):
        convs.append((path, args[0].shape, outputs.shape, module.feature_group_count,
                      tuple(module.kernel_size), tuple(module.strides)))
      elif isinstance(module, layers.BatchNorm):
        norms.append((path, outputs.shape))
      if len(module.path) == 1:
        blocks[module.path[0]] = (args[0].shape, outputs.shape)
    return outputs

  def init(images):
    with nn.intercept_methods(record):
      return model.init_with_output(jax.random.key(0), images, train=False)

  images = jax.ShapeDtypeStruct((batch, resolution, resolution, model.input_channels),
                                jnp.float32)
  logits, variables = jax.eval_shape(init, images)
  return Trace(logits.shape, variables, convs, norms, blocks)


def kernel_shape(variables, path):
  tree = variables["params"]
  for name in path.split("/"):
    tree = tree[name]
  return tree["kernel"].shape


# ---------------------------------------------------------------------------------------
# MobileNet shapes and widths

# Every (alpha, variant) once; activation, resolution and padding rotate so that every
# resolution meets both conventions without tracing the whole product.
MOBILENET_CASES = [
    (alpha, variant, ("relu", "relu6")[i % 2], RESOLUTIONS[i % 5], PADDINGS[(i // 5) % 2])
    for i, (alpha, variant) in enumerate(
        itertools.product((1.0, 0.75, 0.5, 0.25, 0.3), mobilenet_v1.VARIANTS))]


@pytest.mark.parametrize("alpha,variant,activation,resolution,padding", MOBILENET_CASES)
def test_mobilenet_shapes(alpha, variant, activation, resolution, padding):
  model = models.build("mobilenet_v1", alpha=alpha, variant=variant, activation=activation,
                       padding=padding)
  seen = trace(model, resolution)
  assert seen.logits == (2, 1000)

  width = lambda filters: max(int(filters * alpha), 8)  # TF-slim's rule (Keras' for >= .25)
  size = halved(resolution, 1)
  assert seen.blocks["stem"][1] == (2, size, size, width(PAPER_MOBILENET_STEM))
  kept = [i for i in range(1, 14)
          if not (variant == "shallow" and i in PAPER_MOBILENET_SHALLOW_DROPS)]
  assert sorted(name for name in seen.blocks if name.startswith("block")) == sorted(
      f"block{i}" for i in kept)
  channels = width(PAPER_MOBILENET_STEM)
  for i in kept:
    stride, filters = PAPER_MOBILENET_BLOCKS[i - 1]
    size = halved(size, 1) if stride == 2 else size
    assert seen.blocks[f"block{i}"][1] == (2, size, size, width(filters)), f"block{i}"
    if variant == "full":
      assert kernel_shape(seen.variables, f"block{i}/conv") == (3, 3, channels, width(filters))
    else:
      assert kernel_shape(seen.variables, f"block{i}/depthwise/conv") == (3, 3, 1, channels)
      assert kernel_shape(seen.variables, f"block{i}/pointwise/conv") == (
          1, 1, channels, width(filters))
    channels = width(filters)
  assert size == halved(resolution, 5)  # output stride 32
  for path, inputs, outputs, groups, _, _ in seen.convs:
    if path.endswith("depthwise/conv"):  # depthwise: one group per channel
      assert groups == inputs[-1] == outputs[-1], path
    else:
      assert groups == 1, path


# int(d * alpha) of paper Table 1's stem and block 1, 2, 4, 6, 13 widths (Keras, TF-slim).
PAPER_MOBILENET_WIDTHS = {
    1.0: (32, 64, 128, 256, 512, 1024), 0.75: (24, 48, 96, 192, 384, 768),
    0.5: (16, 32, 64, 128, 256, 512), 0.25: (8, 16, 32, 64, 128, 256)}


@pytest.mark.parametrize("alpha", PAPER_MOBILENET_WIDTHS)
def test_mobilenet_standard_alphas_have_the_papers_channels(alpha):
  stem, c64, c128, c256, c512, c1024 = PAPER_MOBILENET_WIDTHS[alpha]
  variables = trace(models.build("mobilenet_v1", alpha=alpha), 128, batch=1).variables
  assert kernel_shape(variables, "stem/conv") == (3, 3, 3, stem)
  assert kernel_shape(variables, "block1/depthwise/conv") == (3, 3, 1, stem)
  assert kernel_shape(variables, "block1/pointwise/conv") == (1, 1, stem, c64)
  assert kernel_shape(variables, "block2/pointwise/conv") == (1, 1, c64, c128)
  assert kernel_shape(variables, "block4/pointwise/conv") == (1, 1, c128, c256)
  assert kernel_shape(variables, "block6/pointwise/conv") == (1, 1, c256, c512)
  assert kernel_shape(variables, "block12/depthwise/conv") == (3, 3, 1, c512)
  assert kernel_shape(variables, "block13/pointwise/conv") == (1, 1, c1024, c1024)
  assert kernel_shape(variables, "classifier") == (c1024, 1000)


# ---------------------------------------------------------------------------------------
# ShuffleNet shapes and widths

# Every (groups, scale) of paper Table 2 plus 1.5x and 2x; shuffle, variant, resolution
# and padding rotate (resolution as a Latin square so each scale meets several sizes).
SHUFFLENET_CASES = [
    (groups, scale, i % 2 == 0, ("standard", "shallow")[(i // 2) % 2],
     RESOLUTIONS[(i + i // 5) % 5], PADDINGS[(i // 5) % 2])
    for i, (groups, scale) in enumerate(
        itertools.product(shufflenet_v1.GROUPS, SHUFFLENET_SCALES))]


@pytest.mark.parametrize("groups,scale,shuffle,variant,resolution,padding", SHUFFLENET_CASES)
def test_shufflenet_shapes_and_every_grouped_conv_divides(groups, scale, shuffle, variant,
                                                          resolution, padding):
  model = models.build("shufflenet_v1", groups=groups, scale=scale, shuffle=shuffle,
                       variant=variant, padding=padding)
  seen = trace(model, resolution)
  assert seen.logits == (2, 1000)
  assert seen.blocks["stem"][1][1:3] == (halved(resolution, 1),) * 2

  widths = shufflenet_v1.stage_channels(groups, scale)
  repeats = (4, 8, 4) if variant == "standard" else (2, 4, 2)  # Table 1; Table 5's half
  expected_units = [(f"stage{stage}_unit{unit}", stage, width)
                    for stage, width, count in zip((2, 3, 4), widths, repeats)
                    for unit in range(1, count + 1)]
  assert sorted(name for name in seen.blocks if name.startswith("stage")) == sorted(
      name for name, _, _ in expected_units)
  for name, stage, width in expected_units:
    size = halved(resolution, stage + 1)  # Conv1 and the max pool, then one per stage
    inputs, outputs = seen.blocks[name]
    assert outputs == (2, size, size, width), name
    branch = width - inputs[-1] if name.endswith("unit1") else width
    assert kernel_shape(seen.variables, f"{name}/expand/conv")[-1] == branch, name
    assert kernel_shape(seen.variables, f"{name}/compress/conv")[-1] == width // 4, name

  for path, inputs, outputs, feature_groups, _, _ in seen.convs:
    # Grouping as the paper has it: Conv1 and Stage 2's first 1x1 dense, depthwise 3x3,
    # every other 1x1 in `groups` groups.
    if path in ("stem/conv", "stage2_unit1/compress/conv"):
      expected_groups = 1
    elif path.endswith("depthwise/conv"):
      expected_groups = inputs[-1]
    else:
      expected_groups = groups
    assert feature_groups == expected_groups, path
    # Divides evenly: whole channels per group on both sides, and the kernel agrees.
    assert inputs[-1] % feature_groups == 0 and outputs[-1] % feature_groups == 0, path
    assert kernel_shape(seen.variables, path)[2] * feature_groups == inputs[-1], path


@pytest.mark.parametrize("groups", PAPER_SHUFFLENET_TABLE1)
def test_shufflenet_table1_widths_are_unchanged_by_rounding(groups):
  assert shufflenet_v1.stage_channels(groups, 1.0) == PAPER_SHUFFLENET_TABLE1[groups]
  model = models.build("shufflenet_v1", groups=groups)
  assert [width for _, _, width, _ in model.unit_specs()] == [
      width for width, count in zip(PAPER_SHUFFLENET_TABLE1[groups], (4, 8, 4))
      for _ in range(count)]
  assert model.stem_channels == 24


# The authors' release (megvii ShuffleNet-Series): [Conv1, Stage 2, Stage 3, Stage 4].
AUTHORS_RELEASE_WIDTHS = {
    (3, 0.5): (12, 120, 240, 480), (3, 1.0): (24, 240, 480, 960),
    (3, 1.5): (24, 360, 720, 1440), (3, 2.0): (48, 480, 960, 1920),
    (8, 0.5): (16, 192, 384, 768), (8, 1.0): (24, 384, 768, 1536),
    (8, 1.5): (24, 576, 1152, 2304), (8, 2.0): (48, 768, 1536, 3072)}


@pytest.mark.parametrize("groups,scale", AUTHORS_RELEASE_WIDTHS)
def test_shufflenet_authors_release_widths(groups, scale):
  conv1, *stages = AUTHORS_RELEASE_WIDTHS[groups, scale]
  model = models.build("shufflenet_v1", groups=groups, scale=scale)
  assert model.stem_channels == conv1
  assert shufflenet_v1.stage_channels(groups, scale) == tuple(stages)


@pytest.mark.parametrize("groups", shufflenet_v1.GROUPS)
def test_shufflenet_rounding_rule(groups):
  # Each width is a multiple of 4g (so the bottleneck, out / 4, divides by g), changes
  # nothing that already is one, and otherwise moves by at most half a step.
  for scale in (0.25, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0):
    for base, width in zip(PAPER_SHUFFLENET_TABLE1[groups],
                           shufflenet_v1.stage_channels(groups, scale)):
      exact = base * scale
      assert width % (4 * groups) == 0
      if exact % (4 * groups) == 0:
        assert width == exact
      else:
        assert abs(width - exact) <= 2 * groups


def test_shufflenet_rounding_is_needed_at_half_width_g4():
  # Paper 0.5x g=4: 136 channels would make a bottleneck of 34, not divisible by 4.
  assert shufflenet_v1.stage_channels(4, 0.5)[0] == 144


# ---------------------------------------------------------------------------------------
# a real training step


def numpy_variables(model, images, seed=0):
  """The model's variable tree with He-normal kernels and BN at its init (mean 0, var 1).

  Drawn in numpy: compiling Flax's truncated-normal initializers for a whole model takes
  tens of seconds on CPU, and this test is about the forward and backward pass.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = math.prod(leaf.shape[:-1])
      return jnp.asarray(rng.normal(0.0, math.sqrt(2.0 / fan_in), leaf.shape), jnp.float32)
    return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, jnp.float32)

  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  return jax.tree_util.tree_map_with_path(fill, shapes)


TRAIN_CASES = [
    # The default lowering (on CPU, `fast`'s shifted multiply-adds)...
    ("mobilenet_v1", dict(alpha=0.25, activation="relu6", dropout_rate=0.5)),
    # ...and the paper's code with XLA's own convolution, the default on accelerators.
    # Shallow (2, 4, 2 units) halves the compile time and still has every kind of unit.
    ("shufflenet_v1", dict(groups=3, scale=0.25, variant="shallow", padding="symmetric",
                           concat_order="shortcut_first", dropout_rate=0.5,
                           lowering="xla")),
]


@pytest.mark.parametrize("name,options", TRAIN_CASES, ids=lambda c: c if isinstance(c, str)
                         else "-".join(f"{k}={v}" for k, v in c.items()))
def test_train_step_forward_backward(name, options):
  model = models.build(name, num_classes=10, **options)
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 64, 64, 3)), jnp.float32)
  labels = jnp.array([3, 7])
  variables = numpy_variables(model, images)

  def loss_fn(params, batch_stats, dropout_key):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                  train=True, mutable=["batch_stats"],
                                  rngs={"dropout": dropout_key})
    log_probs = jax.nn.log_softmax(logits)
    loss = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))
    return loss, (logits, updates["batch_stats"])

  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss, (logits, new_stats)), grads = step(variables["params"], variables["batch_stats"],
                                            jax.random.key(0))
  assert logits.shape == (2, 10)
  assert np.isfinite(float(loss))
  assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad)), jax.tree_util.keystr(path)
    # Every parameter reaches the loss: no layer is left out of the graph.
    assert np.any(grad != 0.0), jax.tree_util.keystr(path)
  # Train mode updated every BN's running statistics (they start at mean 0, var 1). Its
  # variance, that is: a BN whose input is a linear map of a train-mode BN's output (each
  # ShuffleNet expand conv, after the depthwise BN) sees a batch mean of exactly zero at
  # initialization, so its running mean stays at rounding noise, which may be below
  # allclose's tolerance.
  assert jax.tree.structure(new_stats) == jax.tree.structure(variables["batch_stats"])
  for path, old, new in zip(*zip(*jax.tree_util.tree_leaves_with_path(
      variables["batch_stats"])), jax.tree.leaves(new_stats)):
    if jax.tree_util.keystr(path).endswith("['var']"):
      assert not np.allclose(np.asarray(old), np.asarray(new)), jax.tree_util.keystr(path)
  # Dropout is active in train mode: another key, other logits.
  (_, (other_logits, _)), _ = step(variables["params"], variables["batch_stats"],
                                   jax.random.key(1))
  assert not np.allclose(np.asarray(logits), np.asarray(other_logits))

  # Inference needs no rng, is deterministic and reads the running statistics.
  evaluate = jax.jit(lambda variables, images: model.apply(variables, images, train=False))
  first = np.asarray(evaluate(variables, images))
  np.testing.assert_array_equal(first, np.asarray(evaluate(variables, images)))
  updated = np.asarray(evaluate({"params": variables["params"], "batch_stats": new_stats},
                                images))
  assert np.all(np.isfinite(updated)) and not np.allclose(first, updated)


# ---------------------------------------------------------------------------------------
# XLA's FLOP count against the complexity counter


def xla_flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  # jax 0.10.2 returns one dict; older versions returned a list of one dict per device.
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis["flops"])


def valid_taps(size, out_size, kernel, stride, padding):
  """Kernel taps that land on real pixels, summed over one axis's output positions."""
  if padding == "symmetric":
    before = kernel // 2
  else:
    before = max((out_size - 1) * stride + kernel - size, 0) // 2
  return sum(sum(0 <= o * stride - before + t < size for t in range(kernel))
             for o in range(out_size))


def xla_accounting(model, seen: Trace) -> tuple[int, int]:
  """(mult-adds on padding, elementwise flops): what XLA counts differently from the paper.

  XLA's HloCostAnalysis counts 2 flops per multiply-add of a conv but skips the taps that
  fall on padding (the paper counts the full kernel everywhere), and counts one flop per
  element for every elementwise op: inference BatchNorm (x - mean) * (scale * rsqrt(var +
  eps)) + bias is 3 per element plus 2 per channel, ReLU and a residual add 1 each, a 3x3
  window 8 (max) or 9 (8 adds and a divide), the global mean 1 per input element, the
  classifier's bias 1 per class. The counter counts none of these (the papers' convention).
  """
  on_padding = 0
  for _, inputs, outputs, groups, (kh, kw), (sh, sw) in seen.convs:
    real = (valid_taps(inputs[1], outputs[1], kh, sh, model.padding)
            * valid_taps(inputs[2], outputs[2], kw, sw, model.padding))
    full = kh * kw * outputs[1] * outputs[2]
    on_padding += (full - real) * outputs[3] * (inputs[3] // groups)

  elementwise = 0
  shufflenet = isinstance(model, shufflenet_v1.ShuffleNetV1)
  for path, outputs in seen.norms:
    elements = math.prod(outputs[1:])
    elementwise += 3 * elements + 2 * outputs[-1]
    if not shufflenet or path.endswith(("stem/bn", "compress/bn")):
      elementwise += elements  # the ReLU after it
  if shufflenet:
    elementwise += 8 * math.prod(seen.blocks["stage2_unit1"][0][1:])  # max pool
    for name, stride, _, _ in model.unit_specs():
      inputs, outputs = seen.blocks[name]
      if stride == 1:
        elementwise += 2 * math.prod(outputs[1:])  # add and ReLU
      else:  # ReLU after the concat, average pool of the shortcut
        elementwise += math.prod(outputs[1:]) + 9 * math.prod(outputs[1:3]) * inputs[3]
  last_feature_map = [outputs for name, (_, outputs) in seen.blocks.items()
                      if name.startswith(("block", "stage"))][-1]
  elementwise += math.prod(last_feature_map[1:]) + model.num_classes  # mean, bias
  return on_padding, elementwise


@pytest.mark.parametrize("name,options", [("mobilenet_v1", dict(alpha=1.0)),
                                          ("shufflenet_v1", dict(groups=3, scale=1.0))])
def test_xla_flops_agree_with_counter(name, options):
  # XLA's own convolution (lowering 'xla'), whose cost XLA counts per conv: a faster
  # lowering computes the same sums with other primitives and other flop counts.
  model, resolution = models.build(name, lowering="xla", **options), 128
  mult_adds = complexity.count(model, resolution).mult_adds
  seen = trace(model, resolution, batch=1)
  on_padding, elementwise = xla_accounting(model, seen)

  images = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
  lowered = jax.jit(lambda variables, images: model.apply(variables, images, train=False)
                    ).lower(seen.variables, images)
  # With fusion off every op is counted once, and the accounting is exact (measured: equal
  # up to the float32 rounding of XLA's total).
  unfused = xla_flops(lowered.compile({"xla_disable_hlo_passes": "fusion"}))
  assert unfused == pytest.approx(2 * (mult_adds - on_padding) + elementwise, rel=1e-6)
  # So XLA's conv and matmul flops are twice the counter's mult-adds, less the taps on
  # padding, which are under 1%. (BN, ReLU and pools add 1.8% for MobileNet and 5% for
  # ShuffleNet, whose convs are cheap: too much to fold into a tolerance.)
  assert 0.99 * 2 * mult_adds < unfused - elementwise <= 2 * mult_adds

  # The default compile may recompute cheap elementwise producers inside several
  # consumers' fusions (ShuffleNet: each stride-1 unit recomputes the residual chain's
  # add, ReLU and BN), never a conv or the matmul: any excess is elementwise work.
  compiled = xla_flops(lowered.compile())
  assert unfused <= compiled <= unfused + 2 * elementwise
  print(f"{name} {options} at {resolution}: XLA flops / counter mult-adds = "
        f"{compiled / mult_adds:.4f} (default compile), {unfused / mult_adds:.4f} "
        f"(no fusion), {(unfused - elementwise) / mult_adds:.4f} (convs and matmul only)")


# ---------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("name,options,match", [
    ("mobilenet_v1", dict(alpha=0), r"alpha=0 must be > 0"),
    ("mobilenet_v1", dict(alpha=-0.5), r"alpha=-0.5 must be > 0"),
    ("shufflenet_v1", dict(scale=0.0), r"scale=0.0 must be > 0"),
    ("shufflenet_v1", dict(groups=5), r"groups=5 .*allowed values: 1, 2, 3, 4, 8"),
    ("shufflenet_v1", dict(groups=3, conv1_channels=25), r"conv1_channels=25 .*groups=3"),
    ("shufflenet_v1", dict(groups=3, conv1_channels=240), r"conv1_channels=240 .*below"),
    ("mobilenet_v1", dict(padding="valid"), r"padding='valid' .*'same', 'symmetric'"),
    ("shufflenet_v1", dict(padding="SAME"), r"padding='SAME' .*'same', 'symmetric'"),
    ("mobilenet_v1", dict(activation="gelu"), r"activation='gelu' .*'relu', 'relu6'"),
    ("mobilenet_v1", dict(variant="deep"), r"variant='deep' .*'separable', 'full', 'shallow'"),
    ("shufflenet_v1", dict(variant="full"), r"variant='full' .*'standard', 'shallow'"),
    ("shufflenet_v1", dict(concat_order="last"),
     r"concat_order='last' .*'main_first', 'shortcut_first'"),
    ("mobilenet_v1", dict(num_classes=0), r"num_classes=0"),
    ("mobilenet_v1", dict(dropout_rate=1.0), r"dropout_rate=1.0"),
])
def test_bad_options_raise_clear_errors(name, options, match):
  with pytest.raises(ValueError, match=match):
    models.build(name, **options)


def test_build_rejects_unknown_model_and_option():
  with pytest.raises(ValueError, match=r"model='resnet50' .*'mobilenet_v1', 'shufflenet_v1'"):
    models.build("resnet50")
  with pytest.raises(ValueError, match=r"no option 'width'"):
    models.build("mobilenet_v1", width=0.5)


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("shape,match", [
    ((1, 16, 16, 3), r"resolution 16x16 is too small.*at least 32"),
    ((1, 64, 64, 1), r"input_channels=3"),
    ((1, 64, 64, 4), r"input_channels=3"),
    ((64, 64, 3), r"4-D"),
])
def test_bad_images_raise_clear_errors(name, shape, match):
  model = models.build(name)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))
