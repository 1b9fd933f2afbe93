"""`layers.ShuffleUnit` computed on channel blocks: the same fields, variables and results.

A grouped 1x1 conv of one array slices its input into one copy per group and concatenates
the groups' products into another. Here the activations between the unit's grouped 1x1
convs stay a tuple of one channel block per group: the expand conv's group k and the next
unit's compress group k cover the same channels, so each group's product, BN and residual
addition run on its own block, and channels are only joined by the shuffle (one
interleaving copy) and at stride-2 units. The unit still takes and returns one array:
XLA removes the slices of a concatenation that exactly recover its operands, so between
units the blocks are never joined.

Each unit's output is computed once for all its readers (`conv.materialized`): XLA:CPU
would recompute each unit's residual sums inside the next units' own.

It needs the `conv` and `norm` of the 'fast' lowering (`fast.Conv`, `fast.BatchNorm`),
which take channel blocks.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from mobileshuffle_jax import layers
from mobileshuffle_jax.fast.conv import materialized


class GroupBlocksConvBN(nn.Module):
  """`layers.ConvBN` of a 1x1 group conv on channel blocks, with the same variables."""

  features: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef
  activation: layers.Activation | None = None

  @nn.compact
  def __call__(self, blocks: tuple[jnp.ndarray, ...]) -> tuple[jnp.ndarray, ...]:
    blocks = self.conv(self.features, (1, 1), feature_group_count=len(blocks), use_bias=False,
                       name="conv")(blocks)
    blocks = self.norm(name="bn")(blocks)
    return blocks if self.activation is None else tuple(map(self.activation, blocks))


def _blocks(x: jnp.ndarray, groups: int) -> tuple[jnp.ndarray, ...]:
  return tuple(jnp.split(x, groups, axis=-1))


class ShuffleUnit(layers.ShuffleUnit):
  """`layers.ShuffleUnit` (its fields) on channel blocks; see the module docstring."""

  @nn.compact
  def __call__(self, x):
    bottleneck, branch_channels = layers.shuffle_unit_widths(x.shape[-1], self.out_channels,
                                                             self.strides)
    compress_groups = self.groups if self.compress_groups is None else self.compress_groups
    layer = functools.partial(layers.ConvBN, conv=self.conv, norm=self.norm,
                              padding=self.padding)
    blocks_layer = functools.partial(GroupBlocksConvBN, conv=self.conv, norm=self.norm)

    if compress_groups not in (1, self.groups):
      raise ValueError(f"fast.ShuffleUnit: compress_groups={compress_groups} must be 1 or "
                       f"groups={self.groups}")
    # One split of x for the compress conv and the residual alike: two would each send
    # their gradient back joined, and the sum of the two joined gradients is a copy.
    x_blocks = _blocks(x, self.groups) if compress_groups > 1 or self.strides == 1 else ()
    if compress_groups > 1:
      y = blocks_layer(bottleneck, activation=nn.relu, name="compress")(x_blocks)
      if self.shuffle and self.shuffle_order == "paper":
        # channel_shuffle of the joined blocks, as one interleaving copy.
        y = jnp.stack(y, axis=-1).reshape(*y[0].shape[:-1], bottleneck)
      else:
        y = jnp.concatenate(y, axis=-1)
        if self.shuffle:
          y = layers.SHUFFLES[self.shuffle_order](y, self.groups)
    else:
      y = layer(bottleneck, 1, activation=nn.relu, name="compress")(x)
      if self.shuffle:
        y = layers.SHUFFLES[self.shuffle_order](y, self.groups)
    y = layer(bottleneck, 3, strides=self.strides, groups=bottleneck, name="depthwise")(y)
    y = blocks_layer(branch_channels, name="expand")(_blocks(y, self.groups))

    if self.strides == 1:
      return jnp.concatenate([materialized(nn.relu(a + b)) for a, b in zip(x_blocks, y)],
                             axis=-1)
    main = jnp.concatenate(y, axis=-1)
    shortcut = self.pool(x, "avg", self.padding)
    return materialized(nn.relu(layers.concatenate_with_shortcut(main, shortcut,
                                                                 self.concat_order)))
