"""TFLite export: built-in ops only, BN folded, logits equal to JAX's; int8 and dynamic
quantization of a trained model keep its accuracy; the checker; refusals write nothing.

Float parity runs every MobileNet alpha and every ShuffleNet scale (g = 3 and 8) at 32 px
with random BN statistics, in the stock LiteRT interpreter (XNNPACK). The quantized exports
use a 0.25 MobileNet trained for a few hundred steps on digits.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from mobileshuffle_jax import models, predict, training
from mobileshuffle_jax.export import __main__ as export_cli
from mobileshuffle_jax.export import check as check_cli
from mobileshuffle_jax.export import tflite

pytest.importorskip("ai_edge_litert")

RESOLUTION = 32
NUM_CLASSES = 10
TOLERANCE = 1e-4  # max |tflite - jax| / max |jax| over the logits


def randomized_batch_stats(variables, seed: int):
  """BN parameters and statistics away from their initial values, so folding them matters."""
  rng = np.random.default_rng(seed)

  def perturb(path, value):
    leaf = jax.tree_util.keystr(path)
    shape = np.shape(value)
    if leaf.endswith("['mean']") or leaf.endswith("['bias']"):
      return rng.normal(0.0, 0.2, shape).astype(np.float32)
    if leaf.endswith("['var']") or leaf.endswith("['scale']"):
      return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return np.asarray(value)

  return jax.tree_util.tree_map_with_path(perturb, jax.device_get(variables))


def random_predictor(name: str, **options) -> predict.Predictor:
  model = models.build(name, num_classes=NUM_CLASSES, **options)
  variables = model.init(jax.random.key(0), jnp.zeros((1, RESOLUTION, RESOLUTION, 3)))
  return predict.Predictor(
      model=model, variables=randomized_batch_stats(variables, seed=1),
      preprocessing={"image_size": RESOLUTION, "normalization": "minus_one_one",
                     "eval_crop_ratio": 1.0, "channel_order": "RGB"},
      config=ml_collections.ConfigDict(), params_sha256="", step=0)


def run_tflite(flatbuffer: bytes, images: np.ndarray) -> np.ndarray:
  from ai_edge_litert import interpreter as litert
  runner = litert.Interpreter(model_content=flatbuffer)
  runner.allocate_tensors()
  return check_cli.invoke(runner, images)


def count_convs(model, resolution: int) -> dict[str, int]:
  """How many depthwise and other convs `model` has (from its parameter shapes)."""
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, resolution, resolution, 3)))["params"]
  kernels = [leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)
             if jax.tree_util.keystr(path).endswith("['conv']['kernel']")]
  depthwise = sum(1 for shape in kernels if shape[2] == 1 and shape[0] == 3)
  return {"DEPTHWISE_CONV_2D": depthwise, "CONV_2D": len(kernels) - depthwise}


@pytest.mark.parametrize("name,options", [
    *[("mobilenet_v1", {"alpha": alpha}) for alpha in (1.0, 0.75, 0.5, 0.25)],
    *[("shufflenet_v1", {"groups": groups, "scale": scale})
      for groups in (3, 8) for scale in (0.25, 0.5, 1.0, 1.5, 2.0)],
], ids=lambda value: value if isinstance(value, str) else
       "-".join(f"{k}{v}" for k, v in value.items()))
def test_float_export_matches_jax_with_builtin_ops_and_folded_bn(name, options):
  predictor = random_predictor(name, **options)
  flatbuffer = tflite.convert_function(
      tflite.inference_function(predictor), (2, RESOLUTION, RESOLUTION, 3))
  ops = tflite.op_names(flatbuffer)
  assert all(op.isupper() and not op.startswith("FLEX") for op in ops), ops
  for kind, count in count_convs(predictor.model, RESOLUTION).items():
    assert ops.count(kind) == count, (kind, ops)
  # BN folded into the convs (the converter folds even the input normalization's scale
  # into the stem): no multiply left, and the only adds are ShuffleNet's 13 residual adds.
  assert "MUL" not in ops, ops
  assert ops.count("ADD") == (13 if name == "shufflenet_v1" else 0), ops

  images = np.random.default_rng(2).uniform(0, 255, (2, RESOLUTION, RESOLUTION, 3))
  images = images.astype(np.float32)
  expected = np.asarray(predictor.predict(images))
  difference = np.max(np.abs(run_tflite(flatbuffer, images) - expected))
  assert difference <= TOLERANCE * np.max(np.abs(expected)), difference


def test_without_preprocessing_the_graph_takes_normalized_images():
  predictor = random_predictor("shufflenet_v1", groups=3, scale=0.5)
  flatbuffer = tflite.convert_function(
      tflite.inference_function(predictor, in_graph_preprocessing=False),
      (1, RESOLUTION, RESOLUTION, 3))
  assert "SUB" not in tflite.op_names(flatbuffer)
  images = np.random.default_rng(3).uniform(0, 255, (1, RESOLUTION, RESOLUTION, 3))
  images = images.astype(np.float32)
  expected = np.asarray(predictor.predict(images))
  got = run_tflite(flatbuffer, images / 127.5 - 1.0)
  assert np.max(np.abs(got - expected)) <= TOLERANCE * np.max(np.abs(expected))


def test_an_op_without_a_builtin_is_refused_with_its_reason():
  def cholesky(images):
    matrix = images[0, :, :, 0]
    return jnp.linalg.cholesky(matrix @ matrix.T + jnp.eye(matrix.shape[0]))

  with pytest.raises(tflite.ConversionError, match="built-in ops only.*XlaCallModule"):
    tflite.convert_function(cholesky, (1, 8, 8, 3))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 0.25 MobileNet trained on digits for a few hundred steps: (workdir, eval top-1)."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  config = default.get_config()
  config.model_options.alpha = 0.25
  config.num_train_steps = 300
  config.eval_every_steps = 300
  config.checkpoint_every_steps = 300
  config.log_every_steps = 100
  config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  metrics = training.train_and_evaluate(config, workdir)
  return workdir, metrics


def export_and_check(workdir, out, *extra):
  export_cli.main(["--workdir", workdir, "--out", out, "--format", "tflite", *extra])
  return check_cli.check(out, workdir, threads=(1,), repeats=3)


def test_int8_and_dynamic_exports_keep_accuracy(trained, tmp_path, capsys):
  workdir, _ = trained
  results = {}
  for quantize in ("none", "dynamic", "int8"):
    out = str(tmp_path / f"{quantize}.tflite")
    extra = ["--quantize", quantize]
    if quantize == "int8":
      extra += ["--calibration-data", "train[:200]", "--calibration-images", "200"]
    results[quantize] = export_and_check(workdir, out, *extra)
  print({q: (r["top1_export"], r["top1_jax"], r["top1_agreement"], r["size_bytes"])
         for q, r in results.items()})
  float_result = results["none"]
  assert float_result["examples"] == 360  # the whole digits eval split, each once
  assert float_result["top1_jax"] > 0.8  # a trained model, or accuracy would say nothing
  assert float_result["top1_agreement"] == 1.0
  assert float_result["max_relative_logit_difference"] <= TOLERANCE
  for quantize in ("dynamic", "int8"):
    # Quantization loses at most 1 point of top-1. On 360 images it may as well gain one by
    # chance (a few images either way), so the bound is one-sided; agreement with the JAX
    # model bounds how far its predictions move at all.
    assert float_result["top1_export"] - results[quantize]["top1_export"] <= 0.01
    assert results[quantize]["top1_agreement"] >= 0.97
    assert results[quantize]["size_bytes"] < 0.4 * float_result["size_bytes"]
  assert tflite.op_names(open(tmp_path / "int8.tflite", "rb").read()).count("CONV_2D") == 14
  with open(tmp_path / "int8.tflite.json") as f:
    record = json.load(f)
  assert record["quantize"] == "int8" and record["calibration"]["images"] == 200
  assert record["input"]["shape"] == [1, 32, 32, 3]

  check_cli.main([str(tmp_path / "int8.tflite"), "--workdir", workdir, "--max-examples", "20",
                  "--threads", "1,2", "--repeats", "2"])
  report = capsys.readouterr().out
  assert "20 images of split" in report and "ms with 2 threads" in report


def tree_listing(directory) -> list[str]:
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, _, names in os.walk(directory) for name in names)


@pytest.mark.parametrize("case,extra,message", [
    ("bad_quantize", ["--quantize", "int4"], "--quantize='int4' is not supported"),
    ("bad_resolution", ["--resolution", "16"], "--resolution=16 must be at least 32"),
    ("option_of_tflite", ["--format", "jax", "--quantize", "int8"],
     "quantize: options of --format tflite only"),
    ("missing_split", ["--quantize", "int8", "--calibration-data", "nosuchsplit"],
     "--calibration-data='nosuchsplit' cannot be read .*no split nosuchsplit"),
    ("empty_folder", ["--quantize", "int8", "--calibration-data", "{empty}"],
     "--calibration-data=.* cannot be read .*holds no class directories"),
    ("no_checkpoint", [], "holds no checkpoint"),
])
def test_refusals_write_nothing(trained, tmp_path, case, extra, message):
  workdir = trained[0]
  out_dir = tmp_path / "out"
  out_dir.mkdir()
  if case == "empty_folder":
    (tmp_path / "empty" / "train").mkdir(parents=True)
    extra = [arg.format(empty=tmp_path / "empty") for arg in extra]
  if case == "no_checkpoint":
    workdir = str(tmp_path / "config_only")
    os.mkdir(workdir)
    with open(os.path.join(trained[0], "config.json")) as src, \
        open(os.path.join(workdir, "config.json"), "w") as dst:
      dst.write(src.read())
  args = ["--workdir", workdir, "--out", str(out_dir / "model.tflite")]
  if "--format" not in extra:
    args += ["--format", "tflite"]
  with pytest.raises(SystemExit, match=message):
    export_cli.main(args + extra)
  assert tree_listing(out_dir) == []
