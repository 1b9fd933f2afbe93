"""ONNX and ncnn exports: logits equal to `predict`'s in ONNX Runtime and in ncnn's Python
runtime, each BN folded into its conv, grouped and depthwise convs as grouped convs, the
shuffle as Reshape + Transpose (ONNX) or ShuffleChannel (ncnn); the export and check
commands end to end; refusals write nothing.

Parity runs 32 px models with random BN statistics in the layouts the converters produce
(Keras' MobileNet: ReLU6, SAME padding; the authors' ShuffleNet: symmetric padding, pooled
shortcut first, inverse shuffle, no classifier bias, no normalization) and in the paper's.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mobileshuffle_jax import models, predict
from mobileshuffle_jax.export import __main__ as export_cli
from mobileshuffle_jax.export import check as check_cli
from mobileshuffle_jax.export import graph, ncnn_export, onnx_export
from tests.test_export_tflite import randomized_batch_stats, tree_listing

pytest.importorskip("onnxruntime")
pytest.importorskip("ncnn")

RESOLUTION = 32
NUM_CLASSES = 10
TOLERANCE = 1e-4  # max |export - predict| / max |predict| over the logits
KERAS_MOBILENET = dict(activation="relu6", padding="same", bn_epsilon=1e-3, min_depth=1)
AUTHORS_SHUFFLENET = dict(padding="symmetric", bn_epsilon=1e-5, concat_order="shortcut_first",
                          shuffle_order="inverse", classifier_bias=False)
CASES = {
    "mobilenet-keras": ("mobilenet_v1", dict(alpha=0.25, **KERAS_MOBILENET), "minus_one_one"),
    "mobilenet-paper-full": ("mobilenet_v1", dict(alpha=0.25, variant="full"), "imagenet"),
    "shufflenet-authors-g3": ("shufflenet_v1", dict(groups=3, scale=0.5, **AUTHORS_SHUFFLENET),
                              "none"),
    "shufflenet-paper-g8": ("shufflenet_v1", dict(groups=8, scale=0.25), "imagenet"),
    "shufflenet-no-shuffle": ("shufflenet_v1", dict(groups=3, scale=0.25, shuffle=False),
                              "imagenet"),
}


def random_variables(model, seed: int):
  """Variables of `model` drawn with numpy: He-scaled conv kernels, a small classifier, and
  BN parameters and statistics away from their initial values. (`model.init` compiles the
  random initializers of every layer: tens of seconds on a loaded 2-core machine.)"""
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, RESOLUTION, RESOLUTION, 3)))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if jax.tree_util.keystr(path).endswith("['kernel']"):
      fan_out = np.prod(leaf.shape[:-2]) * leaf.shape[-1] if leaf.ndim == 4 else 1e4
      return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_out)).astype(np.float32)
    return np.zeros(leaf.shape, np.float32)

  return randomized_batch_stats(jax.tree_util.tree_map_with_path(draw, shapes), seed + 1)


def random_predictor(name: str, options: dict, normalization: str) -> predict.Predictor:
  model = models.build(name, num_classes=NUM_CLASSES, **options)
  return predict.Predictor(
      model=model, variables=random_variables(model, seed=1),
      preprocessing={"image_size": RESOLUTION, "normalization": normalization,
                     "eval_crop_ratio": 1.0, "channel_order": "RGB"},
      config=ml_collections.ConfigDict(), params_sha256="", step=0)


def conv_kinds(model) -> dict[str, int]:
  """How many depthwise, grouped (1 < g < C) and dense convs `model` has: the channels each
  conv reads (traced) against its kernel's (kh, kw, in // g, out)."""
  read = {}

  def record_channels(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
      read[context.module.path] = args[0].shape[-1]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record_channels):
    params = jax.eval_shape(models.with_lowering(model, "xla").init, jax.random.key(0),
                            jnp.zeros((1, RESOLUTION, RESOLUTION, 3)))["params"]
  kinds = {"depthwise": 0, "grouped": 0, "dense": 0}
  for path, channels in read.items():
    kernel = params
    for key in path:
      kernel = kernel[key]
    groups = channels // kernel["kernel"].shape[2]
    kinds["dense" if groups == 1 else "depthwise" if groups == channels else "grouped"] += 1
  return kinds


def shuffles(model) -> int:
  return (len(model.unit_specs()) if isinstance(model, models.ShuffleNetV1) and model.shuffle
          else 0)


@pytest.mark.parametrize("case", list(CASES))
def test_exports_match_predict_with_folded_bn_grouped_convs_and_shuffle(case, tmp_path):
  name, options, normalization = CASES[case]
  predictor = random_predictor(name, options, normalization)
  folded = graph.build(predictor)
  images = np.random.default_rng(2).uniform(0, 255, (2, RESOLUTION, RESOLUTION, 3))
  images = images.astype(np.float32)
  expected = np.asarray(predictor.predict(images))
  kinds = conv_kinds(predictor.model)
  residual_adds = 13 if name == "shufflenet_v1" else 0

  onnx_path = str(tmp_path / "model.onnx")
  model = onnx_export.to_model(folded, batch=None, record={})
  with open(onnx_path, "wb") as f:
    f.write(model.SerializeToString())
  nodes = model.graph.node
  ops = [node.op_type for node in nodes]
  weights = {tensor.name: tensor.dims for tensor in model.graph.initializer}
  conv_groups = []
  for node in nodes:
    if node.op_type == "Conv":
      group = next(a.i for a in node.attribute if a.name == "group")
      out_channels, in_per_group = weights[node.input[1]][:2]
      conv_groups.append("dense" if group == 1 else
                         "depthwise" if group == out_channels and in_per_group == 1 else
                         "grouped")
  assert {kind: conv_groups.count(kind) for kind in kinds} == kinds
  assert "BatchNormalization" not in ops and "Mul" not in ops, ops
  assert ops.count("Add") == residual_adds, ops
  assert ops.count("Transpose") == shuffles(predictor.model), ops
  assert ops.count("Reshape") == 2 * shuffles(predictor.model), ops
  assert ops[:2] == ["Sub", "Div"]
  onnx_logits = check_cli.OnnxRuntime(onnx_path, {"input": {"shape": [None]}}, 1)(images)
  assert np.max(np.abs(onnx_logits - expected)) <= TOLERANCE * np.max(np.abs(expected))

  param_path = str(tmp_path / "model.param")
  param, bin_data = ncnn_export.to_ncnn(folded)
  with open(param_path, "w") as f:
    f.write(param)
  with open(ncnn_export.bin_path(param_path), "wb") as f:
    f.write(bin_data)
  layers = [line.split() for line in param.splitlines()[2:]]
  types = [layer[0] for layer in layers]
  grouped = [dict(p.split("=") for p in layer[4 + int(layer[2]) + int(layer[3]):])
             for layer in layers if layer[0] == "ConvolutionDepthWise"]
  assert types.count("Convolution") == kinds["dense"]
  assert sum(g["0"] == g["7"] for g in grouped) == kinds["depthwise"]
  assert sum(g["0"] != g["7"] for g in grouped) == kinds["grouped"]
  assert types.count("ShuffleChannel") == shuffles(predictor.model)
  assert types.count("BinaryOp") == residual_adds and "BatchNorm" not in types
  runtime = check_cli.Ncnn(param_path, 1, weights=ncnn_export.bin_path(param_path),
                           input_blob="images", output_blob="logits",
                           input_shape=(3, RESOLUTION, RESOLUTION))
  ncnn_logits = runtime(images)
  assert np.max(np.abs(ncnn_logits - expected)) <= TOLERANCE * np.max(np.abs(expected))


def test_without_preprocessing_the_graphs_take_normalized_images(tmp_path):
  predictor = random_predictor("shufflenet_v1", dict(groups=3, scale=0.25), "minus_one_one")
  folded = graph.build(predictor, in_graph_preprocessing=False)
  assert folded.nodes[0].op == "conv"
  model = onnx_export.to_model(folded, batch=1, record={})
  assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
  images = np.random.default_rng(3).uniform(0, 255, (1, RESOLUTION, RESOLUTION, 3))
  images = images.astype(np.float32)
  expected = np.asarray(predictor.predict(images))
  path = str(tmp_path / "model.onnx")
  with open(path, "wb") as f:
    f.write(model.SerializeToString())
  got = check_cli.OnnxRuntime(path, {"input": {"shape": [1]}}, 1)(images / 127.5 - 1.0)
  assert np.max(np.abs(got - expected)) <= TOLERANCE * np.max(np.abs(expected))
  assert "Scale" not in ncnn_export.to_ncnn(folded)[0]


def test_export_and_check_commands(trained_workdir, tmp_path, capsys):
  onnx_path, param_path = str(tmp_path / "digits.onnx"), str(tmp_path / "digits.param")
  export_cli.main(["--workdir", trained_workdir, "--out", onnx_path, "--format", "onnx",
                   "--batch", "3"])
  export_cli.main(["--workdir", trained_workdir, "--out", param_path, "--format", "ncnn"])
  assert "digits.bin" in capsys.readouterr().out
  assert tree_listing(tmp_path) == ["digits.bin", "digits.onnx", "digits.onnx.json",
                                    "digits.param", "digits.param.json"]
  # Our own .param stands in for ncnn's benchmark models (zero weights, as they are run).
  result = check_cli.check_all([onnx_path, param_path], trained_workdir, max_examples=20,
                               benchmark_params=(param_path,), threads=(1, 2), repeats=2)
  for exported in result["exports"]:
    assert exported["examples"] == 20
    assert exported["max_relative_logit_difference"] <= TOLERANCE
    assert exported["top1_agreement"] == 1.0
    assert set(exported["latency_ms_by_threads"]) == {"1", "2"}
  onnx_result, ncnn_result = result["exports"]
  assert onnx_result["runtime"] == "ONNX Runtime" and onnx_result["input_shape"] == [3, 3, 32, 32]
  assert ncnn_result["runtime"] == "ncnn" and ncnn_result["input_shape"] == [3, 32, 32]
  assert ncnn_result["size_bytes"] == (os.path.getsize(param_path)
                                       + os.path.getsize(str(tmp_path / "digits.bin")))
  assert min(result["ncnn_benchmark_models"][0]["latency_ms_by_threads"].values()) > 0

  check_cli.main([param_path, "--workdir", trained_workdir, "--max-examples", "5",
                  "--threads", "1", "--repeats", "2", "--ncnn-benchmark", param_path])
  report = capsys.readouterr().out
  assert "5 images of split" in report and "ncnn's benchmark model, zero weights" in report


@pytest.mark.parametrize("case,format_and_out,extra,message", [
    ("quantize_onnx", ("onnx", "m.onnx"), ["--quantize", "int8"],
     "quantize: options of --format tflite only"),
    ("batch_ncnn", ("ncnn", "m.param"), ["--batch", "1"], "ncnn runs one image at a time"),
    ("ncnn_out", ("ncnn", "m.bin"), [], "--out must end in .param"),
    ("resolution", ("onnx", "m.onnx"), ["--resolution", "16"],
     "--resolution=16 must be at least 32"),
    ("resolution_jax", ("jax", "m.jax"), ["--resolution", "64"],
     "resolution: options of --format tflite, onnx, ncnn only"),
    ("bin_exists", ("ncnn", "m.param"), [], "m.bin exists"),
])
def test_refusals_come_first_and_write_nothing(tmp_path, case, format_and_out, extra, message):
  file_format, out = format_and_out
  out_dir = tmp_path / "out"
  out_dir.mkdir()
  if case == "bin_exists":
    (out_dir / "m.bin").write_bytes(b"mine")
  before = tree_listing(out_dir)
  # A workdir that does not exist: each refusal comes before the checkpoint is read.
  with pytest.raises(SystemExit, match=message):
    export_cli.main(["--workdir", str(tmp_path / "nowhere"), "--out", str(out_dir / out),
                     "--format", file_format, *extra])
  assert tree_listing(out_dir) == before
