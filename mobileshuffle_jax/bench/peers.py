"""The peers: pytorchcv's model of the same configuration, and Keras 3's MobileNet."""

from __future__ import annotations

import functools
import os

from mobileshuffle_jax.bench import figures
from mobileshuffle_jax.timing import measure

# pytorchcv's names for the widths it provides.
PYTORCHCV_WIDTHS = {1.0: "w1", 0.75: "w3d4", 0.5: "wd2", 0.25: "wd4"}
PYTORCHCV_SHUFFLENETS = frozenset(
    {"g1_w1", "g2_w1", "g3_w1", "g4_w1", "g8_w1", "g1_w3d4", "g3_w3d4", "g1_wd2", "g3_wd2",
     "g1_wd4", "g3_wd4"})


def pytorchcv_name(model: str, options: dict) -> str:
  """The pytorchcv model with our `options`; ValueError where pytorchcv has none."""
  if model == "mobilenet_v1":
    width = PYTORCHCV_WIDTHS.get(options["alpha"])
    if width is None:
      raise ValueError(f"pytorchcv has no MobileNet of alpha={options['alpha']}; it has "
                       f"{', '.join(map(str, PYTORCHCV_WIDTHS))}")
    return f"mobilenet_{width}"
  suffix = f"g{options['groups']}_{PYTORCHCV_WIDTHS.get(options['scale'], '?')}"
  if suffix not in PYTORCHCV_SHUFFLENETS:
    raise ValueError(f"pytorchcv has no ShuffleNet with groups={options['groups']}, "
                     f"scale={options['scale']}; it has "
                     f"{', '.join(sorted(PYTORCHCV_SHUFFLENETS))}")
  return f"shufflenet_{suffix}"


def measure_pytorch(spec: dict) -> dict:
  """pytorchcv's model of the same configuration, with torch's default threads.

  On CPU: float32, NCHW, eager. On a CUDA device: channels_last, bfloat16 autocast when our
  `dtype` is bfloat16, and `torch.compile` when `spec['compile']`: PyTorch at its best there.
  """
  import contextlib

  import torch
  from pytorchcv.models import mobilenet, shufflenet

  name = pytorchcv_name(spec["model"], spec["options"])
  model = getattr(mobilenet if spec["model"] == "mobilenet_v1" else shufflenet, name)()
  # pytorchcv's final pool has a fixed 7x7 window (224 px); a global pool equals it there
  # and lets other resolutions run.
  model.features.final_pool = torch.nn.AdaptiveAvgPool2d(1)
  batch, resolution, repeats = spec["batch"], spec["resolution"], spec["repeats"]
  generator = torch.Generator().manual_seed(0)
  images = torch.randn(batch, 3, resolution, resolution, generator=generator)
  labels = torch.randint(0, 1000, (batch,), generator=generator)
  cuda = torch.cuda.is_available()
  if cuda:
    model = model.to("cuda", memory_format=torch.channels_last)
    images = images.to("cuda", memory_format=torch.channels_last)
    labels = labels.to("cuda")
  precision = contextlib.nullcontext
  if cuda and spec.get("dtype") == "bfloat16":
    precision = functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
  forward = torch.compile(model) if spec.get("compile") else model
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  loss_fn = torch.nn.CrossEntropyLoss()

  def synchronized(run):
    def call(*args):
      run(*args)
      if cuda:
        torch.cuda.synchronize()
    return call

  @synchronized
  def train_step():
    optimizer.zero_grad(set_to_none=True)
    with precision():
      loss = loss_fn(forward(images), labels)
    loss.backward()
    optimizer.step()

  @synchronized
  def infer(x):
    with torch.inference_mode(), precision():
      forward(x)

  rss_before = figures.peak_rss_bytes()
  model.train()
  _, compile_train_s = figures.timed(train_step)
  train = measure(train_step, repeats)
  model.eval()
  _, compile_infer_s = figures.timed(lambda: infer(images))
  inference = measure(lambda: infer(images), repeats)
  latency = measure(lambda: infer(images[:1]), max(repeats, 10))
  return {"framework": "pytorch",
          "model_name": f"pytorchcv {name}" + (" torch.compile" if spec.get("compile") else ""),
          "versions": f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads",
          "backend": "gpu" if cuda else "cpu",
          **figures.from_timings(batch, train, inference, latency, compile_train_s,
                                 compile_infer_s, rss_before)}


def measure_keras(spec: dict) -> dict:
  """Keras 3's MobileNet on the TensorFlow backend, jit_compile=False (TF's own kernels)."""
  if spec["model"] != "mobilenet_v1":
    raise ValueError("Keras applications have no ShuffleNet v1")
  if os.environ.get("KERAS_BACKEND") != "tensorflow":
    raise RuntimeError("measure_keras needs KERAS_BACKEND=tensorflow set before Keras is "
                       "imported (run_in_subprocess sets it)")
  import keras
  import numpy as np
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")
  batch, resolution, repeats = spec["batch"], spec["resolution"], spec["repeats"]
  keras.utils.set_random_seed(0)
  model = keras.applications.MobileNet(
      input_shape=(resolution, resolution, 3), alpha=spec["options"]["alpha"], weights=None,
      classes=1000, classifier_activation=None)
  model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=False)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((batch, resolution, resolution, 3)).astype(np.float32)
  labels = rng.integers(0, 1000, batch).astype(np.int32)
  rss_before = figures.peak_rss_bytes()
  _, compile_train_s = figures.timed(lambda: model.train_on_batch(images, labels))
  train = measure(lambda: model.train_on_batch(images, labels), repeats)
  _, compile_infer_s = figures.timed(lambda: model.predict_on_batch(images))
  inference = measure(lambda: model.predict_on_batch(images), repeats)
  latency = measure(lambda: model.predict_on_batch(images[:1]), max(repeats, 10))
  return {"framework": "keras", "model_name": "keras-tf MobileNet",
          "versions": f"Keras {keras.__version__}, TensorFlow {tf.__version__}, "
                      "jit_compile=False", "backend": "cpu",
          **figures.from_timings(batch, train, inference, latency, compile_train_s,
                                 compile_infer_s, rss_before)}
