"""What both models share: their conv and norm partials, their head and their checks."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mobileshuffle_jax import layers


# He initialization of every conv kernel, in flax's (kh, kw, in // groups, out) layout.
CONV_KERNEL_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def check_positive(name: str, value: float) -> None:
  if not value > 0:
    raise ValueError(f"{name}={value!r} must be > 0")


def conv_and_norm(conv: layers.ModuleDef, norm: layers.ModuleDef, *, train: bool, dtype: Any,
                  bn_momentum: float, bn_epsilon: float, bn_group_size: int | None = None):
  """The `conv` and `norm` factories with a model's settings bound, once per model.

  Parameters and BN statistics stay float32 whatever the compute `dtype`.
  `bn_group_size` (None: the whole batch) is where training statistics come from (see
  `layers.BatchNorm`).
  """
  conv = functools.partial(conv, dtype=dtype, param_dtype=jnp.float32,
                           kernel_init=CONV_KERNEL_INIT)
  norm = functools.partial(norm, use_running_average=not train, momentum=bn_momentum,
                           epsilon=bn_epsilon, group_size=bn_group_size, dtype=dtype,
                           param_dtype=jnp.float32)
  return conv, norm


def classify(x, *, num_classes: int, dropout_rate: float, train: bool, use_bias: bool = True):
  """Global average pool -> dropout -> fully connected logits, in float32.

  Called inside a model's compact `__call__`, so `classifier` is a direct child of the model.
  """
  x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
  if dropout_rate > 0.0:
    x = nn.Dropout(dropout_rate, deterministic=not train)(x)
  return nn.Dense(num_classes, use_bias=use_bias, dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(0.01), name="classifier")(x)


def check_common(*, num_classes: int, dropout_rate: float, bn_momentum: float,
                 bn_epsilon: float, padding: str, input_channels: int) -> None:
  if not (isinstance(num_classes, int) and num_classes >= 1):
    raise ValueError(f"num_classes={num_classes!r} must be a positive integer")
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate={dropout_rate!r} must be in [0, 1)")
  if not 0.0 <= bn_momentum < 1.0:
    raise ValueError(f"bn_momentum={bn_momentum!r} must be in [0, 1)")
  check_positive("bn_epsilon", bn_epsilon)
  layers.check_choice("padding", padding, layers.PADDING_CONVENTIONS)
  if not (isinstance(input_channels, int) and input_channels >= 1):
    raise ValueError(f"input_channels={input_channels!r} must be a positive integer")
