"""What every export records beside the model: the format version, the sidecar's name
and the model record (what identifies the model and says how to feed it)."""

from __future__ import annotations

from typing import Any

from mobileshuffle_jax import predict, safetensors_io

FORMAT_VERSION = safetensors_io.FORMAT_VERSION
# `FILE + SIDECAR_SUFFIX` describes a jax or tflite export FILE.
SIDECAR_SUFFIX = ".json"


def model_record(predictor: predict.Predictor) -> dict[str, Any]:
  """What identifies the exported model and says how to feed it."""
  return {"model": predictor.config.model,
          "model_options": {**predictor.config.model_options.to_dict(),
                            "num_classes": predictor.num_classes},
          "preprocessing": predictor.preprocessing,
          "params_sha256": predictor.params_sha256, "step": predictor.step,
          "class_names": list(predictor.class_names)}


# An export's input layouts: where the batch, channel and spatial axes are.
LAYOUTS = ("NHWC", "NCHW", "CHW")


def input_record(predictor: predict.Predictor, *, batch: int | None, resolution: int,
                 layout: str, in_graph_preprocessing: bool) -> dict[str, Any]:
  """What an export's input takes: its shape in `layout` (batch None: any; CHW: one image
  at a time) and its values, RGB 0..255 or already normalized."""
  channels = predictor.model.input_channels
  shape = {"NHWC": [batch, resolution, resolution, channels],
           "NCHW": [batch, channels, resolution, resolution],
           "CHW": [channels, resolution, resolution]}[layout]
  normalization = predictor.preprocessing["normalization"]
  return {"shape": shape, "layout": layout, "resolution": resolution, "dtype": "float32",
          "values": "RGB 0..255" if in_graph_preprocessing else f"normalized ({normalization})",
          "in_graph_preprocessing": in_graph_preprocessing}
