"""Optimizer, learning-rate schedule and weight-decay mask from a config (all optax).

The learning rate scales linearly with the global batch: `learning_rate` is the rate at
`base_batch_size`. Weight decay is L2 added to the gradients (the papers' TensorFlow
convention), masked off depthwise filters and BN / bias parameters as configured.
"""

from __future__ import annotations

import flax.traverse_util
import jax
import optax


def peak_learning_rate(config) -> float:
  return config.learning_rate * config.global_batch_size / config.base_batch_size


def learning_rate_schedule(config, steps_per_epoch: float, total_steps: int) -> optax.Schedule:
  peak = peak_learning_rate(config)
  warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
  decay_steps = max(total_steps - warmup_steps, 1)
  if config.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps)
  elif config.schedule == "linear":
    decay = optax.linear_schedule(peak, 0.0, decay_steps)
  elif config.schedule == "exponential":
    decay = optax.exponential_decay(
        peak, transition_steps=max(int(round(config.decay_epochs * steps_per_epoch)), 1),
        decay_rate=config.decay_rate, staircase=True)
  elif config.schedule == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f"config.schedule={config.schedule!r} is not supported; allowed "
                     "values: 'cosine', 'linear', 'exponential', 'constant'")
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def weight_decay_mask(params, config):
  """True where L2 weight decay applies.

  Conv and dense kernels are decayed; depthwise kernels only with
  `weight_decay_depthwise`; BN scale/bias and biases only with
  `weight_decay_norm_and_bias`.
  """
  def decayed(path, leaf):
    if path[-1] != "kernel":
      return config.weight_decay_norm_and_bias
    # A depthwise kernel is (kh, kw, 1, C) with C > 1 (flax layout, feature_group_count=C).
    is_depthwise = leaf.ndim == 4 and leaf.shape[2] == 1 and leaf.shape[3] > 1 and (
        "depthwise" in path)
    return config.weight_decay_depthwise or not is_depthwise

  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict({k: decayed(k, v) for k, v in flat.items()})


def create_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.weight_decay > 0:
    parts.append(optax.add_decayed_weights(
        config.weight_decay, mask=lambda params: weight_decay_mask(params, config)))
  if config.optimizer == "sgd":
    parts.append(optax.sgd(schedule, momentum=config.momentum or None,
                           nesterov=config.nesterov))
  elif config.optimizer == "rmsprop":
    # TensorFlow's RMSProp: epsilon inside the square root, momentum on the update.
    parts.append(optax.rmsprop(schedule, decay=config.rmsprop_decay,
                               eps=config.rmsprop_epsilon, eps_in_sqrt=True,
                               momentum=config.momentum or None, initial_scale=1.0))
  elif config.optimizer == "adamw":
    parts.append(optax.adamw(schedule, weight_decay=0.0))
  else:
    raise ValueError(f"config.optimizer={config.optimizer!r} is not supported; allowed "
                     "values: 'sgd', 'rmsprop', 'adamw'")
  return optax.chain(*parts)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """TensorFlow's ExponentialMovingAverage(num_updates=step) warm-up: min(d, (1+n)/(10+n))."""
  return jax.numpy.minimum(decay, (1.0 + step) / (10.0 + step))
