"""A checkpoint's inference graph with every BN folded into its conv, for the ONNX and ncnn
writers (`onnx_export.py`, `ncnn_export.py`), which translate it node for node.

Both runtimes take channels-first images and keep a conv's bias and activation in the conv,
so the graph is written in their terms: NCHW, conv weights [out, in // groups, kh, kw]
(PyTorch's layout, which ONNX's Conv and ncnn's Convolution share), each BN folded into the
conv before it (weights times gamma / sqrt(var + eps), bias beta - mean * that factor,
computed in float64 and stored as float32), and its activation attached. A grouped 1x1 conv
is a conv with `groups=g`, a depthwise conv one with `groups=C`; the channel shuffle is one
`shuffle` node (ONNX: Reshape + Transpose + Reshape; ncnn: ShuffleChannel). The padding of
every conv and pool is explicit, computed for the export's resolution by the model's own
convention (TensorFlow's SAME or PyTorch's symmetric), so the graph is exact at that
resolution only; the writers fix it in the file.

The graph follows the model's own description of itself (`MobileNetV1.block_specs`,
`ShuffleNetV1.unit_specs`, its padding, concat and shuffle orders) and reads its variables by
the names the modules give them; the exports are checked against `load().predict`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from mobileshuffle_jax import layers, predict, preprocessing
from mobileshuffle_jax.models import mobilenet_v1, shufflenet_v1

# What a node computes; attributes and weights by op:
#   normalize: mean, std (per channel): (x - mean) / std
#   conv: kernel [out, in // groups, kh, kw], bias [out]; stride, groups, activation, pads
#     (top, left, bottom, right)
#   max_pool, avg_pool: kernel, stride, pads, count_include_pad (avg_pool)
#   shuffle: groups (ShuffleNet's channel shuffle in the paper's order)
#   add, concat (channels), relu, global_average_pool
#   dense: kernel [out, in], bias [out] or absent
OPS = ("normalize", "conv", "max_pool", "avg_pool", "shuffle", "add", "concat", "relu",
       "global_average_pool", "dense")
ACTIVATIONS = (None, "relu", "relu6")
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
MIN_RESOLUTION = 32  # both networks downsample by 32


@dataclasses.dataclass(frozen=True)
class Node:
  """One op; its output is named `name` and has `shape` (C, H, W), or (C,) after pooling."""

  op: str
  name: str
  inputs: tuple[str, ...]
  shape: tuple[int, ...]
  attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
  weights: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Graph:
  """Nodes in execution order, from `INPUT_NAME` [C, resolution, resolution] to the last
  node's output, the logits (named `OUTPUT_NAME`)."""

  nodes: tuple[Node, ...]
  input_channels: int
  resolution: int

  @property
  def num_classes(self) -> int:
    return self.nodes[-1].shape[0]


def check_resolution(resolution: int | None) -> None:
  """Refuse a resolution the networks cannot take (None: the checkpoint's own)."""
  if resolution is not None and resolution < MIN_RESOLUTION:
    raise ValueError(f"--resolution={resolution} must be at least {MIN_RESOLUTION} (both "
                     "networks downsample by 32)")


def spatial_pads(size: int, kernel: int, stride: int, convention: str) -> tuple[int, int]:
  """(before, after) padding of one spatial axis, as `layers.spatial_padding` pads it."""
  if layers.spatial_padding(kernel, convention) != "SAME":
    return kernel // 2, kernel // 2
  total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2  # XLA's SAME: the odd pixel after


class _Builder:
  """Appends nodes, tracking each output's shape; folds BN into the convs it reads."""

  def __init__(self, variables, bn_epsilon: float, padding: str):
    self.params = variables["params"]
    self.batch_stats = variables["batch_stats"]
    self.bn_epsilon = bn_epsilon
    self.padding = padding
    self.nodes: list[Node] = []
    self.shapes: dict[str, tuple[int, ...]] = {}

  def add(self, op: str, name: str, inputs: tuple[str, ...], shape: tuple[int, ...],
          weights: dict[str, np.ndarray] | None = None, **attributes) -> str:
    self.nodes.append(Node(op, name, inputs, shape, attributes, weights or {}))
    self.shapes[name] = shape
    return name

  def conv_bn(self, x: str, path: tuple[str, ...], *, stride: int, groups: int,
              activation: str | None) -> str:
    """The `layers.ConvBN` at `path` (module names) on `x`, its BN folded."""
    params, stats = self.params, self.batch_stats
    for key in path:
      params, stats = params[key], stats[key]
    kernel = np.asarray(params["conv"]["kernel"], np.float64)  # (kh, kw, in // g, out)
    multiplier = (np.asarray(params["bn"]["scale"], np.float64)
                  / np.sqrt(np.asarray(stats["bn"]["var"], np.float64) + self.bn_epsilon))
    bias = (np.asarray(params["bn"]["bias"], np.float64)
            - np.asarray(stats["bn"]["mean"], np.float64) * multiplier)
    folded = (kernel * multiplier).transpose(3, 2, 0, 1)  # (out, in // g, kh, kw)
    size, out_channels = self.shapes[x][1], folded.shape[0]
    before, after = spatial_pads(size, folded.shape[2], stride, self.padding)
    out_size = (size + before + after - folded.shape[2]) // stride + 1
    return self.add("conv", "_".join(path), (x,), (out_channels, out_size, out_size),
                    {"kernel": folded.astype(np.float32), "bias": bias.astype(np.float32)},
                    stride=stride, groups=groups, pads=(before, before, after, after),
                    activation=activation)

  def pool(self, x: str, name: str, kind: str) -> str:
    """`layers.pool(x, kind, padding)`: 3x3, stride 2."""
    channels, size, _ = self.shapes[x]
    before, after = spatial_pads(size, 3, 2, self.padding)
    out_size = (size + before + after - 3) // 2 + 1
    attributes = dict(kernel=3, stride=2, pads=(before, before, after, after))
    if kind == "avg":  # SAME excludes the padding from the mean, symmetric counts it
      attributes["count_include_pad"] = self.padding == "symmetric"
    return self.add(f"{kind}_pool", name, (x,), (channels, out_size, out_size), **attributes)

  def classifier(self, x: str, num_classes: int) -> str:
    """`common.classify` in inference: global average pool, then the dense layer."""
    pooled = self.add("global_average_pool", "global_pool", (x,), (self.shapes[x][0],))
    params = self.params["classifier"]
    weights = {"kernel": np.asarray(params["kernel"], np.float32).T.copy()}
    if "bias" in params:
      weights["bias"] = np.asarray(params["bias"], np.float32)
    return self.add("dense", OUTPUT_NAME, (pooled,), (num_classes,), weights)


def _mobilenet(builder: _Builder, x: str, model: mobilenet_v1.MobileNetV1) -> str:
  activation = model.activation
  x = builder.conv_bn(x, ("stem",), stride=2, groups=1, activation=activation)
  for index, stride, _ in model.block_specs():
    name = f"block{index}"
    if model.variant == "full":
      x = builder.conv_bn(x, (name,), stride=stride, groups=1, activation=activation)
      continue
    x = builder.conv_bn(x, (name, "depthwise"), stride=stride, groups=builder.shapes[x][0],
                        activation=activation)
    x = builder.conv_bn(x, (name, "pointwise"), stride=1, groups=1, activation=activation)
  return x


def _shufflenet(builder: _Builder, x: str, model: shufflenet_v1.ShuffleNetV1) -> str:
  x = builder.conv_bn(x, ("stem",), stride=2, groups=1, activation="relu")
  x = builder.pool(x, "stem_pool", "max")
  for name, stride, _, compress_groups in model.unit_specs():
    y = builder.conv_bn(x, (name, "compress"), stride=1, groups=compress_groups,
                        activation="relu")
    if model.shuffle:
      channels = builder.shapes[y][0]
      # The inverse of a shuffle with g groups is the shuffle with channels / g groups.
      groups = model.groups if model.shuffle_order == "paper" else channels // model.groups
      y = builder.add("shuffle", f"{name}_shuffle", (y,), builder.shapes[y], groups=groups)
    y = builder.conv_bn(y, (name, "depthwise"), stride=stride, groups=builder.shapes[y][0],
                        activation=None)
    y = builder.conv_bn(y, (name, "expand"), stride=1, groups=model.groups, activation=None)
    if stride == 1:
      merged = builder.add("add", f"{name}_add", (x, y), builder.shapes[y])
    else:
      shortcut = builder.pool(x, f"{name}_shortcut", "avg")
      parts = (y, shortcut) if model.concat_order == "main_first" else (shortcut, y)
      channels = sum(builder.shapes[part][0] for part in parts)
      merged = builder.add("concat", f"{name}_concat", parts,
                           (channels,) + builder.shapes[y][1:])
    x = builder.add("relu", f"{name}_relu", (merged,), builder.shapes[merged])
  return x


BODIES = {mobilenet_v1.MobileNetV1: _mobilenet, shufflenet_v1.ShuffleNetV1: _shufflenet}


def build(predictor: predict.Predictor, *, resolution: int | None = None,
          in_graph_preprocessing: bool = True) -> Graph:
  """The folded graph of `predictor` at `resolution` (default: its image size).

  With `in_graph_preprocessing`, the input is RGB 0..255 and the checkpoint's normalization
  is the first node; without, the input is already normalized.
  """
  check_resolution(resolution)
  model = predictor.model
  body = BODIES.get(type(model))
  if body is None:
    raise ValueError(f"{type(model).__name__} has no ONNX or ncnn graph; supported models: "
                     f"{', '.join(cls.__name__ for cls in BODIES)}")
  resolution = resolution or predictor.image_size
  builder = _Builder(jax.device_get(predictor.variables), model.bn_epsilon, model.padding)
  channels = model.input_channels
  builder.shapes[INPUT_NAME] = (channels, resolution, resolution)
  x = INPUT_NAME
  if in_graph_preprocessing:
    mean, std = preprocessing.NORMALIZATIONS[predictor.preprocessing["normalization"]]
    x = builder.add("normalize", "normalize", (x,), builder.shapes[x],
                    mean=np.broadcast_to(np.asarray(mean, np.float32), (channels,)),
                    std=np.broadcast_to(np.asarray(std, np.float32), (channels,)))
  builder.classifier(body(builder, x, model), predictor.num_classes)
  return Graph(tuple(builder.nodes), channels, resolution)
