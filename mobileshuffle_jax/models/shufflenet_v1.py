"""ShuffleNet v1 (Zhang et al., arXiv 1707.01083 v2).

Paper Table 1: Conv1 3x3/2 -> MaxPool 3x3/2 -> Stages 2, 3, 4 of 4, 8, 4 ShuffleUnits (the
first of each with stride 2) -> global pool -> FC. "ShuffleNet s x" multiplies every
channel count by s.

Channel rounding rule (one function, `stage_channels`): each stage's output width is
`base * s` rounded to the nearest multiple of `4 * g` (halves round up, never below
`4 * g`). Then the bottleneck (out / 4) is divisible by g, and so is every stride-2 main
branch (out - in, both multiples of g), so every grouped conv divides evenly for every
(g, s) of the paper's Table 2. Where `base * s` already is such a multiple, which is the
case for every width of the paper's Table 1 and of the authors' release, nothing changes.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mobileshuffle_jax import layers
from mobileshuffle_jax.models import common

# Paper Table 1: output channels of Stages 2, 3, 4 at 1x, by number of groups.
STAGE_CHANNELS = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
GROUPS = tuple(STAGE_CHANNELS)
STAGE_REPEATS = (4, 8, 4)
SHALLOW_STAGE_REPEATS = (2, 4, 2)  # paper Table 5: half the units of each stage
VARIANTS = ("standard", "shallow")
CONV1_BASE_CHANNELS = 24
MIN_RESOLUTION = 32


def stage_channels(groups: int, scale: float) -> tuple[int, int, int]:
  """Output channels of Stages 2-4 for `groups` and `scale` (see the module docstring)."""
  layers.check_choice("groups", groups, GROUPS)
  common.check_positive("scale", scale)
  multiple = 4 * groups
  return tuple(max(multiple, multiple * math.floor(base * scale / multiple + 0.5))
               for base in STAGE_CHANNELS[groups])


def default_conv1_channels(groups: int, scale: float) -> int:
  """Conv1 width per scale: the authors' release where it has one, else a stated rule.

  The release uses 24 at 1x and 1.5x, 48 at 2x, and at 0.5x 12 (g=3) or 16 (g=8): the
  smallest multiple of g not below 12. At 0.25x and below, Conv1 scaled with s (6)
  undershoots the printed 13 MFLOPs and 16 (g=8) overshoots it by 18%, so we take the
  largest multiple of g not above 12 (12, or 8 at g=8: 12.0 to 13.3 M for every g). Any
  other scale: 24 * s rounded up to a multiple of g (Stage 2's first stride-2 branch,
  out - conv1, must divide by g).
  """
  if scale <= 0.25:
    return groups * (12 // groups)
  if scale <= 0.5:
    return groups * math.ceil(12 / groups)
  if 1.0 <= scale <= 1.5:
    return CONV1_BASE_CHANNELS
  if scale == 2.0:
    return 2 * CONV1_BASE_CHANNELS
  return groups * math.ceil(CONV1_BASE_CHANNELS * scale / groups)


class ShuffleNetV1(nn.Module):
  """ShuffleNet v1 classifier on NHWC float images."""

  num_classes: int = 1000
  groups: int = 3
  scale: float = 1.0
  shuffle: bool = True  # False: the paper's Table 3 ablation
  variant: str = "standard"
  conv1_channels: int | None = None  # None: `default_conv1_channels(groups, scale)`
  concat_order: str = "main_first"
  shuffle_order: str = "paper"
  classifier_bias: bool = True
  dropout_rate: float = 0.0
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  padding: str = "same"
  input_channels: int = 3
  bn_group_size: int | None = None  # training BN statistics: None whole batch, k per k examples
  dtype: Any = jnp.float32
  # The conv, BatchNorm and unit modules and the pooling function: the paper's, or others
  # with the same variables and results.
  conv: layers.ModuleDef = nn.Conv
  norm: layers.ModuleDef = layers.BatchNorm
  unit: layers.ModuleDef = layers.ShuffleUnit
  pool: layers.Pool = layers.pool
  # How inference runs a batch: all at once, or in chunks with the same results.
  batching: layers.Batching = layers.whole_batch

  def __post_init__(self):
    layers.check_choice("groups", self.groups, GROUPS)
    common.check_positive("scale", self.scale)
    layers.check_choice("variant", self.variant, VARIANTS)
    layers.check_choice("concat_order", self.concat_order, layers.CONCAT_ORDERS)
    layers.check_choice("shuffle_order", self.shuffle_order, layers.SHUFFLE_ORDERS)
    common.check_common(num_classes=self.num_classes, dropout_rate=self.dropout_rate,
                        bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                        padding=self.padding, input_channels=self.input_channels)
    conv1 = self.stem_channels
    stage2 = stage_channels(self.groups, self.scale)[0]
    if not (isinstance(conv1, int) and conv1 >= 1 and conv1 % self.groups == 0
            and conv1 < stage2):
      raise ValueError(
          f"conv1_channels={conv1!r} must be a positive multiple of groups={self.groups} "
          f"below Stage 2's {stage2} channels (Stage 2's first unit concatenates Conv1's "
          f"output with a branch of {stage2} - conv1_channels grouped channels)")
    super().__post_init__()

  @property
  def stem_channels(self) -> int:
    if self.conv1_channels is None:
      return default_conv1_channels(self.groups, self.scale)
    return self.conv1_channels

  def unit_specs(self) -> list[tuple[str, int, int, int]]:
    """(name, stride, output channels, groups of the first 1x1) for every unit."""
    repeats = STAGE_REPEATS if self.variant == "standard" else SHALLOW_STAGE_REPEATS
    specs = []
    for stage, (channels, units) in enumerate(
        zip(stage_channels(self.groups, self.scale), repeats), start=2):
      for unit in range(1, units + 1):
        # Stage 2's first 1x1 is not grouped: its input (Conv1) has only a few channels.
        compress_groups = 1 if (stage, unit) == (2, 1) else self.groups
        specs.append((f"stage{stage}_unit{unit}", 2 if unit == 1 else 1, channels,
                      compress_groups))
    return specs

  def __call__(self, images, train: bool = False):
    layers.check_images(images, self.input_channels, MIN_RESOLUTION)
    if train:
      return self.network(images, train=True)
    return self.batching(self, layers.inference_logits, images)

  @nn.compact
  def network(self, images, train: bool):
    """The logits of `images`: the model itself (`__call__` adds the checks and batching)."""
    conv, norm = common.conv_and_norm(self.conv, self.norm, train=train, dtype=self.dtype,
                                      bn_momentum=self.bn_momentum,
                                      bn_epsilon=self.bn_epsilon,
                                      bn_group_size=self.bn_group_size)
    x = images.astype(self.dtype)
    x = layers.ConvBN(self.stem_channels, 3, conv=conv, norm=norm, strides=2,
                      activation=nn.relu, padding=self.padding, name="stem")(x)
    x = self.pool(x, "max", self.padding)
    unit = functools.partial(self.unit, groups=self.groups, conv=conv, norm=norm, pool=self.pool,
                             shuffle=self.shuffle, padding=self.padding,
                             concat_order=self.concat_order,
                             shuffle_order=self.shuffle_order)
    for name, stride, channels, compress_groups in self.unit_specs():
      x = unit(channels, stride, compress_groups=compress_groups, name=name)(x)
    return common.classify(x, num_classes=self.num_classes, dropout_rate=self.dropout_rate,
                           train=train, use_bias=self.classifier_bias)
