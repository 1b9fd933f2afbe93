"""MobileNet v1 (Howard et al. 2017, arXiv 1704.04861).

The body is paper Table 1 with the stride typo fixed (the second-to-last depthwise layer
has stride 1: its input is already 7x7). Width multiplier alpha thins every layer;
the resolution multiplier is the input size itself.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mobileshuffle_jax import layers
from mobileshuffle_jax.models import common

STEM_FILTERS = 32
# (stride, pointwise filters) of the 13 depthwise-separable blocks, paper Table 1.
BLOCKS = (
    (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512),
    (2, 1024), (1, 1024),
)
# Paper Table 5's shallow MobileNet drops the five 14x14x512 blocks (1-based 7..11).
SHALLOW_DROPPED_BLOCKS = frozenset({7, 8, 9, 10, 11})
# "separable": the paper's network; "full": every block a dense 3x3 conv (paper Table 4);
# "shallow": paper Table 5.
VARIANTS = ("separable", "full", "shallow")
MIN_RESOLUTION = 32


def scaled_channels(filters: int, alpha: float, min_depth: int = 8) -> int:
  """Channels under width multiplier alpha: TF-slim's `max(int(d * alpha), min_depth)`.

  For the paper's four alphas (1, 0.75, 0.5, 0.25) this equals Keras' `int(d * alpha)`;
  `min_depth` only keeps very thin networks (alpha < 0.25) from collapsing.
  """
  return max(int(filters * alpha), min_depth)


class MobileNetV1(nn.Module):
  """MobileNet v1 classifier on NHWC float images."""

  num_classes: int = 1000
  alpha: float = 1.0
  variant: str = "separable"
  activation: str = "relu"  # the paper's; TF-slim and Keras weights use "relu6"
  dropout_rate: float = 1e-3  # TF-slim's keep probability 0.999
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  padding: str = "same"
  min_depth: int = 8
  input_channels: int = 3
  bn_group_size: int | None = None  # training BN statistics: None whole batch, k per k examples
  dtype: Any = jnp.float32
  # The conv and BatchNorm modules: the paper's, or others with the same variables.
  conv: layers.ModuleDef = nn.Conv
  norm: layers.ModuleDef = layers.BatchNorm
  # How inference runs a batch: all at once, or in chunks with the same results.
  batching: layers.Batching = layers.whole_batch

  def __post_init__(self):
    common.check_positive("alpha", self.alpha)
    layers.check_choice("variant", self.variant, VARIANTS)
    layers.check_choice("activation", self.activation, tuple(layers.ACTIVATIONS))
    common.check_common(num_classes=self.num_classes, dropout_rate=self.dropout_rate,
                        bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                        padding=self.padding, input_channels=self.input_channels)
    super().__post_init__()

  def block_specs(self) -> list[tuple[int, int, int]]:
    """(1-based paper block index, stride, output channels) of the blocks this variant keeps."""
    return [(i, stride, scaled_channels(filters, self.alpha, self.min_depth))
            for i, (stride, filters) in enumerate(BLOCKS, start=1)
            if not (self.variant == "shallow" and i in SHALLOW_DROPPED_BLOCKS)]

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
    activation = layers.ACTIVATIONS[self.activation]
    conv_bn = functools.partial(layers.ConvBN, conv=conv, norm=norm, activation=activation,
                                padding=self.padding)

    x = images.astype(self.dtype)
    x = conv_bn(scaled_channels(STEM_FILTERS, self.alpha, self.min_depth), 3, strides=2,
                name="stem")(x)
    for index, stride, features in self.block_specs():
      name = f"block{index}"
      if self.variant == "full":
        x = conv_bn(features, 3, strides=stride, name=name)(x)
      else:
        x = layers.DepthwiseSeparable(features, stride, conv=conv, norm=norm,
                                      activation=activation, padding=self.padding,
                                      name=name)(x)
    return common.classify(x, num_classes=self.num_classes, dropout_rate=self.dropout_rate,
                           train=train)
