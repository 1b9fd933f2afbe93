"""`layers.pool` (3x3 stride-2 max and average pools) as shifted maxima and sums.

The same results and gradients as `layers.pool`, which is flax's `max_pool` / `avg_pool`,
i.e. `lax.reduce_window`. XLA:CPU expands the max pool's gradient (`select_and_scatter`)
into a reduce-window that also carries four int32 index arrays of the padded input's size,
then a scatter: in ShuffleNet's training step, the stem's max pool alone wrote four
39 MB index arrays per step, over a tenth of the step. Here the forward pass is one
elementwise maximum (or sum) of the nine strided windows of the padded input, and the
backward pass is written out (`jax.custom_vjp`) as the windows' transpose
(`conv.window_transpose`, the depthwise conv's input gradient): shifted sums of the
output gradient. The max pool routes each output's gradient to the first maximum of its
window in row-major order, as `select_and_scatter` with `ge` does, kept between the passes
as one int8 tap index per output.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mobileshuffle_jax import layers
from mobileshuffle_jax.fast.conv import (Pads, explicit_padding, materialized, output_size,
                                         pad_for_transpose, strided_window, window_transpose)

_WINDOW, _STRIDE = (3, 3), 2


def pool(x: jnp.ndarray, kind: str, padding: str) -> jnp.ndarray:
  """`layers.pool(x, kind, padding)`: the same values and gradients, computed faster."""
  layers.check_choice("kind", kind, ("max", "avg"))
  pads = explicit_padding(layers.spatial_padding(_WINDOW[0], padding), x.shape[1:3], _WINDOW,
                          (_STRIDE, _STRIDE))
  in_size = tuple(x.shape[1:3])
  if kind == "max":
    return max_pool(x, pads, in_size)
  # TensorFlow's SAME rule leaves the padding out of each mean; zero padding then a VALID
  # pool ('symmetric') counts it in.
  return avg_pool(x, pads, in_size, padding == "same")


def _taps():
  return [(i, j) for i in range(_WINDOW[0]) for j in range(_WINDOW[1])]


def _out_size(x, pads) -> tuple[int, int]:
  return (output_size(x.shape[1], pads[0], _WINDOW[0], _STRIDE),
          output_size(x.shape[2], pads[1], _WINDOW[1], _STRIDE))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x, pads: Pads, in_size: tuple[int, int]):
  """A 3x3 stride-2 max pool of NHWC `x` (height and width `in_size`), padded by `pads`
  with -inf."""
  return _max_pool_fwd(x, pads, in_size)[0]


def _max_pool_fwd(x, pads, in_size):
  del in_size  # x's own
  padded = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  windows = [strided_window(padded, i, j, _STRIDE, *_out_size(x, pads)) for i, j in _taps()]
  out = materialized(functools.reduce(jnp.maximum, windows))
  # The first tap whose window holds the maximum: scanned from the last tap back, so the
  # earliest match is written last.
  first = jnp.full(out.shape, len(windows), jnp.int8)
  for tap in reversed(range(len(windows))):
    first = jnp.where(windows[tap] == out, jnp.int8(tap), first)
  return out, first


def _max_pool_bwd(pads, in_size, first, grad):
  width = _WINDOW[1]
  zero = jnp.zeros((), grad.dtype)
  sources = tuple(pad_for_transpose(source, _WINDOW, _STRIDE, pads, in_size)
                  for source in (grad, first))
  return (window_transpose(lambda i, j, g, tap: jnp.where(tap == i * width + j, g, zero),
                           sources, _WINDOW, _STRIDE, pads, in_size),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def avg_pool(x, pads: Pads, in_size: tuple[int, int], exclude_padding: bool):
  """A 3x3 stride-2 average pool of NHWC `x` (height and width `in_size`) with zero
  padding `pads`; each mean over the window's unpadded pixels if `exclude_padding`, else
  over all nine."""
  return _avg_pool_fwd(x, pads, in_size, exclude_padding)[0]


def _window_counts(in_size, pads, exclude_padding: bool, out_size) -> np.ndarray:
  """How many values each output's mean is over, shaped (1, out_h, out_w, 1)."""
  if not exclude_padding:
    return np.full((1, *out_size, 1), _WINDOW[0] * _WINDOW[1], np.float32)
  ones = np.pad(np.ones(in_size, np.float32), pads)
  counts = sum(ones[i:i + _STRIDE * (out_size[0] - 1) + 1:_STRIDE,
                    j:j + _STRIDE * (out_size[1] - 1) + 1:_STRIDE] for i, j in _taps())
  return counts.reshape(1, *out_size, 1)


def _avg_pool_fwd(x, pads, in_size, exclude_padding):
  out_size = _out_size(x, pads)
  padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  total = functools.reduce(jnp.add, [strided_window(padded, i, j, _STRIDE, *out_size)
                                     for i, j in _taps()])
  counts = _window_counts(in_size, pads, exclude_padding, out_size)
  return total / counts.astype(x.dtype), None


def _avg_pool_bwd(pads, in_size, exclude_padding, residuals, grad):
  del residuals  # the gradient depends on the shapes alone
  out_size = grad.shape[1:3]
  counts = _window_counts(in_size, pads, exclude_padding, out_size)
  source = pad_for_transpose(grad / counts.astype(grad.dtype), _WINDOW, _STRIDE, pads, in_size)
  return (window_transpose(lambda i, j, g: g, (source,), _WINDOW, _STRIDE, pads, in_size),)


avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)
