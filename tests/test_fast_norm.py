"""`fast.BatchNorm` and the paper's `layers.BatchNorm`: over the whole batch both equal
flax's; over groups, each group's own statistics. On channel blocks, `fast.BatchNorm` gives
the joined array's; its training gradients are autodiff's of the formulas."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobileshuffle_jax import layers
from mobileshuffle_jax.fast import norm

BATCH_NORMS = pytest.mark.parametrize("batch_norm", [layers.BatchNorm, norm.BatchNorm],
                                      ids=["paper", "fast"])


def run(module, variables, x, train):
  """(outputs, updated batch_stats or None)."""
  if train:
    y, updates = module.apply(variables, x, mutable=["batch_stats"])
    return y, updates["batch_stats"]
  return module.apply(variables, x), None


@BATCH_NORMS
@pytest.mark.parametrize("train", [True, False])
def test_whole_batch_matches_flax_batchnorm(train, batch_norm):
  x = np.random.default_rng(0).normal(2.0, 3.0, (8, 5, 5, 6)).astype(np.float32)
  ours = batch_norm(use_running_average=not train, momentum=0.9, epsilon=1e-3)
  theirs = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3)
  variables = theirs.init(jax.random.key(0), x)
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda v: v + rng.uniform(0.1, 1.0, v.shape).astype(np.float32),
                           variables)
  assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(variables)
  y_ours, stats_ours = run(ours, variables, x, train)
  y_theirs, stats_theirs = run(theirs, variables, x, train)
  np.testing.assert_allclose(np.asarray(y_ours), np.asarray(y_theirs), rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               stats_ours, stats_theirs)


@BATCH_NORMS
def test_groups_use_their_own_statistics(batch_norm):
  x = np.random.default_rng(0).normal(0.0, 1.0, (6, 4, 4, 3))
  x[3:] = x[3:] * 5.0 + 7.0  # the two groups of 3 differ strongly
  module = batch_norm(use_running_average=False, momentum=0.5, epsilon=1e-3, group_size=3)
  variables = module.init(jax.random.key(0), x.astype(np.float32))
  y, updates = run(module, variables, x.astype(np.float32), True)
  groups = x.reshape(2, 3, 4, 4, 3)
  mean = groups.mean(axis=(1, 2, 3), keepdims=True)
  var = groups.var(axis=(1, 2, 3), keepdims=True)
  expected = ((groups - mean) / np.sqrt(var + 1e-3)).reshape(x.shape)
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(updates["mean"],
                             0.5 * 0.0 + 0.5 * mean.mean(axis=0).ravel(), rtol=1e-5)
  np.testing.assert_allclose(updates["var"],
                             0.5 * 1.0 + 0.5 * var.mean(axis=0).ravel(), rtol=1e-5)


@BATCH_NORMS
def test_group_size_must_divide_the_batch(batch_norm):
  module = batch_norm(use_running_average=False, group_size=4)
  with pytest.raises(ValueError, match="bn_group_size"):
    module.init(jax.random.key(0), np.zeros((6, 2, 2, 3), np.float32))


@pytest.mark.parametrize("train", [True, False])
def test_blocks_are_normalized_as_the_joined_array(train):
  """A tuple of channel blocks (any widths) gives the joined array's outputs and statistics,
  with the same variables."""
  x = np.random.default_rng(0).normal(1.0, 2.0, (6, 3, 3, 9)).astype(np.float32)
  blocks = (x[..., :2], x[..., 2:7], x[..., 7:])
  module = norm.BatchNorm(use_running_average=not train, momentum=0.8, group_size=3)
  variables = module.init(jax.random.key(0), x)
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda v: v + rng.uniform(0.1, 1.0, v.shape).astype(np.float32),
                           variables)
  assert jax.tree.structure(module.init(jax.random.key(0), blocks)) == jax.tree.structure(
      variables)
  y_joined, stats_joined = run(module, variables, x, train)
  y_blocks, stats_blocks = run(module, variables, blocks, train)
  assert [block.shape for block in y_blocks] == [block.shape for block in blocks]
  np.testing.assert_allclose(np.concatenate(y_blocks, axis=-1), y_joined, rtol=1e-6,
                             atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), stats_blocks,
               stats_joined)


def textbook_normalization(grouped, scale, bias, epsilon):
  """`normalize_with_batch_statistics` as formulas for autodiff."""
  mean = jnp.mean(grouped, axis=(1, 2, 3), keepdims=True)
  var = jnp.mean(jnp.square(grouped - mean), axis=(1, 2, 3), keepdims=True)
  return (grouped - mean) / jnp.sqrt(var + epsilon) * scale + bias, mean, var


def test_training_gradients_are_those_of_the_formulas():
  """The hand-written backward pass equals autodiff of the textbook formulas in float64,
  for every input and through all three outputs (the statistics feed the running
  averages), with two groups of examples whose statistics differ."""
  rng = np.random.default_rng(0)
  grouped = rng.normal(0.0, 1.0, (2, 3, 4, 10, 6))  # two runs of 5 columns per row
  grouped[1] = grouped[1] * 3.0 + 2.0
  scale, bias = rng.uniform(0.5, 2.0, 6), rng.normal(0.0, 1.0, 6)
  with jax.enable_x64(True):
    outputs = textbook_normalization(grouped, scale, bias, 1e-3)
    weights = [rng.normal(0.0, 1.0, output.shape) for output in outputs]

    def loss(function):
      return lambda *args: sum(jnp.sum(output * weight)
                               for output, weight in zip(function(*args, 1e-3), weights))

    ours = jax.grad(loss(norm.normalize_with_batch_statistics), (0, 1, 2))(
        grouped, scale, bias)
    expected = jax.grad(loss(textbook_normalization), (0, 1, 2))(grouped, scale, bias)
    for output, reference in zip(norm.normalize_with_batch_statistics(
        grouped, scale, bias, 1e-3), outputs):
      np.testing.assert_allclose(output, reference, rtol=1e-12, atol=1e-12)
  for name, grad, reference in zip(("x", "scale", "bias"), ours, expected):
    np.testing.assert_allclose(grad, reference, rtol=1e-10, atol=1e-12, err_msg=name)


def test_bfloat16_activations_get_float32_statistics_and_bfloat16_gradients():
  x = np.random.default_rng(0).normal(100.0, 1.0, (1, 4, 8, 8, 3))
  grouped = jnp.asarray(x, jnp.bfloat16)
  scale, bias = jnp.ones(3), jnp.zeros(3)
  y, mean, var = norm.normalize_with_batch_statistics(grouped, scale, bias, 1e-3)
  assert y.dtype == mean.dtype == var.dtype == jnp.float32
  # A bfloat16 sum of 256 values near 100 would be off by whole units.
  np.testing.assert_allclose(mean.ravel(), np.asarray(grouped, np.float64).mean((0, 1, 2, 3)),
                             rtol=1e-6)
  grad = jax.grad(lambda g: jnp.sum(
      norm.normalize_with_batch_statistics(g, scale, bias, 1e-3)[0] ** 2))(grouped)
  assert grad.dtype == jnp.bfloat16


def test_float32_gradients_hold_away_from_zero_mean():
  """The backward pass sums dy * x and subtracts mean * sum(dy): in float32, with activations
  at mean 10 and standard deviation 1, it stays within 1e-4 of float64."""
  rng = np.random.default_rng(0)
  grouped = rng.normal(10.0, 1.0, (1, 32, 16, 16, 8))
  grad_y = rng.normal(0.0, 1.0, grouped.shape)
  scale, bias = rng.uniform(0.5, 2.0, 8), rng.normal(0.0, 1.0, 8)

  def grads(*args):
    outputs, vjp = jax.vjp(
        lambda g, s, b: norm.normalize_with_batch_statistics(g, s, b, 1e-3)[0], *args[:3])
    return vjp(args[3].astype(outputs.dtype))

  ours = grads(*(np.asarray(a, np.float32) for a in (grouped, scale, bias, grad_y)))
  with jax.enable_x64(True):
    expected = jax.device_get(grads(grouped, scale, bias, grad_y))
  for name, grad, reference in zip(("x", "scale", "bias"), ours, expected):
    np.testing.assert_allclose(grad, reference, rtol=0,
                               atol=1e-4 * np.max(np.abs(reference)), err_msg=name)
