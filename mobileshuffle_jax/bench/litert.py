"""Batch-1 latency of our model exported to TFLite, in the LiteRT interpreter."""

from __future__ import annotations

import tempfile


def measure_litert(spec: dict) -> dict:
  """Batch-1 latency of our model exported to TFLite (float32, random weights) in LiteRT,
  with XNNPACK and 1 and 2 threads."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from mobileshuffle_jax import models
  from mobileshuffle_jax.export import check, tflite

  resolution = spec["resolution"]
  model = models.build(spec["model"], lowering="xla", **spec["options"])
  variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, resolution,
                                                                      resolution, 3))))
  flatbuffer = tflite.convert_function(
      lambda images: model.apply(variables, images, train=False), (1, resolution, resolution, 3))
  images = np.random.default_rng(0).standard_normal((1, resolution, resolution, 3))
  with tempfile.NamedTemporaryFile(suffix=".tflite") as file:
    file.write(flatbuffer)
    file.flush()
    latency = {str(threads): check.latency_ms(check.interpreter(file.name, threads),
                                              images.astype(np.float32), spec["repeats"])
               for threads in (1, 2)}
  return {"framework": "litert", "latency_ms_by_threads": latency,
          "size_bytes": len(flatbuffer)}
