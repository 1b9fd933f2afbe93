"""`fast.pool` equals `layers.pool`, and its max-pool gradient follows the first maximum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobileshuffle_jax import fast, layers
from tests.test_layers import reference_pads


def reference_max_pool_grad(x, grad, convention):
  """float64 numpy: each output's gradient goes to the first maximum of its 3x3 stride-2
  window in row-major order (what `select_and_scatter` with `ge` picks on ties)."""
  (top, bottom), (left, right) = (reference_pads(x.shape[1], 3, 2, convention),
                                  reference_pads(x.shape[2], 3, 2, convention))
  padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)),
                  constant_values=-np.inf)
  padded_grad = np.zeros_like(padded)
  batch, out_h, out_w, channels = grad.shape
  for n in range(batch):
    for o in range(out_h):
      for q in range(out_w):
        for c in range(channels):
          window = padded[n, 2 * o:2 * o + 3, 2 * q:2 * q + 3, c]
          i, j = np.unravel_index(np.argmax(window), window.shape)  # first maximum
          padded_grad[n, 2 * o + i, 2 * q + j, c] += grad[n, o, q, c]
  return padded_grad[:, top:top + x.shape[1], left:left + x.shape[2]]


def _ties(shape, seed):
  """Values on a coarse grid, half of them ReLU's zeros: windows with tied maxima."""
  x = np.random.default_rng(seed).normal(size=shape)
  return np.maximum(np.round(2 * x) / 2, 0.0)


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (112, 112)], ids=["even", "odd", "stem"])
@pytest.mark.parametrize("convention", layers.PADDING_CONVENTIONS)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_equals_layers_pool_with_gradients(kind, convention, size):
  with jax.enable_x64():
    x = jnp.asarray(_ties((2, *size, 3), seed=0) - (kind == "avg"))
    expected, expected_vjp = jax.vjp(lambda x: layers.pool(x, kind, convention), x)
    actual, actual_vjp = jax.vjp(jax.jit(lambda x: fast.pool(x, kind, convention)), x)
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)
    grad = jnp.asarray(np.random.default_rng(1).normal(size=expected.shape))
    np.testing.assert_allclose(actual_vjp(grad)[0], expected_vjp(grad)[0], rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("convention", layers.PADDING_CONVENTIONS)
def test_max_pool_gradient_goes_to_the_first_maximum(convention):
  x = _ties((2, 9, 10, 4), seed=2)
  assert (x == 0).mean() > 0.4  # windows of tied zeros are common
  with jax.enable_x64():
    out, vjp = jax.vjp(lambda x: fast.pool(x, "max", convention), jnp.asarray(x))
    grad = np.random.default_rng(3).normal(size=out.shape)
    np.testing.assert_allclose(vjp(jnp.asarray(grad))[0],
                               reference_max_pool_grad(x, grad, convention), rtol=1e-12,
                               atol=1e-12)


def test_pool_float32_under_jit_and_unknown_kind():
  x = jnp.asarray(_ties((2, 12, 12, 5), seed=4), jnp.float32)
  for kind in ("max", "avg"):
    pooled = jax.jit(lambda x: fast.pool(x, kind, "same"))(x)
    assert pooled.dtype == jnp.float32
    np.testing.assert_allclose(pooled, layers.pool(x, kind, "same"), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="kind='min'"):
    fast.pool(x, "min", "same")
