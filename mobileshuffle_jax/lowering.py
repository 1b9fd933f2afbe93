"""Faster lowerings of the convolutions MobileNet v1 and ShuffleNet v1 are made of.

Every conv of the models is a flax `nn.Conv` (NHWC input, HWIO kernel of shape
`(kh, kw, in // groups, out)`), and the models pass a `lax.conv_general_dilated`-compatible
function to it. This module provides one such function, `fast_conv`, that computes the
same convolution with cheaper primitives where XLA's own convolution is slow:

- depthwise 3x3 (`feature_group_count == in == out channels`): nine shifted
  multiply-adds over the padded input, forward and backward (`jax.custom_vjp`);
- 1x1 dense: one `dot_general` over the channel axis;
- 1x1 grouped: channels viewed as (groups, in / groups), one batched contraction;
- anything else: `lax.conv_general_dilated` itself.

The parameter layout is the same for every lowering, so parameters, checkpoints and
gradients are interchangeable; only speed differs. `conv_lowering(name, backend)` picks
one by name ('xla', 'fast', 'auto').
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

# flax's `nn.Conv` calls the lowering with NHWC input, HWIO kernel and NHWC output.
_NHWC_SPEC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                      out_spec=(0, 3, 1, 2))


def _is_nhwc(lhs, rhs, dimension_numbers) -> bool:
  if lhs.ndim != 4 or rhs.ndim != 4:
    return False
  return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC_SPEC


def _explicit_padding(padding, spatial: Sequence[int], window: Sequence[int],
                      strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """`padding` ('SAME', 'VALID', ... or pairs) as one (low, high) pair per spatial axis."""
  if isinstance(padding, str):
    return tuple(tuple(p) for p in lax.padtype_to_pads(spatial, window, strides, padding))
  return tuple((int(low), int(high)) for low, high in padding)


def _tap(padded, row: int, col: int, stride: int, out_height: int, out_width: int):
  """The input pixels kernel tap (row, col) meets at every output position: a strided slice."""
  batch, _, _, channels = padded.shape
  return lax.slice(padded, (0, row, col, 0),
                   (batch, row + stride * (out_height - 1) + 1,
                    col + stride * (out_width - 1) + 1, channels),
                   (1, stride, stride, 1))


def _shifted_sum(padded, kernel, stride: int, out_height: int, out_width: int):
  """sum over taps of tap(padded) * kernel[tap]: the depthwise conv of an already padded input.

  `kernel` is (kh, kw, channels). XLA fuses the slices, products and sums into one loop
  over the output, which reads each input pixel from cache kh * kw times.
  """
  out = None
  for row in range(kernel.shape[0]):
    for col in range(kernel.shape[1]):
      term = _tap(padded, row, col, stride, out_height, out_width) * kernel[row, col]
      out = term if out is None else out + term
  return out


def _output_size(size: int, pads: tuple[int, int], window: int, stride: int) -> int:
  return (size + pads[0] + pads[1] - window) // stride + 1


def _depthwise_input_grad(grad, kernel, stride: int, pads, in_height: int, in_width: int):
  """The gradient of a depthwise conv w.r.t. its input, as shifted multiply-adds over `grad`.

  Padded input row p receives grad row o through tap i wherever p = stride * o + i. Split
  p by its remainder r modulo the stride, p = stride * a + r: the taps i = r + stride * t
  (t = 0, 1, ...) meet output rows a - t. So each of the stride x stride parity planes is
  a stride-1 correlation of `grad` with a sub-kernel, the planes interleave into the padded
  input's gradient, and the padding is cropped off. Every tap is used once: as many
  multiply-adds as the forward pass.
  """
  kh, kw, _ = kernel.shape
  batch, out_height, out_width, channels = grad.shape
  padded_height = in_height + pads[0][0] + pads[0][1]
  padded_width = in_width + pads[1][0] + pads[1][1]
  plane_height = -(-padded_height // stride)
  plane_width = -(-padded_width // stride)
  taps_h, taps_w = -(-kh // stride), -(-kw // stride)
  # Zero rows before grad for the shifts a - t (t < taps) and after it up to the plane size.
  grad = jnp.pad(grad, ((0, 0), (taps_h - 1, plane_height - out_height),
                        (taps_w - 1, plane_width - out_width), (0, 0)))
  planes = []
  for r in range(stride):
    row_planes = []
    for c in range(stride):
      sub_kernel = kernel[r::stride, c::stride][::-1, ::-1]
      # Flipped sub-kernel: tap t of the correlation pairs with grad row a - t.
      sub_kernel = jnp.pad(sub_kernel, ((taps_h - sub_kernel.shape[0], 0),
                                        (taps_w - sub_kernel.shape[1], 0), (0, 0)))
      row_planes.append(_shifted_sum(grad, sub_kernel, 1, plane_height, plane_width))
    planes.append(row_planes)
  if stride == 1:
    padded_grad = planes[0][0]
  else:
    # (batch, a, r, b, c, channels) -> padded row stride * a + r, column stride * b + c.
    stacked = jnp.stack([jnp.stack(row, axis=3) for row in planes], axis=2)
    padded_grad = stacked.reshape(batch, plane_height * stride, plane_width * stride, channels)
  return padded_grad[:, pads[0][0]:pads[0][0] + in_height,
                     pads[1][0]:pads[1][0] + in_width]


# Up to this many output pixels per image (28 x 28), and this batch size, the kernel
# gradient sums over the batch first (see `_depthwise_kernel_grad`).
_BATCH_FIRST_MAX_PIXELS = 28 * 28
_BATCH_FIRST_MAX_BATCH = 64


def _depthwise_kernel_grad(padded, grad, kh: int, kw: int, stride: int):
  """d kernel[i, j, c] = sum over batch and output positions of tap(i, j) * grad.

  Two orders of the same sums, whichever XLA:CPU runs faster (measured per layer shape of
  MobileNet v1 and ShuffleNet v1 at batch 32):

  - small images at stride 1: per tap, one elementwise sum over the batch of tap * grad
    (written out image by image, which XLA fuses into one loop with the nine taps side by
    side), then one reduction over the pixels of all nine;
  - otherwise, per tap, one reduction over everything of the tap's input window times
    grad. The window is read from the padded input's parity plane (i % stride,
    j % stride) at offset (i // stride, j // stride), and grad is placed at that offset
    with zeros around it: XLA reduces such a padded operand in place, where a window
    sliced out of the input would be copied first, for every tap.
  """
  batch, out_height, out_width, channels = grad.shape
  if (stride == 1 and out_height * out_width <= _BATCH_FIRST_MAX_PIXELS
      and batch <= _BATCH_FIRST_MAX_BATCH):
    per_tap = []
    for i in range(kh):
      for j in range(kw):
        window = _tap(padded, i, j, stride, out_height, out_width)
        per_tap.append(sum(window[n] * grad[n] for n in range(batch))[:, :, None])
    return jnp.sum(jnp.concatenate(per_tap, axis=2), axis=(0, 1)).reshape(kh, kw, channels)
  zero = jnp.zeros((), grad.dtype)
  planes = {}
  rows = []
  for i in range(kh):
    row = []
    for j in range(kw):
      parity = (i % stride, j % stride)
      if parity not in planes:
        planes[parity] = padded[:, parity[0]::stride, parity[1]::stride]
      plane = planes[parity]
      top, left = i // stride, j // stride
      placed = lax.pad(grad, zero, ((0, 0, 0), (top, plane.shape[1] - top - out_height, 0),
                                    (left, plane.shape[2] - left - out_width, 0),
                                    (0, 0, 0)))
      row.append(jnp.sum(plane * placed, axis=(0, 1, 2)))
    rows.append(jnp.stack(row))
  return jnp.stack(rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(x, kernel, stride: int, pads):
  """Depthwise conv of NHWC `x` with a (kh, kw, channels) kernel as shifted multiply-adds.

  `pads` is ((top, bottom), (left, right)), all >= 0. Products are summed in float32 (or
  wider) whatever the input dtype, as XLA's convolution does; the result has x's dtype.
  """
  return _depthwise_forward(x, kernel, stride, pads)[0]


def _accumulation_dtype(dtype):
  return jnp.promote_types(dtype, jnp.float32)


def _depthwise_forward(x, kernel, stride, pads):
  kh, kw, _ = kernel.shape
  out_height = _output_size(x.shape[1], pads[0], kh, stride)
  out_width = _output_size(x.shape[2], pads[1], kw, stride)
  acc = _accumulation_dtype(x.dtype)
  padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  out = _shifted_sum(padded.astype(acc), kernel.astype(acc), stride, out_height, out_width)
  return out.astype(x.dtype), padded


def _depthwise_fwd(x, kernel, stride, pads):
  out, padded = _depthwise_forward(x, kernel, stride, pads)
  # Keep the padded input: the kernel gradient reads its taps.
  return out, (padded, kernel)


def _depthwise_bwd(stride, pads, residuals, grad):
  padded, kernel = residuals
  kh, kw, _ = kernel.shape
  in_height = padded.shape[1] - pads[0][0] - pads[0][1]
  in_width = padded.shape[2] - pads[1][0] - pads[1][1]
  acc = _accumulation_dtype(grad.dtype)
  grad_acc = grad.astype(acc)
  grad_x = _depthwise_input_grad(grad_acc, kernel.astype(acc), stride, pads, in_height,
                                 in_width)
  grad_kernel = _depthwise_kernel_grad(padded.astype(acc), grad_acc, kh, kw, stride)
  return grad_x.astype(padded.dtype), grad_kernel.astype(kernel.dtype)


depthwise_conv.defvjp(_depthwise_fwd, _depthwise_bwd)


def _matmul(a, b, precision):
  """a @ b over the last axis of `a` and the first of `b`."""
  return lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_pointwise(x, weights, precision):
  """x (..., in) @ weights (in, out), with a weight gradient that XLA:CPU computes fast."""
  return _matmul(x, weights, precision)


def _dense_pointwise_fwd(x, weights, precision):
  return _matmul(x, weights, precision), (x, weights)


def _dense_pointwise_bwd(precision, residuals, grad):
  x, weights = residuals
  in_channels, out_channels = weights.shape
  grad_x = _matmul(grad, weights.T, precision)
  # d weights = x^T grad over all pixels, as a 2-D product that contracts the leading axis
  # of both operands: XLA:CPU's dot takes that transposed operand as it is, where the 4-D
  # contraction autodiff writes makes XLA transpose x or grad inside the fusion producing
  # it, whose writes then stride a whole row per element.
  grad_weights = lax.dot_general(x.reshape(-1, in_channels), grad.reshape(-1, out_channels),
                                 (((0,), (0,)), ((), ())), precision=precision)
  return grad_x, grad_weights.astype(weights.dtype)


_dense_pointwise.defvjp(_dense_pointwise_fwd, _dense_pointwise_bwd)


def pointwise_conv(x, kernel, groups: int = 1, precision=None):
  """A 1x1 conv of NHWC `x` with an HWIO (1, 1, in // groups, out) kernel as a contraction.

  Dense: one matrix product over the channel axis. Grouped: the channels split into
  (groups, in // groups) and the kernel into (in // groups, groups, out // groups), and
  one contraction batched over the group axis.
  """
  _, _, in_per_group, out_channels = kernel.shape
  weights = kernel.reshape(in_per_group, out_channels)
  if groups == 1:
    return _dense_pointwise(x, weights, precision)
  return _grouped_pointwise(x, weights, groups, precision)


def _grouped_contraction(x, weights, groups: int, precision):
  """The grouped 1x1 conv as one contraction batched over the groups."""
  in_per_group, out_channels = weights.shape
  grouped_x = x.reshape(*x.shape[:-1], groups, in_per_group)
  grouped_w = weights.reshape(in_per_group, groups, out_channels // groups)
  out = jnp.einsum("...gi,igo->...go", grouped_x, grouped_w, precision=precision)
  return out.reshape(*x.shape[:-1], out_channels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _grouped_pointwise(x, weights, groups: int, precision):
  """A grouped 1x1 conv: x (..., groups * i) with weights (i, out), group-major channels.

  Forward: one matrix product per group on its slice of the channels, concatenated. The
  batched contraction computes the same, but XLA:CPU moves the group axis of input and
  output to the front first, two copies that cost it several times the products. The
  backward is the batched contraction's own: there it is the faster one.
  """
  in_per_group, out_channels = weights.shape
  out_per_group = out_channels // groups
  return jnp.concatenate(
      [_matmul(x[..., g * in_per_group:(g + 1) * in_per_group],
               weights[:, g * out_per_group:(g + 1) * out_per_group], precision)
       for g in range(groups)], axis=-1)


def _grouped_pointwise_fwd(x, weights, groups, precision):
  return _grouped_pointwise(x, weights, groups, precision), (x, weights)


def _grouped_pointwise_bwd(groups, precision, residuals, grad):
  x, weights = residuals
  _, backward = jax.vjp(lambda x, w: _grouped_contraction(x, w, groups, precision), x, weights)
  return backward(grad)


_grouped_pointwise.defvjp(_grouped_pointwise_fwd, _grouped_pointwise_bwd)


def fast_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
              dimension_numbers=None, feature_group_count=1, batch_group_count=1,
              precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` with depthwise and 1x1 convs lowered to cheaper primitives.

  Takes over only NHWC/HWIO convs without dilation and with non-negative padding, of
  one of two kinds: depthwise (feature_group_count == input channels == output channels)
  and 1x1 (dense or grouped, stride 1, no padding). Everything else is passed on unchanged.
  """
  canonical = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
  undilated = all(d == 1 for d in (lhs_dilation or ())) and all(
      d == 1 for d in (rhs_dilation or ()))
  if not (undilated and batch_group_count == 1 and preferred_element_type is None
          and _is_nhwc(lhs, rhs, dimension_numbers)):
    return canonical()
  kh, kw, in_per_group, out_channels = rhs.shape
  channels = lhs.shape[-1]
  strides = tuple(window_strides)
  pads = _explicit_padding(padding, lhs.shape[1:3], (kh, kw), strides)
  if any(p < 0 for pair in pads for p in pair):
    return canonical()
  if (feature_group_count == channels == out_channels and in_per_group == 1
      and strides[0] == strides[1]):
    return depthwise_conv(lhs, rhs.reshape(kh, kw, channels), strides[0], pads)
  if (kh, kw) == (1, 1) and strides == (1, 1) and pads == ((0, 0), (0, 0)):
    return pointwise_conv(lhs, rhs, feature_group_count, precision)
  return canonical()


LOWERINGS = ("auto", "xla", "fast")
# What 'auto' picks per backend (see the module docstring for the measurements and reasons).
AUTO = {"cpu": "fast"}
AUTO_DEFAULT = "xla"


def _auto_conv(lhs, rhs, *args, **kwargs):
  """'auto' resolved when the conv is traced, for the default backend at that time.

  With more than one device XLA's own convolution is kept: under SPMD data parallelism
  the partitioner splits the shifted taps of `fast_conv` along the spatial axes and
  exchanges halos (thousands of collective-permutes per step), while it keeps XLA's
  convolution on the batch split with nothing but the gradient all-reduce.
  """
  backend = jax.default_backend() if jax.device_count() == 1 else "multi-device"
  conv = conv_lowering("auto", backend) or lax.conv_general_dilated
  return conv(lhs, rhs, *args, **kwargs)


def conv_lowering(name: str, backend: str | None = None) -> Callable | None:
  """The `conv_general_dilated` function for the models' `conv_lowering` field.

  'xla': None (flax's default, `lax.conv_general_dilated`); 'fast': `fast_conv`; 'auto':
  the faster of the two on `backend` ('cpu', 'gpu', 'tpu'), or, for backend None, a
  function that decides when it is traced (so building a model never initializes JAX's
  backends).
  """
  if name not in LOWERINGS:
    raise ValueError(f"lowering={name!r} is not supported; allowed values: "
                     f"{', '.join(repr(n) for n in LOWERINGS)}")
  if name == "auto":
    if backend is None:
      return _auto_conv
    name = AUTO.get(backend, AUTO_DEFAULT)
  return fast_conv if name == "fast" else None
