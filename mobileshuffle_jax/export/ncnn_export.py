"""ncnn files of a checkpoint (`model.param` and `model.bin`), for ncnn on phones and CPUs.

    python -m mobileshuffle_jax.export --workdir DIR --format ncnn --out model.param \\
        [--resolution R] [--no-preprocessing]

Written layer for layer from the checkpoint's folded graph (`graph.py`) in ncnn's own
formats (docs/developer-guide/param-and-model-file-structure.md and
operation-param-weight-table.md in Tencent/ncnn), with the layers ncnn's own benchmark
models use: each conv with its folded BN as bias and its ReLU fused (`Convolution`, or
`ConvolutionDepthWise` with `group=g` for grouped 1x1 convs and `group=C` for depthwise
ones; ReLU6 as the fused clip), `ShuffleChannel` (with `reverse=0`, the paper's order),
`Pooling` with explicit padding, `BinaryOp` add, `Concat`, `ReLU`, global `Pooling` and
`InnerProduct`; a blob read by two layers goes through a `Split`, as ncnn requires.
Unless `--no-preprocessing`, the checkpoint's normalization is the first layer (`Scale`
by 1 / std with bias -mean / std). Conv and dense weights are stored as float32 with
ncnn's 4-byte type flag (0), biases and scales raw, as each layer's `load_model` reads them.

The input blob `images` is one float32 image, CHW (ncnn has no batch axis: `--batch` is
refused), RGB 0..255 or normalized; the output blob `logits` holds the class scores. As
for ONNX, the padding is explicit, for the export's resolution. Beside FILE, `FILE.json`
records the model, the blob names and the input; files are written under temporary names
and renamed, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import collections
import json
import os
import struct
from typing import Any

import numpy as np

from mobileshuffle_jax import predict, staging
from mobileshuffle_jax.export import graph as graph_lib
from mobileshuffle_jax.export import records

FORMAT = "mobileshuffle_jax.ncnn"
PARAM_SUFFIX = ".param"
BIN_SUFFIX = ".bin"
MAGIC = 7767517
FLOAT32_FLAG = struct.pack("<I", 0)  # a weight buffer's type flag: float32 follows
ACTIVATION_TYPES = {None: 0, "relu": 1, "relu6": 3}  # relu6: clip with (min, max)
POOLING_TYPES = {"max_pool": 0, "avg_pool": 1}
PAD_MODE_EXPLICIT = 1  # Pooling's pad_mode 1: the given pads, no ceil-mode tail


def bin_path(param_path: str) -> str:
  """The `.bin` written beside `param_path` (which ends in `.param`)."""
  return param_path[:-len(PARAM_SUFFIX)] + BIN_SUFFIX


def output_paths(param_path: str) -> list[str]:
  """The files an ncnn export to `param_path` writes."""
  return [param_path, bin_path(param_path), param_path + records.SIDECAR_SUFFIX]


def check_out(param_path: str) -> None:
  """Refuse an --out that does not name a `.param` file (the `.bin` goes beside it)."""
  if not param_path.endswith(PARAM_SUFFIX) or len(param_path) == len(PARAM_SUFFIX):
    raise ValueError(f"--out={param_path!r}: --format ncnn writes FILE.param and FILE.bin; "
                     "--out must end in .param")


def _value(value: Any) -> str:
  return f"{value:e}" if isinstance(value, float) else str(int(value))


def _params(params: dict[int, Any]) -> list[str]:
  """`key=value` pairs of a layer line; a tuple value is an array (key -23300 - key)."""
  pairs = []
  for key, value in params.items():
    if isinstance(value, tuple):
      pairs.append(f"{-23300 - key}={len(value)},{','.join(_value(v) for v in value)}")
    else:
      pairs.append(f"{key}={_value(value)}")
  return pairs


def _float32(array: np.ndarray) -> bytes:
  return np.ascontiguousarray(array, dtype="<f4").tobytes()


def _layer(node: graph_lib.Node) -> tuple[str, dict[int, Any], bytes]:
  """(ncnn layer type, its params by key, its weight bytes) of one graph node."""
  a, w = node.attributes, node.weights
  if node.op == "normalize":
    scale = 1.0 / a["std"].astype(np.float64)
    return "Scale", {0: len(scale), 1: 1}, _float32(scale) + _float32(-a["mean"] * scale)
  if node.op == "conv":
    kernel = w["kernel"]
    top, left, bottom, right = a["pads"]
    params = {0: kernel.shape[0], 1: kernel.shape[3], 11: kernel.shape[2], 3: a["stride"],
              4: left, 15: right, 14: top, 16: bottom, 5: 1, 6: kernel.size,
              9: ACTIVATION_TYPES[a["activation"]]}
    if a["activation"] == "relu6":
      params[10] = (0.0, 6.0)
    kind = "Convolution"
    if a["groups"] > 1:
      kind, params[7] = "ConvolutionDepthWise", a["groups"]
    return kind, params, FLOAT32_FLAG + _float32(kernel) + _float32(w["bias"])
  if node.op in POOLING_TYPES:
    top, left, bottom, right = a["pads"]
    params = {0: POOLING_TYPES[node.op], 1: a["kernel"], 2: a["stride"], 3: left, 14: right,
              13: top, 15: bottom, 5: PAD_MODE_EXPLICIT}
    if node.op == "avg_pool":
      params[6] = int(a["count_include_pad"])
    return "Pooling", params, b""
  if node.op == "shuffle":
    return "ShuffleChannel", {0: a["groups"], 1: 0}, b""
  if node.op == "add":
    return "BinaryOp", {0: 0}, b""
  if node.op == "concat":
    return "Concat", {0: 0}, b""
  if node.op == "relu":
    return "ReLU", {}, b""
  if node.op == "global_average_pool":
    return "Pooling", {0: 1, 4: 1}, b""
  if node.op == "dense":
    kernel = w["kernel"]
    blob = FLOAT32_FLAG + _float32(kernel) + (_float32(w["bias"]) if "bias" in w else b"")
    return "InnerProduct", {0: kernel.shape[0], 1: int("bias" in w), 2: kernel.size}, blob
  raise ValueError(f"no ncnn translation of op {node.op!r}")


def to_ncnn(graph: graph_lib.Graph) -> tuple[str, bytes]:
  """The text of `model.param` and the bytes of `model.bin` of `graph`."""
  consumers = collections.Counter(name for node in graph.nodes for name in node.inputs)
  lines: list[str] = []
  weights: list[bytes] = []
  renamed: dict[str, collections.deque] = {}  # blob -> its Split copies, one per reader
  blobs = 0

  def emit(kind: str, name: str, inputs: list[str], outputs: list[str], params: list[str]):
    nonlocal blobs
    lines.append(" ".join([kind, name, str(len(inputs)), str(len(outputs)), *inputs,
                           *outputs, *params]))
    blobs += len(outputs)

  def produced(blob: str) -> None:
    """A Split after `blob` when more than one layer reads it."""
    if consumers[blob] > 1:
      copies = [f"{blob}_split{i}" for i in range(consumers[blob])]
      emit("Split", f"{blob}_split", [blob], copies, [])
      renamed[blob] = collections.deque(copies)

  size = graph.resolution
  emit("Input", graph_lib.INPUT_NAME, [], [graph_lib.INPUT_NAME],
       _params({0: size, 1: size, 2: graph.input_channels}))
  produced(graph_lib.INPUT_NAME)
  for node in graph.nodes:
    kind, params, blob = _layer(node)
    inputs = [renamed[name].popleft() if name in renamed else name for name in node.inputs]
    emit(kind, node.name, inputs, [node.name], _params(params))
    weights.append(blob)
    produced(node.name)
  param = "\n".join([str(MAGIC), f"{len(lines)} {blobs}", *lines]) + "\n"
  return param, b"".join(weights)


def write_ncnn(predictor: predict.Predictor, path: str, *, resolution: int | None = None,
               in_graph_preprocessing: bool = True) -> None:
  """`predictor` as `path` (a .param), the .bin beside it and `path + '.json'`; nothing
  written on failure."""
  check_out(path)
  folded = graph_lib.build(predictor, resolution=resolution,
                           in_graph_preprocessing=in_graph_preprocessing)
  param, weights = to_ncnn(folded)
  record = dict(
      format=FORMAT, format_version=records.FORMAT_VERSION, **records.model_record(predictor),
      input=dict(records.input_record(predictor, batch=None, resolution=folded.resolution,
                                      layout="CHW",
                                      in_graph_preprocessing=in_graph_preprocessing),
                 blob=graph_lib.INPUT_NAME),
      output={"blob": graph_lib.OUTPUT_NAME, "shape": [predictor.num_classes],
              "dtype": "float32", "values": "logits"},
      weights=os.path.basename(bin_path(path)))
  with staging.staged_file(path) as param_staging, \
       staging.staged_file(bin_path(path)) as bin_staging, \
       staging.staged_file(path + records.SIDECAR_SUFFIX) as sidecar_staging:
    with open(sidecar_staging, "w") as f:
      json.dump(record, f, indent=2, sort_keys=True)
    with open(bin_staging, "wb") as f:
      f.write(weights)
    with open(param_staging, "w") as f:
      f.write(param)
