"""ONNX files of a checkpoint, for ONNX Runtime, TensorRT, OpenVINO and other ONNX runtimes.

    python -m mobileshuffle_jax.export --workdir DIR --format onnx --out model.onnx \\
        [--batch B] [--resolution R] [--no-preprocessing]

The file is written node for node from the checkpoint's folded graph (`graph.py`) with the
`onnx` package's helpers, at opset `OPSET`: each BN folded into its `Conv` (with its bias),
grouped 1x1 convs as `Conv` with `group=g`, depthwise convs as `Conv` with `group=C`, the
channel shuffle as `Reshape` + `Transpose` + `Reshape`, ReLU / ReLU6 as `Relu` / `Clip`, and
unless `--no-preprocessing` the checkpoint's normalization as a leading `Sub` + `Div`. The
input `images` is float32 NCHW [batch, 3, R, R] (RGB 0..255, or normalized without
preprocessing); the batch is symbolic unless `--batch` fixes it; the output `logits` is
float32 [batch, classes]. The resolution is fixed (the padding of every conv and pool is
explicit, by the model's convention), the checkpoint's image size unless `--resolution`.

No maintained converter writes this file, measured (MobileNet 1.0 in Keras' layout and
ShuffleNet 1x g3 in the authors', 224 px, random weights; ONNX Runtime 1.32, batch 1, five
interleaved rounds of 50 calls on a shared 2-core AMD EPYC; ratios are medians over rounds):
- tf2onnx 1.17.0 cannot read a JAX 0.10 function: jax2tf now serializes natively, the
  whole function one `XlaCallModule` op, for which tf2onnx has no handler.
- jax2onnx 0.17.1 (declares orbax-checkpoint<0.11.37, against our pin) converts a JAX
  function of this graph (lax convs, NCHW, `feature_group_count`) with the same logits
  (relative difference 2e-7 / 4e-7, as here), but not into the file above: each conv's bias
  is a separate `Add`; its `ReduceMean` is invalid at opset 17 (opset 18 needed); with a
  symbolic batch each shuffle `Reshape` computes its shape at run time (Shape, Gather,
  Concat). NCHW `reduce_window` pools become a 4-d `MaxPool` on a 6-d tensor that ONNX
  Runtime refuses ("Unsupported pooling size"), and flax pools lose explicit padding; only
  `Pad` + VALID pools convert. That ShuffleNet file ran 1.17x / 1.04x this writer's latency
  (1 / 2 threads; 1.14x / 1.04x at batch 1), MobileNet 0.98x / 0.95x. Converting the
  unfolded predict function keeps every BN as Sqrt, Mul, Sub and Div ops (MobileNet 1.47x)
  and fails on ShuffleNet (jax2onnx's linen avg_pool patch).
Writing the graph from our parameters leaves nothing to a converter's pattern matching: the
BN folding, the group attributes, the shuffle and the pools are exactly the ones above, and
the file holds only the standard ops listed.

Beside FILE, `FILE.json` records the model, its fingerprint, the input and the opset (the
checker, `python -m mobileshuffle_jax.export.check`, reads it); the ONNX model's metadata
holds the same record under the key `mobileshuffle_jax`. Files are written under a
temporary name and renamed, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mobileshuffle_jax import predict, staging
from mobileshuffle_jax.export import graph as graph_lib
from mobileshuffle_jax.export import records

FORMAT = "mobileshuffle_jax.onnx"
OPSET = 17  # ONNX 1.12 (2022): read by every maintained runtime
IR_VERSION = 8  # the IR version of opset 17
METADATA_KEY = "mobileshuffle_jax"


class _Writer:
  """ONNX nodes and initializers for the graph's nodes, one by one."""

  def __init__(self):
    self.nodes: list[onnx.NodeProto] = []
    self.initializers: list[onnx.TensorProto] = []

  def constant(self, name: str, value: np.ndarray) -> str:
    self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
    return name

  def node(self, op_type: str, inputs: list[str], output: str, **attributes) -> str:
    self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attributes))
    return output

  def translate(self, node: graph_lib.Node) -> None:
    a, w, x, name = node.attributes, node.weights, list(node.inputs), node.name
    if node.op == "normalize":
      shape = (1, -1, 1, 1)
      centred = self.node("Sub", [x[0], self.constant(f"{name}_mean",
                                                      a["mean"].reshape(shape))],
                          f"{name}_centred")
      self.node("Div", [centred, self.constant(f"{name}_std", a["std"].reshape(shape))], name)
    elif node.op == "conv":
      kernel = w["kernel"]
      conv = self.node("Conv", [x[0], self.constant(f"{name}_weight", kernel),
                                self.constant(f"{name}_bias", w["bias"])],
                       name if a["activation"] is None else f"{name}_conv",
                       kernel_shape=list(kernel.shape[2:]), strides=[a["stride"]] * 2,
                       pads=list(a["pads"]), group=a["groups"])
      if a["activation"] == "relu":
        self.node("Relu", [conv], name)
      elif a["activation"] == "relu6":
        self.node("Clip", [conv, self.constant(f"{name}_min", np.float32(0.0)),
                           self.constant(f"{name}_max", np.float32(6.0))], name)
    elif node.op in ("max_pool", "avg_pool"):
      window = dict(kernel_shape=[a["kernel"]] * 2, strides=[a["stride"]] * 2,
                    pads=list(a["pads"]))
      if node.op == "max_pool":
        self.node("MaxPool", x, name, **window)
      else:
        self.node("AveragePool", x, name, count_include_pad=int(a["count_include_pad"]),
                  **window)
    elif node.op == "shuffle":
      channels, height, width = node.shape
      groups = a["groups"]
      # [n, g * k, h, w] -> [n, g, k, h, w] -> [n, k, g, h, w] -> [n, k * g, h, w]; 0 keeps n.
      split = self.node("Reshape", [x[0], self.constant(
          f"{name}_groups", np.array([0, groups, channels // groups, height, width]))],
                        f"{name}_grouped")
      swapped = self.node("Transpose", [split], f"{name}_transposed", perm=[0, 2, 1, 3, 4])
      self.node("Reshape", [swapped, self.constant(
          f"{name}_channels", np.array([0, channels, height, width]))], name)
    elif node.op == "add":
      self.node("Add", x, name)
    elif node.op == "concat":
      self.node("Concat", x, name, axis=1)
    elif node.op == "relu":
      self.node("Relu", x, name)
    elif node.op == "global_average_pool":
      pooled = self.node("GlobalAveragePool", x, f"{name}_nchw")
      self.node("Flatten", [pooled], name, axis=1)
    elif node.op == "dense":
      inputs = [x[0], self.constant(f"{name}_weight", w["kernel"])]
      if "bias" in w:
        inputs.append(self.constant(f"{name}_bias", w["bias"]))
      self.node("Gemm", inputs, name, transB=1)
    else:
      raise ValueError(f"no ONNX translation of op {node.op!r}")


def to_model(graph: graph_lib.Graph, *, batch: int | None, record: dict) -> onnx.ModelProto:
  """The ONNX model of `graph`: input `images` [batch (None: symbolic), C, R, R] -> output
  `logits`, checked by `onnx.checker` (with shape inference)."""
  writer = _Writer()
  for node in graph.nodes:
    writer.translate(node)
  batch_dim = "batch" if batch is None else batch
  size = graph.resolution
  onnx_graph = helper.make_graph(
      writer.nodes, "mobileshuffle_jax",
      [helper.make_tensor_value_info(graph_lib.INPUT_NAME, onnx.TensorProto.FLOAT,
                                     [batch_dim, graph.input_channels, size, size])],
      [helper.make_tensor_value_info(graph_lib.OUTPUT_NAME, onnx.TensorProto.FLOAT,
                                     [batch_dim, graph.num_classes])],
      writer.initializers)
  model = helper.make_model(onnx_graph, producer_name="mobileshuffle_jax",
                            opset_imports=[helper.make_opsetid("", OPSET)])
  model.ir_version = IR_VERSION
  helper.set_model_props(model, {METADATA_KEY: json.dumps(record, sort_keys=True)})
  onnx.checker.check_model(model, full_check=True)
  return model


def write_onnx(predictor: predict.Predictor, path: str, *, batch: int | None = None,
               resolution: int | None = None, in_graph_preprocessing: bool = True) -> None:
  """`predictor` as an ONNX file at `path` (and `path + '.json'`); nothing written on
  failure."""
  folded = graph_lib.build(predictor, resolution=resolution,
                           in_graph_preprocessing=in_graph_preprocessing)
  record = dict(
      format=FORMAT, format_version=records.FORMAT_VERSION, **records.model_record(predictor),
      input=records.input_record(predictor, batch=batch, resolution=folded.resolution,
                                 layout="NCHW", in_graph_preprocessing=in_graph_preprocessing),
      output={"name": graph_lib.OUTPUT_NAME, "shape": [batch, predictor.num_classes],
              "dtype": "float32", "values": "logits"},
      opset=OPSET, onnx_version=onnx.__version__)
  model = to_model(folded, batch=batch, record=record)
  with staging.staged_file(path) as model_staging, \
       staging.staged_file(path + records.SIDECAR_SUFFIX) as sidecar_staging:
    with open(sidecar_staging, "w") as f:
      json.dump(record, f, indent=2, sort_keys=True)
    with open(model_staging, "wb") as f:
      f.write(model.SerializeToString())
