"""TFLite (LiteRT) files of a checkpoint: float, dynamic-range or full-integer.

    python -m mobileshuffle_jax.export --workdir DIR --format tflite --out model.tflite \\
        [--quantize none|dynamic|int8] [--calibration-data SPLIT|DIR] [--batch 1] \\
        [--resolution R] [--no-preprocessing]

The inference function (BN with its running statistics, the classifier, and unless
`--no-preprocessing` the checkpoint's input normalization) goes through `jax2tf` (StableHLO
inside a TF function) and TensorFlow's TFLite converter, restricted to TFLite's built-in
ops: the file runs under the stock LiteRT runtime and its XNNPACK delegate, with no Select
TF ops. Every conv is traced in its canonical form (`feature_group_count`), which the
converter maps to CONV_2D (grouped for ShuffleNet's 1x1 convs) and DEPTHWISE_CONV_2D, and
folds each BN into the weights and bias of the conv before it (the converter's constant
folding sees the parameters as constants). Channel shuffle becomes RESHAPE + TRANSPOSE.

Quantization (TFLite's post-training schemes):
- `dynamic`: int8 weights, float activations; no calibration.
- `int8`: int8 weights and activations, per-channel weight scales, activation ranges
  calibrated on `--calibration-images` images (default 256) of `--calibration-data`: a
  split of the checkpoint's own data set (default 'train') or the root of an image folder
  (its train/CLASS/ images), read through `input_pipeline` with evaluation preprocessing
  (centre crop, resize) so calibration sees what inference sees. Input and output stay
  float32 (quantized inside the graph), so the file is a drop-in for the float one.

Beside FILE, `FILE.json` records the model, its fingerprint, the input (shape, values
'RGB 0..255' or the normalization expected), the quantization and the versions; the
checker (`python -m mobileshuffle_jax.export.check`) reads it. Files are written under a
temporary name and renamed, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mobileshuffle_jax import input_pipeline, models, predict, preprocessing, staging
from mobileshuffle_jax.export import graph as graph_lib
from mobileshuffle_jax.export import records

QUANTIZATIONS = ("none", "dynamic", "int8")
DEFAULT_CALIBRATION_DATA = "train"
DEFAULT_CALIBRATION_IMAGES = 256
CALIBRATION_BATCH = 16
FORMAT = "mobileshuffle_jax.tflite"


class ConversionError(ValueError):
  """The model cannot be expressed with TFLite's built-in ops (the converter's reason)."""


@dataclasses.dataclass(frozen=True)
class Options:
  """What `--format tflite` takes (see the module docstring), checked when made: option
  mistakes are refused before any file or checkpoint is read."""

  quantize: str = "none"
  batch: int = 1
  resolution: int | None = None  # None: the checkpoint's image size
  in_graph_preprocessing: bool = True
  calibration_data: str = DEFAULT_CALIBRATION_DATA
  calibration_count: int = DEFAULT_CALIBRATION_IMAGES

  def __post_init__(self):
    if self.quantize not in QUANTIZATIONS:
      raise ValueError(f"--quantize={self.quantize!r} is not supported; allowed values: "
                       f"{', '.join(QUANTIZATIONS)}")
    if self.batch < 1:
      raise ValueError(f"--batch={self.batch} must be positive (TFLite files have a fixed "
                       "batch)")
    graph_lib.check_resolution(self.resolution)
    if self.calibration_count < 1:
      raise ValueError(f"--calibration-images={self.calibration_count} must be positive")


def inference_function(predictor: predict.Predictor, *,
                       in_graph_preprocessing: bool = True) -> Callable:
  """images -> float32 logits with the variables as constants, in the paper's form of the
  model (lowering 'xla': XLA's canonical convs, which the TFLite converter maps to its ops).

  With `in_graph_preprocessing`, images are RGB 0..255 and the checkpoint's normalization is
  part of the function; without, they are already normalized.
  """
  model = models.with_lowering(predictor.model, "xla")
  variables = jax.device_get(predictor.variables)
  normalization = predictor.preprocessing["normalization"]
  if in_graph_preprocessing:
    return lambda images: predict.preprocess_and_apply(model, variables, images, normalization)
  return lambda images: model.apply(variables, images, train=False).astype(jnp.float32)


def convert_function(function: Callable, input_shape: tuple[int, ...], *,
                     quantize: str = "none",
                     representative_images: Callable[[], Iterator[np.ndarray]] | None = None
                     ) -> bytes:
  """A TFLite flatbuffer of `function` (float32 input of `input_shape` -> outputs).

  Raises ConversionError when an op has no built-in TFLite counterpart.
  """
  # Importing input_pipeline (above) has already hidden GPUs from TensorFlow.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  if quantize == "int8" and representative_images is None:
    raise ValueError("--quantize=int8 needs calibration images")
  tf_function = tf.function(
      jax2tf.convert(function, native_serialization_platforms=("cpu",), with_gradient=False),
      input_signature=[tf.TensorSpec(input_shape, tf.float32, name="images")],
      autograph=False)
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [tf_function.get_concrete_function()], tf_function)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if quantize != "none":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == "int8":
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.representative_dataset = lambda: ([images] for images in representative_images())
  try:
    flatbuffer = converter.convert()
  except Exception as error:  # the converter raises its own ConverterError (or others)
    raise ConversionError(
        f"TFLite's converter refused the model with built-in ops only (no Select TF ops): "
        f"{_converter_reason(error)}") from error
  custom = [name for name in op_names(flatbuffer) if not name.isupper() or
            name.startswith("FLEX")]
  if custom:
    raise ConversionError(f"the converted model uses ops outside TFLite's built-ins: {custom}")
  return flatbuffer


def _converter_reason(error: Exception) -> str:
  """What a converter error says failed, without its MLIR locations and module dump."""
  reasons = []
  for line in str(error).splitlines():
    if "error:" in line:
      reasons.append(line.rsplit("error:", 1)[1].strip())
    elif line.startswith(("Custom ops:", "Flex ops:")):
      reasons.append(line.strip())
  unique = list(dict.fromkeys(reason for reason in reasons if reason))
  return "; ".join(unique[:4]) if unique else str(error).splitlines()[0][:300]


def op_names(flatbuffer: bytes) -> list[str]:
  """The names of the ops a TFLite flatbuffer's graph calls, one per call, in order."""
  from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top

  # Without delegates: the ops as written in the file, not XNNPACK's replacement node.
  graph = litert.Interpreter(
      model_content=flatbuffer,
      experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
  return [op["op_name"] for op in graph._get_ops_details()]  # pylint: disable=protected-access


def image_data_config(config: ml_collections.ConfigDict, *, data: str | None,
                      resolution: int) -> ml_collections.ConfigDict:
  """`config.data` reading `data` (a split of its data set, or an image folder root's
  train split) at `resolution` with evaluation preprocessing, via its eval_split."""
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  data_config.image_size = resolution
  if data is not None and os.path.isdir(data):
    data_config.name = "image_folder"
    data_config.image_folder = os.path.abspath(data)
    data_config.eval_split = "train"
  elif data is not None:
    data_config.eval_split = data
  return data_config


def read_images(data_config: ml_collections.ConfigDict, count: int | None, *,
                batch: int = CALIBRATION_BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(RGB 0..255 float32 images, labels) of up to `count` (None: all) examples of
  `data_config.eval_split`, in order, `batch` at a time (the last one may be smaller).

  Raises input_pipeline.DataError (a ValueError) when the data cannot be read.
  """
  input_pipeline.prepare(data_config)
  seen = 0
  for examples in input_pipeline.eval_batches(data_config, global_batch_size=batch):
    real = examples["mask"] > 0
    images = examples["images"][real].astype(np.float32)
    labels = examples["labels"][real]
    if count is not None:
      images, labels = images[:count - seen], labels[:count - seen]
    if len(images):
      yield images, labels
    seen += len(images)
    if count is not None and seen >= count:
      return


def calibration_images(config: ml_collections.ConfigDict, *, data: str, count: int,
                       resolution: int, batch: int, normalization: str | None
                       ) -> Callable[[], Iterator[np.ndarray]]:
  """A generator factory of `count` calibration inputs of shape [batch, R, R, 3] (RGB 0..255,
  or normalized with `normalization`), read and checked once before conversion starts."""
  data_config = image_data_config(config, data=data, resolution=resolution)
  try:
    images = [image for chunk, _ in read_images(data_config, count) for image in chunk]
  except Exception as error:  # ours, tfds' and tf.data's: a bad split spec, folder or file
    raise input_pipeline.DataError(
        f"--calibration-data={data!r} cannot be read (split {data_config.eval_split!r} of "
        f"data set {data_config.name!r}): {error}") from error
  if not images:
    raise input_pipeline.DataError(
        f"--calibration-data={data!r} holds no images (split {data_config.eval_split!r} of "
        f"{data_config.name!r})")
  stacked = np.stack(images)
  if normalization is not None:
    stacked = preprocessing.normalize(stacked, normalization)

  def generate():
    for start in range(0, len(stacked) - batch + 1, batch):
      yield stacked[start:start + batch]

  return generate


def sidecar(predictor: predict.Predictor, *, batch: int, resolution: int, quantize: str,
            in_graph_preprocessing: bool, calibration: dict | None) -> dict:
  """What `FILE.json` records (the checker reads `input` and `model`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return dict(
      format=FORMAT, format_version=records.FORMAT_VERSION, **records.model_record(predictor),
      input=records.input_record(predictor, batch=batch, resolution=resolution, layout="NHWC",
                                 in_graph_preprocessing=in_graph_preprocessing),
      output={"shape": [batch, predictor.num_classes], "dtype": "float32", "values": "logits"},
      quantize=quantize, calibration=calibration, jax_version=jax.__version__,
      tensorflow_version=tf.__version__)


def write_tflite(predictor: predict.Predictor, path: str, options: Options = Options()
                 ) -> None:
  """`predictor` converted to `path` (and `path + '.json'`); nothing written on failure."""

  resolution = options.resolution or predictor.image_size
  normalization = (None if options.in_graph_preprocessing
                   else predictor.preprocessing["normalization"])
  representative, calibration = None, None
  if options.quantize == "int8":
    representative = calibration_images(
        predictor.config, data=options.calibration_data, count=options.calibration_count,
        resolution=resolution, batch=options.batch, normalization=normalization)
    calibration = {"data": options.calibration_data,
                   "images": sum(len(images) for images in representative()),
                   "preprocessing": "evaluation (centre crop, resize)"}
  flatbuffer = convert_function(
      inference_function(predictor, in_graph_preprocessing=options.in_graph_preprocessing),
      (options.batch, resolution, resolution, predictor.model.input_channels),
      quantize=options.quantize, representative_images=representative)
  record = sidecar(predictor, batch=options.batch, resolution=resolution,
                   quantize=options.quantize,
                   in_graph_preprocessing=options.in_graph_preprocessing,
                   calibration=calibration)
  with staging.staged_file(path) as blob_staging, \
       staging.staged_file(path + records.SIDECAR_SUFFIX) as sidecar_staging:
    with open(sidecar_staging, "w") as f:
      json.dump(record, f, indent=2, sort_keys=True)
    with open(blob_staging, "wb") as f:
      f.write(flatbuffer)
