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
