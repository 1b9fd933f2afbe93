"""BatchNorm over the whole batch equals flax's; over groups, each group's own statistics."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from mobileshuffle_jax.models import norm


def run(module, variables, x, train):
  """(outputs, updated batch_stats or None)."""
  if train:
    y, updates = module.apply(variables, x, mutable=["batch_stats"])
    return y, updates["batch_stats"]
  return module.apply(variables, x), None


@pytest.mark.parametrize("train", [True, False])
def test_whole_batch_matches_flax_batchnorm(train):
  x = np.random.default_rng(0).normal(2.0, 3.0, (8, 5, 5, 6)).astype(np.float32)
  ours = norm.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3)
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


def test_groups_use_their_own_statistics():
  x = np.random.default_rng(0).normal(0.0, 1.0, (6, 4, 4, 3))
  x[3:] = x[3:] * 5.0 + 7.0  # the two groups of 3 differ strongly
  module = norm.BatchNorm(use_running_average=False, momentum=0.5, epsilon=1e-3, group_size=3)
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


def test_group_size_must_divide_the_batch():
  module = norm.BatchNorm(use_running_average=False, group_size=4)
  with pytest.raises(ValueError, match="bn_group_size"):
    module.init(jax.random.key(0), np.zeros((6, 2, 2, 3), np.float32))
