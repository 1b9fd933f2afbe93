"""BatchNorm with a choice of where training statistics come from.

`group_size=None` normalizes with statistics over the whole (global) batch, exactly as
`nn.BatchNorm`; under data parallelism XLA then all-reduces a mean and a variance per BN
layer in the forward pass (and their gradients in the backward pass): 27 layers in
MobileNet v1, 49 in ShuffleNet v1, each a latency-bound collective of a few hundred
floats. `group_size=k` normalizes each run of k consecutive examples with its own
statistics; with k = the per-device batch each group lives on one device, so the forward
pass communicates nothing and only the running averages (the mean over groups, once per
layer) are reduced. Statistics over groups are what per-replica BN under pmap computed;
they regularize slightly differently when k is small.

The variables are those of `nn.BatchNorm` ('scale', 'bias'; 'batch_stats': 'mean',
'var'), so checkpoints do not depend on the choice.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class BatchNorm(nn.Module):
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

    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      batch = x.shape[0]
      groups = 1 if self.group_size is None else batch // self.group_size
      if self.group_size is not None and (self.group_size <= 0 or batch % self.group_size):
        raise ValueError(f"bn_group_size={self.group_size} must divide the batch of {batch}")
      # Statistics in float32 whatever the compute dtype; (groups, k, ...) keeps each
      # group's reduction on the device that holds it.
      grouped = x.astype(jnp.float32).reshape(groups, batch // groups, *x.shape[1:])
      axes = tuple(range(1, grouped.ndim - 1))
      group_mean = jnp.mean(grouped, axis=axes, keepdims=True)
      group_var = jnp.maximum(
          jnp.mean(jnp.square(grouped), axis=axes, keepdims=True) - jnp.square(group_mean),
          0.0)
      if not self.is_initializing():
        running_mean.value = (self.momentum * running_mean.value + (1 - self.momentum)
                              * jnp.mean(group_mean, axis=tuple(range(grouped.ndim - 1))))
        running_var.value = (self.momentum * running_var.value + (1 - self.momentum)
                             * jnp.mean(group_var, axis=tuple(range(grouped.ndim - 1))))
      normalized = (grouped - group_mean) * jnp.reciprocal(jnp.sqrt(group_var + self.epsilon))
      y = normalized.reshape(x.shape) * scale + bias
      return y.astype(self.dtype)

    inverse_std = jnp.reciprocal(jnp.sqrt(var + self.epsilon))
    y = (x.astype(jnp.float32) - mean) * (inverse_std * scale) + bias
    return y.astype(self.dtype)
