"""Layers shared by MobileNet v1 and ShuffleNet v1 (Flax Linen).

Every convolution is a plain `nn.Conv`: depthwise is `feature_group_count == channels`,
a pointwise group convolution is a 1x1 conv with `feature_group_count == groups`. The
parameter layout is therefore always flax's `(kh, kw, in // groups, out)`; a faster
lowering for a backend swaps only the `conv_general_dilated` function the conv calls.
The one exception, `GroupBlocksConv`, declares the very variable `nn.Conv` would: it
computes a pointwise group conv on inputs already split by group (see `ShuffleUnit`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mobileshuffle_jax import lowering

ModuleDef = Any
Activation = Callable[[jnp.ndarray], jnp.ndarray]

# "same": TensorFlow's SAME (at stride 2 on even sizes: 0 before, 1 after).
# "symmetric": PyTorch's padding=k//2 on both sides.
PADDING_CONVENTIONS = ("same", "symmetric")

ACTIVATIONS: dict[str, Activation] = {"relu": nn.relu, "relu6": nn.relu6}


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
  if value not in allowed:
    raise ValueError(f"{name}={value!r} is not supported; allowed values: "
                     f"{', '.join(repr(a) for a in allowed)}")


def spatial_padding(kernel_size: int, convention: str):
  """The `padding` argument of a conv or pool for one of PADDING_CONVENTIONS."""
  check_choice("padding", convention, PADDING_CONVENTIONS)
  if convention == "same":
    return "SAME"
  return ((kernel_size // 2, kernel_size // 2),) * 2


def channel_shuffle(x: jnp.ndarray, groups: int) -> jnp.ndarray:
  """ShuffleNet's channel shuffle on the last axis, in the paper's order.

  The channels of a layer with `groups` groups are viewed as (groups, n), transposed
  to (n, groups) and flattened: output channel `j * groups + i` is input channel
  `i * n + j`, so each group of the next grouped conv sees one channel of every group.
  """
  channels = x.shape[-1]
  if groups < 1 or channels % groups:
    raise ValueError(f"channel_shuffle: groups={groups} must be a positive divisor "
                     f"of the channel count {channels}")
  x = x.reshape(*x.shape[:-1], groups, channels // groups)
  x = jnp.swapaxes(x, -1, -2)
  return x.reshape(*x.shape[:-2], channels)


def inverse_channel_shuffle(x: jnp.ndarray, groups: int) -> jnp.ndarray:
  """The inverse permutation of `channel_shuffle(x, groups)`."""
  channels = x.shape[-1]
  # Checked here too: channels // groups would silently pick another permutation (or
  # divide by zero) for a groups that does not divide the channels.
  if groups < 1 or channels % groups:
    raise ValueError(f"inverse_channel_shuffle: groups={groups} must be a positive divisor "
                     f"of the channel count {channels}")
  return channel_shuffle(x, channels // groups)


def pool(x: jnp.ndarray, kind: str, padding: str) -> jnp.ndarray:
  """3x3 stride-2 max or average pool in the given padding convention.

  Average pooling follows each framework's own rule for the padded border: TensorFlow's
  SAME excludes the padding from the mean, PyTorch's AvgPool2d includes it.
  """
  window = dict(window_shape=(3, 3), strides=(2, 2), padding=spatial_padding(3, padding))
  if kind == "max":
    return nn.max_pool(x, **window)
  if padding == "symmetric":
    # Zero padding then a VALID pool: the same mean, in a form every runtime has as one
    # op (TFLite: PAD + AVERAGE_POOL_2D; a padded window is a slow generic reduce there).
    x = jnp.pad(x, ((0, 0), *window["padding"], (0, 0)))
    return nn.avg_pool(x, (3, 3), strides=(2, 2), padding="VALID")
  return nn.avg_pool(x, **window, count_include_pad=False)  # TensorFlow's SAME rule


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm -> optional activation: the unit every layer is made of."""

  features: int
  kernel_size: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  groups: int = 1
  activation: Activation | None = None
  padding: str = "same"

  @nn.compact
  def __call__(self, x):
    x = self.conv(
        self.features,
        (self.kernel_size, self.kernel_size),
        strides=(self.strides, self.strides),
        padding=spatial_padding(self.kernel_size, self.padding),
        feature_group_count=self.groups,
        use_bias=False,
        name="conv",
    )(x)
    x = self.norm(name="bn")(x)
    return x if self.activation is None else self.activation(x)


class DepthwiseSeparable(nn.Module):
  """MobileNet's block: depthwise 3x3 -> BN -> act -> pointwise 1x1 -> BN -> act."""

  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  activation: Activation
  padding: str = "same"

  @nn.compact
  def __call__(self, x):
    layer = functools.partial(ConvBN, conv=self.conv, norm=self.norm,
                              activation=self.activation, padding=self.padding)
    x = layer(x.shape[-1], 3, strides=self.strides, groups=x.shape[-1], name="depthwise")(x)
    return layer(self.features, 1, name="pointwise")(x)


class GroupBlocksConv(nn.Module):
  """A 1x1 conv with `len(blocks)` groups, on its input split into one block per group.

  Group k's output channels depend on block k alone, so each is one matrix product and
  the result is again one block per group, with no slicing or concatenation of the
  activations around the products. The variable is the `kernel` (1, 1, in // groups,
  out) an `nn.Conv` with `feature_group_count=groups` declares at the same path, with the
  same initializer: the two are interchangeable, parameters, checkpoints and all.
  """

  features: int
  kernel_init: Callable
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, blocks: tuple[jnp.ndarray, ...]) -> tuple[jnp.ndarray, ...]:
    groups, in_per_group = len(blocks), blocks[0].shape[-1]
    if any(block.shape[-1] != in_per_group for block in blocks) or self.features % groups:
      raise ValueError(f"GroupBlocksConv: {groups} groups need input blocks of one width "
                       f"(got {[block.shape[-1] for block in blocks]}) and features="
                       f"{self.features} divisible by {groups}")
    kernel = self.param("kernel", self.kernel_init, (1, 1, in_per_group, self.features),
                        self.param_dtype)
    weights = kernel.reshape(in_per_group, groups, self.features // groups).astype(self.dtype)
    return tuple(lowering.pointwise_conv(block.astype(self.dtype), weights[:, k], 1)
                 for k, block in enumerate(blocks))


class GroupBlocksConvBN(nn.Module):
  """`ConvBN` of a 1x1 group conv on blocks (see `GroupBlocksConv`), with its variables."""

  features: int
  block_conv: ModuleDef
  norm: ModuleDef
  activation: Activation | None = None

  @nn.compact
  def __call__(self, blocks: tuple[jnp.ndarray, ...]) -> tuple[jnp.ndarray, ...]:
    blocks = self.norm(name="bn")(self.block_conv(self.features, name="conv")(blocks))
    return blocks if self.activation is None else tuple(map(self.activation, blocks))


def joined(x: jnp.ndarray | tuple[jnp.ndarray, ...]) -> jnp.ndarray:
  """x, or the channel blocks x joined into one array."""
  return jnp.concatenate(x, axis=-1) if isinstance(x, tuple) else x


def _split(x: jnp.ndarray | tuple[jnp.ndarray, ...], groups: int) -> tuple[jnp.ndarray, ...]:
  if isinstance(x, tuple) and len(x) == groups:
    return x
  return tuple(jnp.split(joined(x), groups, axis=-1))


# Where the stride-2 unit puts its pooled shortcut in the concat. The paper leaves it
# open; pytorchcv puts the main branch first, the authors' release the shortcut first.
CONCAT_ORDERS = ("main_first", "shortcut_first")
# The unit's channel shuffle: "paper" is `channel_shuffle`; "inverse" is
# `inverse_channel_shuffle`, the permutation of the authors' release.
SHUFFLE_ORDERS = ("paper", "inverse")


class ShuffleUnit(nn.Module):
  """ShuffleNet v1 unit (paper Fig. 2 b and c).

  Main branch: GConv1x1 -> BN -> ReLU -> shuffle -> DW3x3 (stride) -> BN -> GConv1x1 -> BN,
  with no ReLU after the depthwise conv and a bottleneck of out_channels / 4. Stride 1 adds
  the identity; stride 2 concatenates a 3x3 stride-2 average pool of the input, so its main
  branch produces out_channels - in_channels. ReLU after the merge.

  With a `block_conv` (a `GroupBlocksConv` partial) the unit computes the same with the
  same variables, carrying its input and output as a tuple of `groups` channel blocks:
  the expand conv's group k and the next unit's compress group k cover the same channels,
  so each group's products, BN and residual addition run on its own block, and channels
  are only joined by the shuffle and at stride-2 units. The output blocks are then
  computed once for all their readers (`lowering.materialized`): XLA:CPU would recompute
  each unit's residual sums inside the next units' own. The input may be an array or
  such a tuple either way; the output is a tuple exactly when `block_conv` is set.
  """

  out_channels: int
  strides: int
  groups: int
  conv: ModuleDef
  norm: ModuleDef
  compress_groups: int | None = None  # None: `groups`; 1 for the first unit of Stage 2
  shuffle: bool = True
  padding: str = "same"
  concat_order: str = "main_first"
  shuffle_order: str = "paper"
  block_conv: ModuleDef | None = None

  @nn.compact
  def __call__(self, x):
    in_channels = sum(block.shape[-1] for block in x) if isinstance(x, tuple) else x.shape[-1]
    bottleneck = self.out_channels // 4
    if self.strides == 1:
      if in_channels != self.out_channels:
        raise ValueError(f"a stride-1 ShuffleUnit needs in_channels == out_channels, got "
                         f"{in_channels} and {self.out_channels}")
      branch_channels = self.out_channels
    else:
      branch_channels = self.out_channels - in_channels
    layer = functools.partial(ConvBN, conv=self.conv, norm=self.norm, padding=self.padding)
    block_layer = functools.partial(GroupBlocksConvBN, block_conv=self.block_conv,
                                    norm=self.norm)
    compress_groups = self.groups if self.compress_groups is None else self.compress_groups
    blocks = self.block_conv is not None

    if blocks and compress_groups > 1:
      y = block_layer(bottleneck, activation=nn.relu, name="compress")(
          _split(x, compress_groups))
    else:
      y = layer(bottleneck, 1, groups=compress_groups, activation=nn.relu,
                name="compress")(joined(x))
    if self.shuffle and self.groups > 1:
      if isinstance(y, tuple) and self.shuffle_order == "paper":
        # channel_shuffle of the joined blocks, as one interleaving copy.
        y = jnp.stack(y, axis=-1).reshape(*y[0].shape[:-1], bottleneck)
      else:
        shuffle = channel_shuffle if self.shuffle_order == "paper" else inverse_channel_shuffle
        y = shuffle(joined(y), self.groups)
    y = layer(bottleneck, 3, strides=self.strides, groups=bottleneck,
              name="depthwise")(joined(y))
    if blocks:
      y = block_layer(branch_channels, name="expand")(_split(y, self.groups))
    else:
      y = layer(branch_channels, 1, groups=self.groups, name="expand")(y)

    if self.strides == 1:
      if blocks:
        return tuple(lowering.materialized(nn.relu(a + b))
                     for a, b in zip(_split(x, self.groups), y))
      return nn.relu(joined(x) + y)
    shortcut = pool(joined(x), "avg", self.padding)
    parts = (joined(y), shortcut)
    if self.concat_order == "shortcut_first":
      parts = parts[::-1]
    out = nn.relu(jnp.concatenate(parts, axis=-1))
    return _split(lowering.materialized(out), self.groups) if blocks else out


def check_images(x: jnp.ndarray, input_channels: int, min_size: int) -> None:
  """Clear errors for inputs a model cannot take (shapes are static under jit)."""
  if x.ndim != 4:
    raise ValueError(f"images must be 4-D NHWC (batch, height, width, channels); got "
                     f"shape {tuple(x.shape)}")
  if x.shape[-1] != input_channels:
    raise ValueError(f"images must have input_channels={input_channels} channels (NHWC); "
                     f"got shape {tuple(x.shape)}")
  if min(x.shape[1:3]) < min_size:
    raise ValueError(f"resolution {x.shape[1]}x{x.shape[2]} is too small: the output "
                     f"stride is 32, so height and width must be at least {min_size}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"images must be floating point; got dtype {x.dtype}")
