"""Speed of our models against PyTorch (pytorchcv) and Keras 3 on TensorFlow.

    python -m mobileshuffle_jax.bench --model mobilenet_v1 --alpha 1.0 --lowering all --peers
    python -m mobileshuffle_jax.bench --model shufflenet_v1 --groups 3 --scale 1.0 --json

For each measured model (ours under each requested conv lowering, and with `--peers` the
pytorchcv model of the same configuration and, for MobileNet, Keras' MobileNet on the
TensorFlow backend) it reports, after warm-up, the median over `--repeats` of:

- training-step images/s: forward, backward, SGD-momentum update and BN statistics update
  (ours: one jitted function with donated state);
- inference images/s at `--batch`, and batch-1 latency (ms);
- CPU milliseconds per image (process CPU time, all threads) of both: on a machine shared
  with other work, contention stretches wall time far more than the CPU time a step needs;
- compile time (ours: lowering plus XLA compilation of each function; peers: their first
  call, which for Keras includes tracing its tf.function);
- memory: the process's peak resident set growth over the measurement, XLA's compiled
  buffer sizes for ours, and on GPU the device's peak bytes in use.

The achieved FLOP rate counts 2 FLOPs per mult-add of `complexity.count` (classifier
included) per image for inference, and three times that (forward, input gradient and
weight gradient) for a training step. It is set against the rate of a large float32
matmul measured by JAX on the same machine, a practical ceiling.

Every model is measured in its own subprocess, one after the other, so that thread pools,
allocators and peak memory do not interfere. `--rounds N` measures every model N times in
turn (ours, then each peer, then again): figures are medians over the rounds, and each ratio
is the median of the ratios within each round, so that a change of load on a shared machine
falls on both sides of most ratios instead of on one model. Peers always run in float32
(PyTorch NCHW, Keras NHWC) with each framework's default threading.

Allocator: on Linux, `--malloc hugepages` (the default) starts every measured process,
ours and peers alike, with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, so that glibc backs
large allocations with transparent huge pages. XLA:CPU allocates an execution's buffers
anew each time (over a GiB for a MobileNet training step at batch 16); with 4 KiB pages
they fault in again on every step, which costs such a step about a fifth of its CPU time.
`--malloc system` measures glibc's defaults. The same variable speeds up training runs.

`--tflite` also times batch-1 latency of our model exported to TFLite (float32, built-in
ops, `mobileshuffle_jax.export.tflite`) in the LiteRT interpreter with XNNPACK, 1 and 2
threads: what a phone runtime makes of it on this CPU.

`--input-pipeline [DATASET]` also times `input_pipeline.measure_train_throughput`: the
training preprocessing (JPEG decode fused with the random crop, flip, resize) at
`--resolution`, and reports how many cores it needs to feed our training step. The default,
`photos`, is an image folder of ImageNet-sized JPEGs (500 px on the longer side, quality
90, 4:2:0 chroma as cameras write them) cut from the two photographs scikit-learn ships,
built in a temporary directory; any other name is a data set of `input_pipeline` (e.g.
`digits`, whose 32 px JPEGs cost far less to decode).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from mobileshuffle_jax.timing import Timing, measure

MODELS = ("mobilenet_v1", "shufflenet_v1")
LOWERINGS = ("auto", "xla", "fast")
# pytorchcv's names for the widths it provides.
PYTORCHCV_WIDTHS = {1.0: "w1", 0.75: "w3d4", 0.5: "wd2", 0.25: "wd4"}
PYTORCHCV_SHUFFLENETS = frozenset(
    {"g1_w1", "g2_w1", "g3_w1", "g4_w1", "g8_w1", "g1_w3d4", "g3_w3d4", "g1_wd2", "g3_wd2",
     "g1_wd4", "g3_wd4"})
# The timed figures of every measured model (each a median over its repeats).
FIGURES = ("train_images_per_s", "infer_images_per_s", "latency_ms", "train_cpu_ms_per_image",
           "infer_cpu_ms_per_image", "compile_train_s", "compile_infer_s")
MALLOC_ENV = {"hugepages": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "system": {}}


def _peak_rss_bytes() -> int:
  """The process's peak resident set so far (ru_maxrss is in KiB on Linux, bytes on macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak if sys.platform == "darwin" else peak * 1024


def _figures(batch: int, train: Timing, infer: Timing, latency: Timing,
             compile_train_s: float, compile_infer_s: float, rss_before: int) -> dict:
  """The figures every framework reports, from its measurements."""
  return {"train_images_per_s": batch / train.wall_s,
          "infer_images_per_s": batch / infer.wall_s, "latency_ms": latency.wall_s * 1e3,
          "train_cpu_ms_per_image": train.cpu_s / batch * 1e3,
          "infer_cpu_ms_per_image": infer.cpu_s / batch * 1e3,
          "compile_train_s": compile_train_s, "compile_infer_s": compile_infer_s,
          "memory": {"peak_rss_growth_bytes": _peak_rss_bytes() - rss_before}}


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
  """call()'s result and the seconds it took."""
  start = time.perf_counter()
  result = call()
  return result, time.perf_counter() - start


def measure_jax(spec: dict) -> dict:
  """Our model's figures under one conv lowering (see the module docstring)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from mobileshuffle_jax import models

  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[spec["dtype"]]
  model = models.build(spec["model"], lowering=spec["lowering"], dtype=dtype,
                       **spec["options"])
  batch, resolution, repeats = spec["batch"], spec["resolution"], spec["repeats"]
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((batch, resolution, resolution, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, model.num_classes, batch), jnp.int32)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images[:1])
  optimizer = optax.sgd(0.01, momentum=0.9)
  state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
           "opt_state": optimizer.init(variables["params"]), "key": jax.random.key(1)}

  def train_step(state, images, labels):
    key, dropout_key = jax.random.split(state["key"])

    def loss_fn(params):
      logits, updates = model.apply(
          {"params": params, "batch_stats": state["batch_stats"]}, images, train=True,
          mutable=["batch_stats"], rngs={"dropout": dropout_key})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates["batch_stats"]

    grads, batch_stats = jax.grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates),
            "batch_stats": batch_stats, "opt_state": opt_state, "key": key}

  def infer(variables, images):
    return model.apply(variables, images, train=False)

  rss_before = _peak_rss_bytes()
  compiled_train, compile_train_s = _timed(
      lambda: jax.jit(train_step, donate_argnums=0).lower(state, images, labels).compile())
  compiled_infer, compile_infer_s = _timed(
      lambda: jax.jit(infer).lower(variables, images).compile())
  infer_one = jax.jit(infer).lower(variables, images[:1]).compile()

  def run_train():
    nonlocal state
    state = compiled_train(state, images, labels)
    jax.block_until_ready(state)

  train = measure(run_train, repeats)
  # The training step donated the arrays `variables` started with.
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  inference = measure(lambda: compiled_infer(variables, images).block_until_ready(), repeats)
  latency = measure(lambda: infer_one(variables, images[:1]).block_until_ready(),
                    max(repeats, 10))
  figures = _figures(batch, train, inference, latency, compile_train_s, compile_infer_s,
                     rss_before)
  for name, compiled in (("train", compiled_train), ("infer", compiled_infer)):
    analysis = compiled.memory_analysis()
    if analysis is not None:
      figures["memory"][f"{name}_temp_bytes"] = int(analysis.temp_size_in_bytes)
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    figures["memory"]["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  resolved = models.resolve_lowering(spec["lowering"], device.platform)
  return {"framework": "jax", "lowering": spec["lowering"], "resolved_lowering": resolved,
          "versions": f"JAX {jax.__version__}", "backend": device.platform,
          "device": device.device_kind, **figures}


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
  """pytorchcv's model of the same configuration: float32, NCHW, torch's default threads."""
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
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  loss_fn = torch.nn.CrossEntropyLoss()

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    loss_fn(model(images), labels).backward()
    optimizer.step()

  def infer(x):
    with torch.inference_mode():
      model(x)

  rss_before = _peak_rss_bytes()
  model.train()
  _, compile_train_s = _timed(train_step)
  train = measure(train_step, repeats)
  model.eval()
  _, compile_infer_s = _timed(lambda: infer(images))
  inference = measure(lambda: infer(images), repeats)
  latency = measure(lambda: infer(images[:1]), max(repeats, 10))
  return {"framework": "pytorch", "model_name": f"pytorchcv {name}",
          "versions": f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads",
          "backend": "cpu", **_figures(batch, train, inference, latency, compile_train_s,
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
  rss_before = _peak_rss_bytes()
  _, compile_train_s = _timed(lambda: model.train_on_batch(images, labels))
  train = measure(lambda: model.train_on_batch(images, labels), repeats)
  _, compile_infer_s = _timed(lambda: model.predict_on_batch(images))
  inference = measure(lambda: model.predict_on_batch(images), repeats)
  latency = measure(lambda: model.predict_on_batch(images[:1]), max(repeats, 10))
  return {"framework": "keras", "model_name": "keras-tf MobileNet",
          "versions": f"Keras {keras.__version__}, TensorFlow {tf.__version__}, "
                      "jit_compile=False", "backend": "cpu",
          **_figures(batch, train, inference, latency, compile_train_s, compile_infer_s,
                     rss_before)}


# The photo folder of `--input-pipeline photos`: ImageNet's typical sizes and JPEG quality.
PHOTO_SIZES = ((500, 375), (375, 500), (500, 333), (500, 500))
PHOTO_QUALITY = 90
PHOTOS_PER_CLASS = 96


def write_photo_folder(root: str, per_class: int = PHOTOS_PER_CLASS) -> None:
  """ROOT/{train,validation}/{china,flower}/*.JPEG: crops of scikit-learn's two photographs
  (427 x 640), each resized to one of `PHOTO_SIZES` and encoded like a camera's JPEG."""
  import numpy as np
  import PIL.Image
  from sklearn import datasets as sklearn_datasets

  rng = np.random.default_rng(0)
  photos = sklearn_datasets.load_sample_images()
  for split, count in (("train", per_class), ("validation", 1)):
    for name, photo in zip(("china", "flower"), photos.images):
      directory = os.path.join(root, split, name)
      os.makedirs(directory)
      height, width, _ = photo.shape
      for index in range(count):
        crop_height, crop_width = rng.integers(height // 2, height + 1), rng.integers(
            width // 2, width + 1)
        top, left = rng.integers(0, height - crop_height + 1), rng.integers(
            0, width - crop_width + 1)
        image = PIL.Image.fromarray(photo[top:top + crop_height, left:left + crop_width])
        image = image.resize(PHOTO_SIZES[index % len(PHOTO_SIZES)], PIL.Image.BICUBIC)
        image.save(os.path.join(directory, f"{index:04d}.JPEG"), quality=PHOTO_QUALITY)


def measure_input_pipeline(spec: dict) -> dict:
  """Training preprocessing of `input_pipeline` on spec['data'] ('photos': see
  `write_photo_folder`), prepared first into spec['data_dir'] or a temporary directory."""
  from mobileshuffle_jax import data_defaults, input_pipeline

  with tempfile.TemporaryDirectory(prefix="bench-input-") as scratch:
    config = data_defaults.default_data_config()
    config.name = spec["data"]
    config.data_dir = spec["data_dir"] or os.path.join(scratch, "tfds")
    if spec["data"] == "photos":
      config.name = "image_folder"
      config.image_folder = os.path.join(scratch, "photos")
      write_photo_folder(config.image_folder)
    config.image_size = spec["resolution"]
    input_pipeline.prepare(config)
    result = input_pipeline.measure_train_throughput(config, spec["batch"], spec["batches"])
  return {"framework": "input_pipeline", "data": spec["data"],
          "images_per_s": result.images_per_second,
          "images_per_cpu_s": result.images_per_cpu_second}


def measure_litert(spec: dict) -> dict:
  """Batch-1 latency of our model exported to TFLite (float32, random weights) in LiteRT."""
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


MEASURE = {"jax": measure_jax, "pytorch": measure_pytorch, "keras": measure_keras,
           "input_pipeline": measure_input_pipeline, "litert": measure_litert}


def measure_matmul(size: int, repeats: int) -> float:
  """GFLOP/s of a float32 size x size matmul in JAX: a practical ceiling for the models."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  return 2 * size**3 / measure(lambda: matmul(a, b).block_until_ready(), repeats).wall_s / 1e9


def run_in_subprocess(spec: dict, malloc: str = "hugepages",
                      timeout_s: float | None = None) -> dict:
  """`MEASURE[spec['framework']](spec)` in a fresh Python process; its result (or error)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **MALLOC_ENV[malloc])
  if spec["framework"] == "keras":
    env["KERAS_BACKEND"] = "tensorflow"
  command = [sys.executable, "-m", "mobileshuffle_jax.bench", "--worker", json.dumps(spec)]
  try:
    done = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
  except subprocess.TimeoutExpired:
    return {**spec, "error": f"timed out after {timeout_s} s"}
  lines = done.stdout.strip().splitlines()
  if done.returncode != 0 or not lines:
    tail = "\n".join(done.stderr.strip().splitlines()[-15:])
    return {**spec, "error": f"exit status {done.returncode}: {tail}"}
  return json.loads(lines[-1])


def add_flop_rates(result: dict, mult_adds: int, matmul_gflops: float) -> None:
  """Achieved GFLOP/s (2 per mult-add, 3 passes for training) and their share of the matmul."""
  infer = 2 * mult_adds * result["infer_images_per_s"] / 1e9
  train = 3 * 2 * mult_adds * result["train_images_per_s"] / 1e9
  result.update(infer_gflops=infer, train_gflops=train,
                infer_fraction_of_matmul=infer / matmul_gflops,
                train_fraction_of_matmul=train / matmul_gflops)


def combine_rounds(rounds: list[list[dict]]) -> list[dict]:
  """One result per measured model from `rounds` (each a list of results, models in order).

  Figures are medians over the rounds, memory the largest of each figure; a model that failed
  in any round is reported with its first error.
  """
  combined = []
  for measurements in zip(*rounds):
    errors = [m for m in measurements if "error" in m]
    if errors:
      combined.append(errors[0])
      continue
    result = dict(measurements[0], rounds=len(measurements))
    for key in FIGURES:
      result[key] = statistics.median(m[key] for m in measurements)
    result["memory"] = {key: max(m["memory"][key] for m in measurements)
                        for key in measurements[0]["memory"]}
    combined.append(result)
  return combined


def median_speedups(rounds: list[list[dict]]) -> list[dict]:
  """For every pair of models measured in every round, the median of each `speedups` ratio
  over the rounds (each ratio taken within one round), and the ratios of each round."""
  per_round = [{(pair["ours"], pair["peer"]): pair for pair in speedups(results)}
               for results in rounds]
  combined = []
  for pair in speedups(combine_rounds(rounds)):
    in_rounds = [pairs[pair["ours"], pair["peer"]] for pairs in per_round]
    ratios = [key for key in pair if key not in ("ours", "peer")]
    combined.append({"ours": pair["ours"], "peer": pair["peer"],
                     **{key: statistics.median(p[key] for p in in_rounds) for key in ratios},
                     "by_round": [{key: p[key] for key in ratios} for p in in_rounds]})
  return combined


def _label(result: dict) -> str:
  if result["framework"] == "jax":
    return f"ours ({result['lowering']})"
  return result.get("model_name", result["framework"])


def speedups(results: list[dict]) -> list[dict]:
  """ours / peer for every (our lowering, peer) pair: above 1 means ours is faster.

  `*_cpu` compare CPU time per image (peer / ours), the steadier figure on a shared machine.
  """
  ours = [r for r in results if r["framework"] == "jax" and "error" not in r]
  peers = [r for r in results if r["framework"] in ("pytorch", "keras") and "error" not in r]
  return [{"ours": _label(a), "peer": _label(b),
           "train": a["train_images_per_s"] / b["train_images_per_s"],
           "infer": a["infer_images_per_s"] / b["infer_images_per_s"],
           "latency": b["latency_ms"] / a["latency_ms"],
           "train_cpu": b["train_cpu_ms_per_image"] / a["train_cpu_ms_per_image"],
           "infer_cpu": b["infer_cpu_ms_per_image"] / a["infer_cpu_ms_per_image"]}
          for a in ours for b in peers]


def _memory_mib(result: dict) -> str:
  memory = result["memory"]
  key = "device_peak_bytes" if "device_peak_bytes" in memory else "peak_rss_growth_bytes"
  return f"{memory[key] / 2**20:.0f}"


def format_report(report: dict) -> str:
  """The report as a table for people (`--json` prints `report` itself)."""
  config, machine = report["config"], report["machine"]
  lines = [f"{config['model']} {config['options']} at {config['resolution']} px, batch "
           f"{config['batch']}, {config['dtype']}; {machine['backend']} "
           f"({machine['device']}, {machine['cpu_count']} CPUs); median of "
           f"{config['repeats']} repeats, {config['rounds']} round(s); malloc "
           f"{config['malloc']}",
           f"{report['mult_adds_per_image'] / 1e6:.1f} M mult-adds per image; float32 "
           f"{machine['matmul_size']}^2 matmul: {machine['matmul_gflops']:.0f} GFLOP/s"]
  header = ("model", "train img/s", "infer img/s", "batch-1 ms", "CPU ms/img train/infer",
            "compile s train/infer", "peak MiB", "GFLOP/s infer", "GFLOP/s train")
  rows = []
  for r in report["results"]:
    if "error" in r:
      rows.append((_label(r), "error: " + r["error"].strip().splitlines()[-1][:80]))
      continue
    rows.append((_label(r), f"{r['train_images_per_s']:.1f}", f"{r['infer_images_per_s']:.1f}",
                 f"{r['latency_ms']:.1f}",
                 f"{r['train_cpu_ms_per_image']:.0f} / {r['infer_cpu_ms_per_image']:.1f}",
                 f"{r['compile_train_s']:.1f} / {r['compile_infer_s']:.1f}", _memory_mib(r),
                 f"{r['infer_gflops']:.0f} ({100 * r['infer_fraction_of_matmul']:.0f}%)",
                 f"{r['train_gflops']:.0f} ({100 * r['train_fraction_of_matmul']:.0f}%)"))
  widths = [max(len(row[i]) for row in rows + [header] if i < len(row))
            for i in range(len(header))]
  lines += ["", "  ".join(h.ljust(w) for h, w in zip(header, widths))]
  lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
  if report["speedups"]:
    lines += ["", "ours / peer (above 1: ours faster): train, infer, batch-1 latency; "
                  "by CPU time: train, infer"]
    lines += [f"  {s['ours']} / {s['peer']}: {s['train']:.2f}  {s['infer']:.2f}  "
              f"{s['latency']:.2f};  {s['train_cpu']:.2f}  {s['infer_cpu']:.2f}"
              for s in report["speedups"]]
  litert = report.get("litert")
  if litert and "error" in litert:
    lines += ["", f"LiteRT: error: {litert['error'].strip().splitlines()[-1]}"]
  elif litert:
    lines += ["", "our model as TFLite in LiteRT (XNNPACK), batch 1: " + ", ".join(
        f"{ms:.2f} ms with {n} thread{'s' if n != '1' else ''}"
        for n, ms in litert["latency_ms_by_threads"].items())]
  pipeline = report.get("input_pipeline")
  if pipeline and "error" in pipeline:
    lines += ["", f"input pipeline: error: {pipeline['error'].strip().splitlines()[-1]}"]
  elif pipeline:
    lines += ["", f"input pipeline ({pipeline['data']}, {config['resolution']} px): "
                  f"{pipeline['images_per_s']:.0f} images/s, "
                  f"{pipeline['images_per_cpu_s']:.0f} images per CPU second"]
    lines += [f"  cores it needs to feed {_label(r)} training: "
              f"{r['train_images_per_s'] / pipeline['images_per_cpu_s']:.2f}"
              for r in report["results"] if r["framework"] == "jax" and "error" not in r]
  return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m mobileshuffle_jax.bench",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", choices=MODELS, default="mobilenet_v1")
  parser.add_argument("--alpha", type=float, default=1.0, help="MobileNet width multiplier")
  parser.add_argument("--groups", type=int, default=3, help="ShuffleNet groups")
  parser.add_argument("--scale", type=float, default=1.0, help="ShuffleNet scale")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--resolution", type=int, default=224)
  parser.add_argument("--lowering", choices=LOWERINGS + ("all",), default="auto",
                      help="our conv lowering; 'all': 'xla' and 'fast'")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="our compute dtype (peers run float32)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=1,
                      help="measure every model this many times in turn; medians over rounds")
  parser.add_argument("--peers", action="store_true",
                      help="also measure pytorchcv and (MobileNet) Keras on TensorFlow")
  parser.add_argument("--matmul-size", type=int, default=4096)
  parser.add_argument("--malloc", choices=tuple(MALLOC_ENV), default="hugepages")
  parser.add_argument("--input-pipeline", nargs="?", const="photos", metavar="DATASET",
                      help="also time the training input pipeline on DATASET (default "
                           "photos: ImageNet-sized JPEGs made locally)")
  parser.add_argument("--data-dir", help="tfds data_dir for --input-pipeline")
  parser.add_argument("--tflite", action="store_true",
                      help="also time batch-1 latency of our model exported to TFLite, in "
                           "LiteRT (XNNPACK) with 1 and 2 threads")
  parser.add_argument("--input-batches", type=int, default=20)
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--worker", help=argparse.SUPPRESS)  # a spec, from run_in_subprocess
  return parser


def main(argv=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.worker:
    spec = json.loads(args.worker)
    print(json.dumps(MEASURE[spec["framework"]](spec)))
    return 0

  import jax

  from mobileshuffle_jax import complexity, models

  if args.model == "mobilenet_v1":
    options = {"alpha": args.alpha}
  else:
    options = {"groups": args.groups, "scale": args.scale}
  try:
    mult_adds = complexity.count(models.build(args.model, **options),
                                 args.resolution).mult_adds
    peer_name = pytorchcv_name(args.model, options) if args.peers else None
  except ValueError as error:
    parser.error(str(error))
  common = {"model": args.model, "options": options, "batch": args.batch,
            "resolution": args.resolution, "repeats": args.repeats}
  lowerings = ("xla", "fast") if args.lowering == "all" else (args.lowering,)
  specs = [dict(common, framework="jax", lowering=name, dtype=args.dtype) for name in lowerings]
  if peer_name:
    specs.append(dict(common, framework="pytorch"))
    if args.model == "mobilenet_v1":
      specs.append(dict(common, framework="keras"))
  if args.rounds < 1:
    parser.error(f"--rounds={args.rounds} must be at least 1")
  rounds = [[run_in_subprocess(spec, args.malloc) for spec in specs]
            for _ in range(args.rounds)]
  results = combine_rounds(rounds)

  device = jax.devices()[0]
  matmul_gflops = measure_matmul(args.matmul_size, args.repeats)
  for result in results:
    if "error" not in result:
      add_flop_rates(result, mult_adds, matmul_gflops)
  report = {"config": dict(common, dtype=args.dtype, malloc=args.malloc, rounds=args.rounds),
            "machine": {"backend": device.platform, "device": device.device_kind,
                        "cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "matmul_size": args.matmul_size, "matmul_gflops": matmul_gflops},
            "mult_adds_per_image": mult_adds, "results": results,
            "speedups": median_speedups(rounds)}
  if args.input_pipeline:
    report["input_pipeline"] = run_in_subprocess(
        {"framework": "input_pipeline", "data": args.input_pipeline,
         "data_dir": args.data_dir, "resolution": args.resolution, "batch": args.batch,
         "batches": args.input_batches}, args.malloc)
  if args.tflite:
    report["litert"] = run_in_subprocess(
        {"framework": "litert", "model": args.model, "options": options,
         "resolution": args.resolution, "repeats": max(args.repeats, 50)}, args.malloc)
  print(json.dumps(report) if args.json else format_report(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
