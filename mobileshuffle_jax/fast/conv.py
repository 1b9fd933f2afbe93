"""Faster lowerings of the convolutions MobileNet v1 and ShuffleNet v1 are made of.

`Conv` is flax's `nn.Conv` with `fast_conv` as its `conv_general_dilated`: the same
variables, computed with primitives XLA:CPU runs well, everything else passed on to
`lax.conv_general_dilated` unchanged:

- depthwise (feature_group_count == in == out channels, any kernel size and padding):
  one multiply-add of a strided window of the padded input per kernel tap. XLA:CPU
  expands `feature_group_count` convolutions into slow loops, forward and backward
  (jax #23713); its autodiff of the windows is no better, so the backward is written out
  (`jax.custom_vjp`): the input gradient as the same kind of shifted multiply-adds over
  the output gradient, one stride-1 sum per stride parity plane, and the kernel gradient
  as one reduction with an output per tap (`column_run_sums`).
- 1x1, dense or grouped, stride 1: one matrix product per group over the channel axis,
  with a backward that never transposes activations inside another fusion. A grouped 1x1
  `Conv` also takes its input as a tuple of one channel block per group and returns one
  block per group (`fast.ShuffleUnit` keeps activations so).
- dense convs with few inputs per output (kh * kw * in <= 27: the RGB stems): one
  multiply-add of a window of one input channel, broadcast over the output channels, per
  kernel entry. XLA:CPU's own convolution of 3 input channels, with the BN and ReLU it
  fuses after it, runs at a few GFLOP/s: a third of ShuffleNet's inference time.

Each conv's output (and the depthwise input gradient) is computed once into a buffer that
all its readers share (`materialized`): left to itself XLA:CPU recomputes these
multiply-adds inside every consumer.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# flax's `nn.Conv` calls the lowering with NHWC input, HWIO kernel and NHWC output.
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))

Pads = tuple[tuple[int, int], tuple[int, int]]


def _is_nhwc(lhs, rhs, dimension_numbers) -> bool:
  if lhs.ndim != 4 or rhs.ndim != 4:
    return False
  return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC


def explicit_padding(padding, spatial: Sequence[int], window: Sequence[int],
                     strides: Sequence[int]) -> Pads:
  """`padding` ('SAME', 'VALID', ... or (low, high) pairs) as one pair per spatial axis."""
  if isinstance(padding, str):
    return tuple(tuple(p) for p in lax.padtype_to_pads(spatial, window, strides, padding))
  return tuple((int(low), int(high)) for low, high in padding)


def output_size(size: int, pads: tuple[int, int], window: int, stride: int) -> int:
  return (size + pads[0] + pads[1] - window) // stride + 1


def _accumulation_dtype(dtype):
  """Products are summed in float32 or wider, as XLA's convolution does for bfloat16."""
  return jnp.promote_types(dtype, jnp.float32)


def materialized(x):
  """x, which XLA:CPU will compute once, into a buffer, whatever reads it.

  XLA:CPU copies a fusion of cheap ops (the multiply-adds of these convs) into each of its
  consumers, so the BN statistics, the normalization, the group slices of the next grouped
  conv and the backward pass that read a conv's output would each redo all of its taps. A
  float division is expensive to XLA, which never duplicates one. Dividing by 1 changes no
  value (the divisor is 0 only where x is NaN, which stays NaN); subnormals flush to zero,
  as in every arithmetic op of XLA:CPU.
  """
  return x / (x == x).astype(x.dtype)


def strided_window(source, top: int, left: int, stride: int, out_height: int, out_width: int):
  """source[:, top + stride * o, left + stride * q] for every output position (o, q)."""
  batch, _, _, channels = source.shape
  return lax.slice(source, (0, top, left, 0),
                   (batch, top + stride * (out_height - 1) + 1,
                    left + stride * (out_width - 1) + 1, channels),
                   (1, stride, stride, 1))


def _weighted_windows(source, taps, stride: int, out_height: int, out_width: int):
  """The sum over `taps` ((top, left, per-channel weights)) of weights * window(top, left).

  XLA fuses the strided slices, products and sums into one loop over the output, which
  reads each pixel of `source` from cache once per tap.
  """
  out = None
  for top, left, weights in taps:
    term = strided_window(source, top, left, stride, out_height, out_width) * weights
    out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(x, kernel, stride: int, pads: Pads):
  """Depthwise conv of NHWC `x` with a (kh, kw, channels) kernel, as shifted multiply-adds.

  `pads` is ((top, bottom), (left, right)), all >= 0. The result has x's dtype.
  """
  return _depthwise_fwd(x, kernel, stride, pads)[0]


def _depthwise_fwd(x, kernel, stride, pads):
  kh, kw, _ = kernel.shape
  acc = _accumulation_dtype(x.dtype)
  padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  taps = [(i, j, kernel[i, j].astype(acc)) for i in range(kh) for j in range(kw)]
  out = _weighted_windows(padded.astype(acc), taps, stride,
                          output_size(x.shape[1], pads[0], kh, stride),
                          output_size(x.shape[2], pads[1], kw, stride))
  # The padded input is what the kernel gradient reads.
  return materialized(out.astype(x.dtype)), (padded, kernel)


def _depthwise_bwd(stride, pads, residuals, grad):
  padded, kernel = residuals
  acc = _accumulation_dtype(grad.dtype)
  kh, kw, _ = kernel.shape
  in_size = (padded.shape[1] - sum(pads[0]), padded.shape[2] - sum(pads[1]))
  out_height, out_width = grad.shape[1:3]
  # Written once, padded as the input gradient reads it; the kernel gradient reads its
  # interior. Left to itself XLA:CPU recomputes the gradient (the BN and ReLU backward
  # before it) inside both, one of them per kernel tap.
  (top, _), (left, _) = transpose_padding((kh, kw), stride, pads, in_size, (out_height,
                                                                           out_width))
  padded_grad = materialized(pad_for_transpose(grad.astype(acc), (kh, kw), stride, pads,
                                               in_size))
  grad_x = _depthwise_input_grad(padded_grad, kernel.astype(acc), stride, pads, in_size)
  grad_kernel = _depthwise_kernel_grad(
      padded.astype(acc), padded_grad[:, top:top + out_height, left:left + out_width],
      kernel.shape, stride)
  return materialized(grad_x.astype(padded.dtype)), grad_kernel.astype(kernel.dtype)


depthwise_conv.defvjp(_depthwise_fwd, _depthwise_bwd)


def _depthwise_input_grad(padded_grad, kernel, stride: int, pads: Pads,
                          in_size: tuple[int, int]):
  """d x of a depthwise conv: shifted multiply-adds over the output gradient, padded by
  `pad_for_transpose`."""
  kh, kw, _ = kernel.shape
  return window_transpose(lambda i, j, window: window * kernel[i, j], (padded_grad,),
                          (kh, kw), stride, pads, in_size)


def _planes(window: tuple[int, int], stride: int, pads: Pads, in_size: tuple[int, int]):
  """The height and width of the padded input's parity planes, and the taps' reach in them."""
  plane = tuple(-(-(size + sum(pad)) // stride) for size, pad in zip(in_size, pads))
  reach = tuple(-(-extent // stride) for extent in window)
  return plane, reach


def transpose_padding(window: tuple[int, int], stride: int, pads: Pads,
                      in_size: tuple[int, int], out_size: tuple[int, int]) -> Pads:
  """The zeros `window_transpose` reads around an output-shaped source: before it, one
  row (column) fewer than a tap window spans in a parity plane; after it, up to the
  planes' size."""
  plane, reach = _planes(window, stride, pads, in_size)
  return tuple((r - 1, p - o) for r, p, o in zip(reach, plane, out_size))


def pad_for_transpose(source, window: tuple[int, int], stride: int, pads: Pads,
                      in_size: tuple[int, int]):
  """`source` (batch, out_h, out_w, channels) padded by `transpose_padding`."""
  return jnp.pad(source, ((0, 0), *transpose_padding(window, stride, pads, in_size,
                                                     source.shape[1:3]), (0, 0)))


def window_transpose(tap_term, sources, window: tuple[int, int], stride: int, pads: Pads,
                     in_size: tuple[int, int]):
  """The transpose of reading `window`-sized windows of a padded input with `stride`.

  `sources` are arrays of the output's shape (batch, out_h, out_w, channels), each padded
  by `pad_for_transpose`; `tap_term(i, j, *windows)` is tap (i, j)'s contribution at
  every output position, given the same positions of each source. Returns, for every
  input position, the sum of the contributions of the (output position, tap) pairs that
  read it, as shifted sums: the gradient of a depthwise conv or a pool with respect to
  its unpadded input.

  Padded row p is read by output row o through tap i where p = stride * o + i. Write
  p = stride * a + r (r < stride): the taps i = r + stride * t meet output rows a - t. So
  each parity plane (r, c) of the padded input is a stride-1 sum of windows of the
  sources over the taps of that parity, the planes interleave into the padded input, and
  the padding is cropped off. Each tap is used once. The sources' padding is zeros: a
  term must vanish where its gradient source is zero.
  """
  kh, kw = window
  batch, _, _, channels = sources[0].shape
  (plane_height, plane_width), (reach_h, reach_w) = _planes(window, stride, pads, in_size)

  def plane(r: int, c: int):
    total = None
    for t in range(-(-(kh - r) // stride)):
      for u in range(-(-(kw - c) // stride)):
        windows = [strided_window(source, reach_h - 1 - t, reach_w - 1 - u, 1, plane_height,
                                  plane_width) for source in sources]
        term = tap_term(r + stride * t, c + stride * u, *windows)
        total = term if total is None else total + term
    return total

  planes = [[plane(r, c) for c in range(stride)] for r in range(stride)]
  if stride == 1:
    padded = planes[0][0]
  else:
    # (batch, a, r, b, c, channels) -> padded row stride * a + r, column stride * b + c.
    stacked = jnp.stack([jnp.stack(row, axis=3) for row in planes], axis=2)
    padded = stacked.reshape(batch, plane_height * stride, plane_width * stride, channels)
  return padded[:, pads[0][0]:pads[0][0] + in_size[0], pads[1][0]:pads[1][0] + in_size[1]]


def _depthwise_kernel_grad(padded, grad, kernel_shape, stride: int):
  """d kernel[i, j, c] = sum over the batch and output positions of window(i, j) * grad.

  All taps in one pass (`column_run_sums`), then each tap's sum of its partial sums, an
  eighth of the size. A reduction per tap reads `padded` and `grad` once per tap (and
  XLA:CPU hands each to YNNPACK, which also copies the shifted operand): 2.3x-4x slower
  on MobileNet v1's depthwise layers, a fifth of its training step on CPU.
  """
  kh, kw, channels = kernel_shape
  _, out_height, out_width, _ = grad.shape
  products = [strided_window(padded, i, j, stride, out_height, out_width) * grad
              for i in range(kh) for j in range(kw)]
  return jnp.stack([jnp.sum(sums, axis=(0, 1, 2)) for sums in column_run_sums(products)]
                   ).reshape(kh, kw, channels)


# Columns per partial sum of `column_run_sums`: the run at which the depthwise kernel
# gradient was fastest on the shapes of MobileNet v1 (2-core Zen 4, 2026-12-02; runs of
# 2 and 16 were 1.2x-1.8x slower than 8).
_COLUMN_RUN = 8


def column_run_sums(terms):
  """Each of `terms` (..., width, channels), summed over runs of consecutive columns.

  One reduction with an output per term (a variadic `lax.reduce`), which XLA:CPU computes
  in one loop over the terms' operands, where a sum per term reads them once per term.
  Runs are `_COLUMN_RUN` columns long, or the width's largest divisor below that.
  Returns one (..., width // run, channels) array per term.
  """
  width, channels = terms[0].shape[-2:]
  run = max(d for d in range(1, _COLUMN_RUN + 1) if width % d == 0)
  runs = (*terms[0].shape[:-2], width // run, run, channels)
  zeros = [jnp.zeros((), term.dtype) for term in terms]
  return lax.reduce([term.reshape(runs) for term in terms], zeros,
                    lambda a, b: [x + y for x, y in zip(a, b)], (len(runs) - 2,))


# Dense convs with at most this many kernel entries per output go to `broadcast_conv`.
_BROADCAST_MAX_TERMS = 27


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def broadcast_conv(x, kernel, stride: int, pads: Pads):
  """A dense conv of NHWC `x` with an HWIO kernel as kh * kw * in broadcast multiply-adds.

  Term (i, j, c) is input channel c of window (i, j), times kernel[i, j, c] (one weight
  per output channel): one loop over the output, vectorized over its channels. Only
  cheap for few terms, e.g. a 3 x 3 conv of RGB images.
  """
  return _broadcast_conv_fwd(x, kernel, stride, pads)[0]


def _broadcast_conv_forward(x, kernel, stride, pads):
  kh, kw, in_channels, _ = kernel.shape
  acc = _accumulation_dtype(x.dtype)
  padded = jnp.pad(x, ((0, 0), *pads, (0, 0))).astype(acc)
  taps = [(i, j, c) for i in range(kh) for j in range(kw) for c in range(in_channels)]
  size = (output_size(x.shape[1], pads[0], kh, stride),
          output_size(x.shape[2], pads[1], kw, stride))
  out = None
  for i, j, c in taps:
    term = strided_window(padded[..., c:c + 1], i, j, stride, *size) * kernel[i, j, c].astype(acc)
    out = term if out is None else out + term
  return out.astype(x.dtype), padded, size


def _broadcast_conv_fwd(x, kernel, stride, pads):
  out, padded, _ = _broadcast_conv_forward(x, kernel, stride, pads)
  return materialized(out), (x, padded, kernel)


def _broadcast_conv_bwd(stride, pads, residuals, grad):
  x, padded, kernel = residuals
  kh, kw, in_channels, out_channels = kernel.shape
  # d kernel: the products of the windows (stacked as patches) with grad, as one matrix
  # product. d x, which a stem does not need (XLA then drops it), by autodiff.
  size = grad.shape[1:3]
  patches = jnp.concatenate([strided_window(padded, i, j, stride, *size)
                             for i in range(kh) for j in range(kw)], axis=-1)
  grad_kernel = _weight_grad(patches, grad.astype(patches.dtype), None)
  _, input_vjp = jax.vjp(lambda x: _broadcast_conv_forward(x, kernel, stride, pads)[0], x)
  return (input_vjp(grad)[0],
          grad_kernel.reshape(kh, kw, in_channels, out_channels).astype(kernel.dtype))


broadcast_conv.defvjp(_broadcast_conv_fwd, _broadcast_conv_bwd)


def _matmul(a, b, precision):
  """a @ b over the last axis of `a` and the first of `b`."""
  return lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())), precision=precision)


def _weight_grad(x, grad, precision):
  """x^T grad summed over every pixel: d weights of x (..., in) @ weights (in, out).

  A 2-D product contracting the leading axis of both operands: XLA:CPU's dot reads that
  transposed operand as it is. For the 4-D contraction autodiff writes, XLA transposes x
  or grad inside the fusion that produces it instead, whose writes then stride a whole
  row per element: several times slower.
  """
  return lax.dot_general(x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1]),
                         (((0,), (0,)), ((), ())), precision=precision)


def _group_slices(weights, groups: int, group: int) -> tuple[slice, slice]:
  """The input and output channels of `group` (channels are group-major)."""
  in_per_group, out_per_group = weights.shape[0], weights.shape[1] // groups
  return (slice(group * in_per_group, (group + 1) * in_per_group),
          slice(group * out_per_group, (group + 1) * out_per_group))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def pointwise_conv(x, weights, groups: int, precision=None):
  """A 1x1 conv of x (..., groups * i) with weights (i, out): one product per group.

  The groups' products are concatenated. One contraction batched over a group axis
  computes the same, but XLA:CPU moves that axis of input and output to the front first,
  copies that cost several times the products.
  """
  return _pointwise_fwd(x, weights, groups, precision)[0]


def _pointwise_fwd(x, weights, groups, precision):
  outs = []
  for group in range(groups):
    inputs, outputs = _group_slices(weights, groups, group)
    outs.append(_matmul(x[..., inputs], weights[:, outputs], precision))
  return jnp.concatenate(outs, axis=-1), (x, weights)


def _pointwise_bwd(groups, precision, residuals, grad):
  x, weights = residuals
  grads_x, grads_weights = [], []
  for group in range(groups):
    inputs, outputs = _group_slices(weights, groups, group)
    grads_x.append(_matmul(grad[..., outputs], weights[:, outputs].T, precision))
    grads_weights.append(_weight_grad(x[..., inputs], grad[..., outputs], precision))
  return (jnp.concatenate(grads_x, axis=-1),
          jnp.concatenate(grads_weights, axis=-1).astype(weights.dtype))


pointwise_conv.defvjp(_pointwise_fwd, _pointwise_bwd)


def fast_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
              dimension_numbers=None, feature_group_count=1, batch_group_count=1,
              precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, with depthwise and 1x1 convs computed by cheaper means.

  Takes over NHWC/HWIO convs without dilation, with non-negative padding and equal
  strides, of three kinds: depthwise (feature_group_count == input channels == output
  channels), 1x1 (dense or grouped, stride 1, no padding) and dense with at most
  `_BROADCAST_MAX_TERMS` kernel entries per output. Any other call is passed on to
  `lax.conv_general_dilated` unchanged.
  """
  canonical = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
  undilated = all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
  strides = tuple(window_strides)
  if not (undilated and batch_group_count == 1 and preferred_element_type is None
          and _is_nhwc(lhs, rhs, dimension_numbers) and strides[0] == strides[1]):
    return canonical()
  kh, kw, in_per_group, out_channels = rhs.shape
  channels = lhs.shape[-1]
  pads = explicit_padding(padding, lhs.shape[1:3], (kh, kw), strides)
  if any(p < 0 for pair in pads for p in pair):
    return canonical()
  if feature_group_count == channels == out_channels and in_per_group == 1:
    return depthwise_conv(lhs, rhs.reshape(kh, kw, channels), strides[0], pads)
  if (kh, kw) == (1, 1) and strides == (1, 1) and pads == ((0, 0), (0, 0)):
    return pointwise_conv(lhs, rhs.reshape(in_per_group, out_channels), feature_group_count,
                          precision)
  if feature_group_count == 1 and kh * kw * channels <= _BROADCAST_MAX_TERMS:
    return broadcast_conv(lhs, rhs, strides[0], pads)
  return canonical()


class Conv(nn.Conv):
  """`nn.Conv` computed by `fast_conv`: the same variables, the same results.

  A 1x1 conv without bias also takes its input as a tuple of `feature_group_count`
  channel blocks, one per group, and returns one block per group: group k's output
  depends on block k alone, so each is one matrix product, with no slicing or
  concatenation of activations around the products.
  """

  conv_general_dilated: Callable[..., Any] | None = fast_conv

  @nn.compact
  def __call__(self, inputs):
    if not isinstance(inputs, tuple):
      return super().__call__(inputs)
    groups, in_per_group = len(inputs), inputs[0].shape[-1]
    if (groups != self.feature_group_count or tuple(self.kernel_size) != (1, 1)
        or self.use_bias or any(block.shape[-1] != in_per_group for block in inputs)
        or self.features % groups):
      raise ValueError(
          f"fast.Conv takes channel blocks for a 1x1 grouped conv without bias only, one "
          f"block of one width per group: got {groups} blocks of widths "
          f"{[block.shape[-1] for block in inputs]} for kernel_size={self.kernel_size}, "
          f"feature_group_count={self.feature_group_count}, features={self.features}")
    kernel = self.param("kernel", self.kernel_init, (1, 1, in_per_group, self.features),
                        self.param_dtype)
    dtype = self.dtype or jnp.promote_types(inputs[0].dtype, self.param_dtype)
    weights = kernel.reshape(in_per_group, groups, self.features // groups).astype(dtype)
    return tuple(pointwise_conv(block.astype(dtype), weights[:, k], 1)
                 for k, block in enumerate(inputs))
