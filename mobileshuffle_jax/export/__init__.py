r"""Portable files of one checkpoint, for sharing and serving.

    python -m mobileshuffle_jax.export --workdir DIR --out FILE
        [--format safetensors|jax|tflite|onnx|ncnn] [--step N] [--batch B]

`tflite`: a LiteRT flatbuffer for phones, float or quantized; see
`mobileshuffle_jax.export.tflite`. `onnx`: an ONNX file (ONNX Runtime, TensorRT, OpenVINO);
see `mobileshuffle_jax.export.onnx_export`. `ncnn`: ncnn's `FILE.param` and `FILE.bin`; see
`mobileshuffle_jax.export.ncnn_export`. The checker, `python -m mobileshuffle_jax.export.check`,
runs any of these three in its own runtime beside the JAX model.

`safetensors` (default): one file with every evaluation variable, named by its path
('params/stem/conv/kernel', 'batch_stats/stem/bn/mean', ...), and in its string metadata
`format`, `format_version`, `model`, `model_options` (JSON), `preprocessing` (JSON),
`params_sha256`, `step` and the run's `config` (JSON). `mobileshuffle_jax.load(FILE)`
reads it back bit for bit; any safetensors reader (PyTorch, numpy, ...) reads the tensors.

`jax`: a serialized `jax.export` inference function, images -> logits, with the
preprocessing inside and the parameters baked in as constants, lowered for CPU, CUDA and
TPU. It needs only `jax` to run, not this package:

    import jax, numpy as np
    with open("mobilenet.jax", "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    logits = exported.call(images.astype(np.float32))  # RGB 0..255, [b, 224, 224, 3]

The batch dimension is symbolic (any batch) unless `--batch` fixes it. Beside FILE,
`FILE.json` records the model, `params_sha256`, the input shape and the preprocessing a
caller must still do (`eval_crop_ratio`: the centre crop resized to `image_size`). The
function runs under the jax release that wrote it and under newer ones within jax.export's
backward-compatibility window; the model is computed the way the 'auto' lowering
(`mobileshuffle_jax.fast`) prefers for the platform that runs it, decided there.

Every file is written under a temporary name beside it and renamed at the end, so a
failure leaves no partial file; an existing FILE (or FILE.json, or ncnn's FILE.bin) is
refused, and so is an option the format cannot express, before anything is read or written.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from mobileshuffle_jax import models, predict, safetensors_io, staging
from mobileshuffle_jax.export.records import FORMAT_VERSION, SIDECAR_SUFFIX, model_record

FORMATS = ("safetensors", "jax", "tflite", "onnx", "ncnn")
# The formats whose files have a batch dimension that --batch fixes (ncnn runs one image).
BATCH_FORMATS = ("jax", "tflite", "onnx")
# The options (fields of `tflite.Options`, or keywords of the onnx and ncnn writers) that
# each format takes besides --batch.
FORMAT_OPTIONS = {
    "tflite": ("quantize", "calibration_data", "calibration_count", "resolution",
               "in_graph_preprocessing"),
    "onnx": ("resolution", "in_graph_preprocessing"),
    "ncnn": ("resolution", "in_graph_preprocessing"),
}
JAX_FORMAT = "mobileshuffle_jax.jax_export"
# Platforms a `--format jax` function is lowered for; it runs on any of them.
JAX_PLATFORMS = ("cpu", "cuda", "tpu")
# jax.export's platform names -> the backend names `models.resolve_lowering` takes.
BACKEND_OF_PLATFORM = {"cpu": "cpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}


def output_paths(out: str, file_format: str) -> list[str]:
  """The files an export to `out` writes."""
  if file_format == "ncnn":
    from mobileshuffle_jax.export import ncnn_export  # pylint: disable=g-import-not-at-top
    return ncnn_export.output_paths(out)
  return [out] if file_format == "safetensors" else [out, out + SIDECAR_SUFFIX]


def check_options(file_format: str, batch: int | None, format_options: dict) -> None:
  """Refuse, naming it, an option that `file_format` cannot express."""
  if file_format not in FORMATS:
    raise ValueError(f"format={file_format!r} is not supported; allowed values: "
                     f"{', '.join(repr(f) for f in FORMATS)}")
  if batch is not None and file_format not in BATCH_FORMATS:
    reason = " (ncnn runs one image at a time)" if file_format == "ncnn" else ""
    raise ValueError(f"--batch fixes the batch size of a --format "
                     f"{', '.join(BATCH_FORMATS[:-1])} or {BATCH_FORMATS[-1]} export "
                     f"only{reason}")
  if batch is not None and batch <= 0:
    raise ValueError(f"--batch={batch} must be positive")
  foreign = sorted(set(format_options) - set(FORMAT_OPTIONS.get(file_format, ())))
  if foreign:
    raise ValueError("; ".join(
        f"{name}: options of --format "
        f"{', '.join(f for f, names in FORMAT_OPTIONS.items() if name in names)} only"
        for name in foreign))


def export_checkpoint(workdir: str, out: str, *, file_format: str = "safetensors",
                      step: int | None = None, batch: int | None = None,
                      **format_options) -> predict.Predictor:
  """Export `step` (default: the latest) of `workdir` to `out` (see `output_paths`); the
  predictor exported.

  `workdir`: anything `mobileshuffle_jax.load` reads. `batch` fixes the batch dimension of
  a `jax` or `onnx` export (default: any) or of a `tflite` one (default 1).
  `format_options`: those of `FORMAT_OPTIONS[file_format]` (for tflite, the other fields of
  `tflite.Options`). Every refusal is a ValueError; those of the options come before the
  checkpoint is read, and nothing is written unless all succeeds.
  """
  check_options(file_format, batch, format_options)
  if file_format == "tflite":
    from mobileshuffle_jax.export import tflite  # pylint: disable=g-import-not-at-top
    options = tflite.Options(batch=batch or 1, **format_options)
  elif file_format in ("onnx", "ncnn"):
    from mobileshuffle_jax.export import graph  # pylint: disable=g-import-not-at-top
    graph.check_resolution(format_options.get("resolution"))
  if file_format == "ncnn":
    from mobileshuffle_jax.export import ncnn_export  # pylint: disable=g-import-not-at-top
    ncnn_export.check_out(out)
  existing = [path for path in output_paths(out, file_format) if os.path.lexists(path)]
  if existing:
    raise ValueError(f"{existing[0]} exists; choose a new --out (nothing was written)")
  directory = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(directory):
    raise ValueError(f"the directory of --out, {directory}, does not exist")
  predictor = predict.load(workdir, step=step)
  if file_format == "safetensors":
    write_safetensors(predictor, out)
  elif file_format == "jax":
    write_jax(predictor, out, batch=batch)
  elif file_format == "tflite":
    tflite.write_tflite(predictor, out, options)
  elif file_format == "onnx":
    from mobileshuffle_jax.export import onnx_export  # pylint: disable=g-import-not-at-top
    onnx_export.write_onnx(predictor, out, batch=batch, **format_options)
  else:
    ncnn_export.write_ncnn(predictor, out, **format_options)
  return predictor


# safetensors ------------------------------------------------------------------------------

def write_safetensors(predictor: predict.Predictor, path: str) -> None:
  """Every variable of `predictor`, flattened by path, with the metadata to rebuild it."""
  safetensors_io.write(path, jax.device_get(predictor.variables),
                       dict(model_record(predictor), config=predictor.config.to_dict()))


# jax.export -------------------------------------------------------------------------------

def decided_by_platform(predictor: predict.Predictor, variables, normalization: str):
  """images -> logits of `predictor`'s model, with the 'auto' lowering chosen by the platform
  that runs the exported function rather than by the one that exports it."""
  def branch(backend: str):
    model = models.with_lowering(predictor.model, models.resolve_lowering("auto", backend))
    return lambda images: predict.preprocess_and_apply(model, variables, images, normalization)

  return lambda images: lax.platform_dependent(
      images, **{platform: branch(backend) for platform, backend in BACKEND_OF_PLATFORM.items()})


def inference_function(predictor: predict.Predictor, *, batch: int | None = None,
                       platforms: Sequence[str] = JAX_PLATFORMS) -> jax.export.Exported:
  """`predictor.predict` as a `jax.export.Exported`: float32 RGB 0..255 images [batch (or
  symbolic), size, size, 3] -> float32 logits, its variables constants."""
  logits = decided_by_platform(predictor, jax.device_get(predictor.variables),
                               predictor.preprocessing["normalization"])
  size = predictor.image_size
  shape = jax.export.symbolic_shape(
      f"{'b' if batch is None else batch}, {size}, {size}, {predictor.model.input_channels}")
  return jax.export.export(jax.jit(logits), platforms=platforms)(
      jax.ShapeDtypeStruct(shape, jnp.float32))


def write_jax(predictor: predict.Predictor, path: str, *, batch: int | None = None,
              platforms: Sequence[str] = JAX_PLATFORMS) -> None:
  """`inference_function` serialized to `path`, described by `path + '.json'`."""
  exported = inference_function(predictor, batch=batch, platforms=platforms)
  size = predictor.image_size
  sidecar = dict(
      format=JAX_FORMAT, format_version=FORMAT_VERSION, **model_record(predictor),
      input={"shape": [batch, size, size, predictor.model.input_channels],
             "dtype": "float32", "values": "RGB 0..255", "batch": "any" if batch is None
             else "fixed"},
      output={"shape": [batch, predictor.num_classes], "dtype": "float32", "values": "logits"},
      platforms=list(exported.platforms), jax_version=jax.__version__,
      run="jax.export.deserialize(bytearray(open(FILE, 'rb').read())).call(images)")
  with staging.staged_file(path) as blob_staging, \
       staging.staged_file(path + SIDECAR_SUFFIX) as sidecar_staging:
    with open(sidecar_staging, "w") as f:
      json.dump(sidecar, f, indent=2, sort_keys=True)
    with open(blob_staging, "wb") as f:
      f.write(exported.serialize())
