"""The layers of MobileNet v1 and ShuffleNet v1, as the papers draw them (Flax Linen).

Every convolution is an `nn.Conv`: depthwise is `feature_group_count == channels`, a
pointwise group convolution is a 1x1 conv with `feature_group_count == groups`, so the
parameter layout is flax's `(kh, kw, in // groups, out)`. The channel shuffle is a
reshape and a transpose. Layers take their `conv` and `norm` as factories: the models
inject these, or others that compute the same with the same variables.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

# A factory of Linen modules: a module class, or a function or partial that returns one.
ModuleDef = Any
Activation = Callable[[jnp.ndarray], jnp.ndarray]
# `pool(x, kind, padding)` below, or another function with the same results.
Pool = Callable[[jnp.ndarray, str, str], jnp.ndarray]
# How a model runs its inference on a batch: `batching(module, network, images)`, where
# `network(module, images)` is the model's inference on any batch; `whole_batch` below,
# or another way with the same results.
Batching = Callable[[nn.Module, Callable[..., Any], jnp.ndarray], Any]

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


def inference_logits(module: nn.Module, images: jnp.ndarray):
  """A model's `network` at inference: the `network` a model hands its `batching`."""
  return module.network(images, train=False)


def whole_batch(module: nn.Module, network: Callable[..., Any], images: jnp.ndarray):
  """The paper's batching: the whole batch through the network at once."""
  return network(module, images)


def group_examples(x: jnp.ndarray, group_size: int | None) -> jnp.ndarray:
  """NHWC x as (groups, group_size, H, W, C): each group of examples has its own BatchNorm
  statistics; one group of the whole batch for group_size None."""
  batch = x.shape[0]
  if group_size is not None and (group_size <= 0 or batch % group_size):
    raise ValueError(f"bn_group_size={group_size} must divide the batch of {batch}")
  groups = 1 if group_size is None else batch // group_size
  # (groups, k, ...) keeps each group's reduction on the device that holds it.
  return x.reshape(groups, batch // groups, *x.shape[1:])


class BatchNorm(nn.Module):
  """Batch normalization (Ioffe and Szegedy 2015) over the last axis.

  In training, each run of `group_size` consecutive examples is normalized with its own
  mean and (biased) variance; None takes the whole batch, exactly as `nn.BatchNorm`, and
  with group_size = the per-device batch no statistics cross devices. The running
  averages take the mean over groups. The variables are `nn.BatchNorm`'s ('scale',
  'bias'; 'batch_stats': 'mean', 'var'), kept in float32 whatever `dtype`; statistics
  are computed in float32 or wider.
  """

  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-3
  group_size: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
    statistics_dtype = jnp.promote_types(x.dtype, jnp.float32)
    if self.use_running_average:
      multiplier = lax.rsqrt(running_var.value + self.epsilon) * scale
      y = (x.astype(statistics_dtype) - running_mean.value) * multiplier + bias
      return y.astype(self.dtype)
    grouped = group_examples(x, self.group_size).astype(statistics_dtype)
    axes = (1, 2, 3)  # each group's examples and pixels
    mean = jnp.mean(grouped, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)
    y = (grouped - mean) * lax.rsqrt(var + self.epsilon) * scale + bias
    if not self.is_initializing():
      running_mean.value = (self.momentum * running_mean.value
                            + (1 - self.momentum) * jnp.mean(mean, axis=(0, 1, 2, 3)))
      running_var.value = (self.momentum * running_var.value
                           + (1 - self.momentum) * jnp.mean(var, axis=(0, 1, 2, 3)))
    return y.reshape(x.shape).astype(self.dtype)


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


# Where the stride-2 unit puts its pooled shortcut in the concat. The paper leaves it
# open; pytorchcv puts the main branch first, the authors' release the shortcut first.
CONCAT_ORDERS = ("main_first", "shortcut_first")
# The unit's channel shuffle: "paper" is `channel_shuffle`; "inverse" is
# `inverse_channel_shuffle`, the permutation of the authors' release.
SHUFFLES = {"paper": channel_shuffle, "inverse": inverse_channel_shuffle}
SHUFFLE_ORDERS = tuple(SHUFFLES)


def shuffle_unit_widths(in_channels: int, out_channels: int, strides: int) -> tuple[int, int]:
  """(bottleneck, main branch output) channels of a ShuffleNet unit.

  The bottleneck is a quarter of the output; a stride-2 unit's main branch makes
  out_channels - in_channels, which the concatenated shortcut completes.
  """
  if strides == 1 and in_channels != out_channels:
    raise ValueError(f"a stride-1 ShuffleUnit needs in_channels == out_channels, got "
                     f"{in_channels} and {out_channels}")
  return out_channels // 4, out_channels - (in_channels if strides == 2 else 0)


class ShuffleUnit(nn.Module):
  """ShuffleNet v1 unit (paper Fig. 2 b and c).

  Main branch: GConv1x1 -> BN -> ReLU -> shuffle -> DW3x3 (stride) -> BN -> GConv1x1 -> BN,
  with no ReLU after the depthwise conv. Stride 1 adds the identity; stride 2 concatenates
  a 3x3 stride-2 average pool of the input. ReLU after the merge.
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
  pool: Pool = pool

  @nn.compact
  def __call__(self, x):
    bottleneck, branch_channels = shuffle_unit_widths(x.shape[-1], self.out_channels,
                                                      self.strides)
    compress_groups = self.groups if self.compress_groups is None else self.compress_groups
    layer = functools.partial(ConvBN, conv=self.conv, norm=self.norm, padding=self.padding)
    y = layer(bottleneck, 1, groups=compress_groups, activation=nn.relu, name="compress")(x)
    if self.shuffle:
      y = SHUFFLES[self.shuffle_order](y, self.groups)
    y = layer(bottleneck, 3, strides=self.strides, groups=bottleneck, name="depthwise")(y)
    y = layer(branch_channels, 1, groups=self.groups, name="expand")(y)
    if self.strides == 1:
      return nn.relu(x + y)
    return nn.relu(concatenate_with_shortcut(y, self.pool(x, "avg", self.padding),
                                             self.concat_order))


def concatenate_with_shortcut(main, shortcut, concat_order: str):
  """A stride-2 unit's merge: the main branch and the pooled input, in `concat_order`."""
  parts = (main, shortcut) if concat_order == "main_first" else (shortcut, main)
  return jnp.concatenate(parts, axis=-1)


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
