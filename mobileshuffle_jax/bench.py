"""Speed of our models against PyTorch (pytorchcv) and Keras 3 on TensorFlow.

    python -m mobileshuffle_jax.bench --model mobilenet_v1 --alpha 1.0 --lowering all --peers
    python -m mobileshuffle_jax.bench --model shufflenet_v1 --groups 3 --scale 1.0 --json

For each measured model (ours under each requested conv lowering, and with `--peers` the
pytorchcv model of the same configuration and, for MobileNet, Keras' MobileNet on the
TensorFlow backend) it reports, after warm-up, the median over `--repeats` of:

- training-step images/s: forward, backward, SGD-momentum update and BN statistics update
  (ours: one jitted function with donated state);
- inference images/s at `--batch`, and batch-1 latency (ms);
- compile time (ours: lowering plus XLA compilation of each function; peers: the first
  call, which for Keras includes tracing its tf.function);
- memory: on CPU the process's peak resident set growth over the measurement and, for
  ours, XLA's compiled buffer sizes; on GPU the device's peak bytes in use.

The achieved FLOP rate counts 2 FLOPs per mult-add of `complexity.count` (classifier
included) per image for inference, and three times that (forward, input and weight
gradients) for a training step. It is set against the rate of a large float32 matmul
measured by JAX on the same machine, a practical ceiling.

When several models are measured, each runs in its own subprocess so that thread pools,
allocators and peak memory do not interfere; the table gives every ratio ours / peer.
Peers always run in float32, NCHW for PyTorch and NHWC for Keras, with each framework's
default thread settings.

Allocator: on Linux, `--malloc retain` (the default) makes glibc keep freed memory for
reuse (`retain_freed_memory`) in every measured process, ours and peers alike. XLA:CPU
allocates an execution's buffers anew each time; under glibc's defaults each large one is
a fresh `mmap` whose pages fault in again on every step, which costs a MobileNet training
step a quarter of its CPU time. `--malloc system` measures glibc's defaults.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, NamedTuple

MODELS = ("mobilenet_v1", "shufflenet_v1")
LOWERINGS = ("auto", "xla", "fast")
FRAMEWORKS = ("jax", "pytorch", "keras")
# pytorchcv's names for the widths it provides.
PYTORCHCV_WIDTHS = {1.0: "w1", 0.75: "w3d4", 0.5: "wd2", 0.25: "wd4"}
PYTORCHCV_SHUFFLENETS = frozenset(
    {"g1_w1", "g2_w1", "g3_w1", "g4_w1", "g8_w1", "g1_w3d4", "g3_w3d4", "g1_wd2", "g3_wd2",
     "g1_wd4", "g3_wd4"})
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def retain_freed_memory() -> bool:
  """Make glibc keep freed memory for reuse (see the module docstring); False if not glibc.

  Call before any thread allocates. XLA:CPU allocates each execution's temporaries (over
  a GiB for a MobileNet training step at batch 16) on its worker threads, and glibc serves
  a large allocation of a thread outside the main arena with a fresh mmap, whatever
  M_MMAP_MAX says; its pages then fault in again on every step (a quarter of the step's
  CPU time there). One arena, no mmap and no trimming keep those pages mapped.
  """
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  # mallopt returns 1 on success; a trim threshold of -1 reads as SIZE_MAX: never trim.
  return all(libc.mallopt(param, value) == 1 for param, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))


def _peak_rss_bytes() -> int:
  """The process's peak resident set so far (ru_maxrss is in KiB on Linux, bytes on macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak if sys.platform == "darwin" else peak * 1024


class Timing(NamedTuple):
  """Medians over the repeats of one measured call: wall seconds and process CPU seconds.

  CPU seconds (all threads) are the steadier figure on a machine shared with other work:
  contention stretches the wall time, much less the CPU time a step needs.
  """

  wall_s: float
  cpu_s: float


def _measure(run: Callable[[], Any], repeats: int, warmup: int = 2) -> Timing:
  """Medians of `run()` (which must wait for its result) after `warmup` calls."""
  for _ in range(warmup):
    run()
  walls, cpus = [], []
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  return Timing(statistics.median(walls), statistics.median(cpus))


def _rates(batch: int, train: Timing, infer: Timing, latency: Timing) -> dict[str, float]:
  return {"train_images_per_s": batch / train.wall_s, "infer_images_per_s": batch / infer.wall_s,
          "latency_ms": latency.wall_s * 1e3,
          "train_cpu_ms_per_image": train.cpu_s / batch * 1e3,
          "infer_cpu_ms_per_image": infer.cpu_s / batch * 1e3}


def measure_jax(spec: dict) -> dict:
  """Our model's figures for one conv lowering (see the module docstring)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from mobileshuffle_jax import models

  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[spec["dtype"]]
  model = models.build(spec["model"], lowering=spec["lowering"], dtype=dtype,
                       **spec["options"])
  batch, resolution = spec["batch"], spec["resolution"]
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
  start = time.perf_counter()
  train = jax.jit(train_step, donate_argnums=0).lower(state, images, labels).compile()
  compile_train_s = time.perf_counter() - start
  start = time.perf_counter()
  infer_batch = jax.jit(infer).lower(variables, images).compile()
  compile_infer_s = time.perf_counter() - start
  infer_one = jax.jit(infer).lower(variables, images[:1]).compile()

  def run_train():
    nonlocal state
    state = train(state, images, labels)
    jax.block_until_ready(state)

  repeats = spec["repeats"]
  train_timing = _measure(run_train, repeats)
  # The training step donated the arrays `variables` started with.
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  infer_timing = _measure(lambda: infer_batch(variables, images).block_until_ready(), repeats)
  latency_timing = _measure(lambda: infer_one(variables, images[:1]).block_until_ready(),
                              max(repeats, 10))
  memory = {"peak_rss_growth_bytes": _peak_rss_bytes() - rss_before}
  for name, compiled in (("train", train), ("infer", infer_batch)):
    analysis = compiled.memory_analysis()
    if analysis is not None:
      memory[f"{name}_temp_bytes"] = int(analysis.temp_size_in_bytes)
      memory[f"{name}_argument_bytes"] = int(analysis.argument_size_in_bytes)
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    memory["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  return {"framework": "jax", "lowering": spec["lowering"], "backend": device.platform,
          "device": device.device_kind, **_rates(batch, train_timing, infer_timing, latency_timing),
          "compile_train_s": compile_train_s, "compile_infer_s": compile_infer_s,
          "memory": memory}


def measure_matmul(size: int, repeats: int) -> float:
  """GFLOP/s of a float32 size x size matmul in JAX: a practical ceiling for the models."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  timing = _measure(lambda: matmul(a, b).block_until_ready(), repeats)
  return 2 * size**3 / timing.wall_s / 1e9


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
                     f"scale={options['scale']}; it has {', '.join(sorted(PYTORCHCV_SHUFFLENETS))}")
  return f"shufflenet_{suffix}"


def measure_pytorch(spec: dict) -> dict:
  """pytorchcv's model of the same configuration: float32, NCHW, torch's default threads."""
  import torch
  from pytorchcv.models import mobilenet, shufflenet

  name = pytorchcv_name(spec["model"], spec["options"])
  module = mobilenet if spec["model"] == "mobilenet_v1" else shufflenet
  model = getattr(module, name)()
  # pytorchcv's final pool has a fixed 7x7 window (224 px); a global pool equals it there
  # and lets other resolutions run.
  model.features.final_pool = torch.nn.AdaptiveAvgPool2d(1)
  batch, resolution = spec["batch"], spec["resolution"]
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
  start = time.perf_counter()
  train_step()
  compile_train_s = time.perf_counter() - start
  repeats = spec["repeats"]
  train_timing = _measure(train_step, repeats)
  model.eval()
  start = time.perf_counter()
  infer(images)
  compile_infer_s = time.perf_counter() - start
  infer_timing = _measure(lambda: infer(images), repeats)
  latency_timing = _measure(lambda: infer(images[:1]), max(repeats, 10))
  return {"framework": "pytorch", "model_name": f"pytorchcv {name}",
          "versions": f"PyTorch {torch.__version__}", "backend": "cpu",
          "device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
          **_rates(batch, train_timing, infer_timing, latency_timing), "compile_train_s": compile_train_s,
          "compile_infer_s": compile_infer_s,
          "memory": {"peak_rss_growth_bytes": _peak_rss_bytes() - rss_before}}


def measure_keras(spec: dict) -> dict:
  """Keras 3's MobileNet on the TensorFlow backend, jit_compile=False (TF's own kernels)."""
  if spec["model"] != "mobilenet_v1":
    raise ValueError("Keras applications have no ShuffleNet v1")
  if os.environ.get("KERAS_BACKEND") != "tensorflow":
    raise RuntimeError("measure_keras needs KERAS_BACKEND=tensorflow set before Keras is "
                       "imported (the --peers subprocess sets it)")
  import keras
  import numpy as np
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")
  batch, resolution = spec["batch"], spec["resolution"]
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
  start = time.perf_counter()
  model.train_on_batch(images, labels)
  compile_train_s = time.perf_counter() - start
  repeats = spec["repeats"]
  train_timing = _measure(lambda: model.train_on_batch(images, labels), repeats)
  start = time.perf_counter()
  model.predict_on_batch(images)
  compile_infer_s = time.perf_counter() - start
  infer_timing = _measure(lambda: model.predict_on_batch(images), repeats)
  latency_timing = _measure(lambda: model.predict_on_batch(images[:1]), max(repeats, 10))
  return {"framework": "keras", "model_name": "keras-tf MobileNet",
          "versions": f"Keras {keras.__version__}, TensorFlow {tf.__version__}, "
                      "jit_compile=False", "backend": "cpu",
          "device": platform.processor() or platform.machine(),
          **_rates(batch, train_timing, infer_timing, latency_timing), "compile_train_s": compile_train_s,
          "compile_infer_s": compile_infer_s,
          "memory": {"peak_rss_growth_bytes": _peak_rss_bytes() - rss_before}}


MEASURE = {"jax": measure_jax, "pytorch": measure_pytorch, "keras": measure_keras}


def run_in_subprocess(spec: dict, timeout_s: float | None = None) -> dict:
  """`MEASURE[spec['framework']](spec)` in a fresh Python process; its JSON result."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  if spec["framework"] == "keras":
    env["KERAS_BACKEND"] = "tensorflow"
  command = [sys.executable, "-m", "mobileshuffle_jax.bench", "--worker", json.dumps(spec)]
  done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
  lines = done.stdout.strip().splitlines()
  if done.returncode != 0 or not lines:
    tail = "\n".join(done.stderr.strip().splitlines()[-15:])
    return {"framework": spec["framework"], "lowering": spec.get("lowering"),
            "error": f"exit status {done.returncode}: {tail}"}
  return json.loads(lines[-1])


def _model_options(args) -> dict:
  if args.model == "mobilenet_v1":
    return {"alpha": args.alpha}
  return {"groups": args.groups, "scale": args.scale}


def _label(result: dict) -> str:
  if result["framework"] == "jax":
    return f"ours ({result['lowering']})"
  return result.get("model_name", result["framework"])


def add_flop_rates(result: dict, mult_adds: int, matmul_gflops: float) -> None:
  """Achieved GFLOP/s (2 per mult-add, 3 passes for training) and their share of the matmul."""
  if "error" in result:
    return
  infer = 2 * mult_adds * result["infer_images_per_s"] / 1e9
  train = 3 * 2 * mult_adds * result["train_images_per_s"] / 1e9
  result.update(infer_gflops=infer, train_gflops=train,
                infer_fraction_of_matmul=infer / matmul_gflops,
                train_fraction_of_matmul=train / matmul_gflops)


def speedups(results: list[dict]) -> list[dict]:
  """ours / peer for every (our lowering, peer) pair: above 1 means ours is faster."""
  ours = [r for r in results if r["framework"] == "jax" and "error" not in r]
  peers = [r for r in results if r["framework"] != "jax" and "error" not in r]
  return [{"ours": _label(a), "peer": _label(b),
           "train": a["train_images_per_s"] / b["train_images_per_s"],
           "infer": a["infer_images_per_s"] / b["infer_images_per_s"],
           "latency": b["latency_ms"] / a["latency_ms"]} for a in ours for b in peers]


def _memory_mb(result: dict) -> str:
  memory = result.get("memory", {})
  key = "device_peak_bytes" if "device_peak_bytes" in memory else "peak_rss_growth_bytes"
  return f"{memory[key] / 2**20:.0f}" if key in memory else "-"


def format_report(report: dict) -> str:
  config, machine = report["config"], report["machine"]
  lines = [f"{config['model']} {config['options']} at {config['resolution']} px, batch "
           f"{config['batch']}, {config['dtype']}; {machine['backend']} ({machine['device']}, "
           f"{machine['cpu_count']} CPUs); median of {config['repeats']}; malloc "
           f"{config['malloc']}",
           f"{report['mult_adds_per_image'] / 1e6:.1f} M mult-adds per image; float32 "
           f"{machine['matmul_size']}^2 matmul: {machine['matmul_gflops']:.0f} GFLOP/s"]
  header = ("model", "train img/s", "infer img/s", "batch-1 ms", "train/infer CPU ms/img",
            "compile s", "peak MiB", "infer GFLOP/s", "train GFLOP/s")
  rows = []
  for r in report["results"]:
    if "error" in r:
      rows.append((_label(r), "error: " + r["error"].splitlines()[-1][:60]) + ("",) * 7)
      continue
    rows.append((_label(r), f"{r['train_images_per_s']:.1f}", f"{r['infer_images_per_s']:.1f}",
                 f"{r['latency_ms']:.1f}",
                 f"{r['train_cpu_ms_per_image']:.0f}/{r['infer_cpu_ms_per_image']:.1f}",
                 f"{r['compile_train_s']:.1f}/{r['compile_infer_s']:.1f}", _memory_mb(r),
                 f"{r['infer_gflops']:.0f} ({100 * r['infer_fraction_of_matmul']:.0f}%)",
                 f"{r['train_gflops']:.0f} ({100 * r['train_fraction_of_matmul']:.0f}%)"))
  widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
  lines += ["", "  ".join(h.ljust(w) for h, w in zip(header, widths))]
  lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
  if report["speedups"]:
    lines += ["", "ours / peer (above 1: ours faster)   train   infer   batch-1 latency"]
    lines += [f"{s['ours']} / {s['peer']}: {s['train']:.2f}  {s['infer']:.2f}  "
              f"{s['latency']:.2f}" for s in report["speedups"]]
  pipeline = report.get("input_pipeline")
  if pipeline:
    lines += ["", f"input pipeline: {pipeline}"]
  return "\n".join(lines)


def main(argv=None) -> int:
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
  parser.add_argument("--peers", action="store_true",
                      help="also measure pytorchcv and (MobileNet) Keras on TensorFlow")
  parser.add_argument("--matmul-size", type=int, default=4096)
  parser.add_argument("--malloc", choices=("retain", "system"), default="retain")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--worker", help=argparse.SUPPRESS)  # a spec, run by run_in_subprocess
  args = parser.parse_args(argv)

  if args.worker:
    spec = json.loads(args.worker)
    if spec["malloc"] == "retain":
      retain_freed_memory()
    print(json.dumps(MEASURE[spec["framework"]](spec)))
    return 0
  if args.malloc == "retain":
    retain_freed_memory()

  import jax

  from mobileshuffle_jax import complexity, models

  options = _model_options(args)
  try:
    mult_adds = complexity.count(models.build(args.model, **options),
                                 args.resolution).mult_adds
    peer_name = pytorchcv_name(args.model, options) if args.peers else None
  except ValueError as error:
    parser.error(str(error))
  common = {"model": args.model, "options": options, "batch": args.batch,
            "resolution": args.resolution, "repeats": args.repeats, "malloc": args.malloc}
  lowerings = ("xla", "fast") if args.lowering == "all" else (args.lowering,)
  specs = [dict(common, framework="jax", lowering=name, dtype=args.dtype) for name in lowerings]
  if peer_name:
    specs.append(dict(common, framework="pytorch", dtype="float32"))
    if args.model == "mobilenet_v1":
      specs.append(dict(common, framework="keras", dtype="float32"))
  if len(specs) == 1:
    results = [MEASURE["jax"](specs[0])]
  else:
    results = [run_in_subprocess(spec) for spec in specs]

  device = jax.devices()[0]
  matmul_gflops = measure_matmul(args.matmul_size, args.repeats)
  for result in results:
    add_flop_rates(result, mult_adds, matmul_gflops)
  report = {"config": dict(common, dtype=args.dtype),
            "machine": {"backend": device.platform, "device": device.device_kind,
                        "cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "matmul_size": args.matmul_size, "matmul_gflops": matmul_gflops},
            "mult_adds_per_image": mult_adds, "results": results,
            "speedups": speedups(results)}
  print(json.dumps(report) if args.json else format_report(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
