"""Speed of our models against PyTorch (pytorchcv) and Keras 3 on TensorFlow.

    python -m mobileshuffle_jax.bench --model mobilenet_v1 --alpha 1.0 --lowering all --peers
    python -m mobileshuffle_jax.bench --model shufflenet_v1 --groups 3 --scale 1.0 --json

For each measured model (ours under each requested conv lowering, and with `--peers` the
pytorchcv model of the same configuration and, for MobileNet, Keras' MobileNet on the
TensorFlow backend) it reports, after warm-up, the median over `--repeats` of:

- training-step images/s: forward, backward, SGD-momentum update and BN statistics update
  (ours: training's own step, `train_step.make_train_step`, jitted with donated state);
- inference images/s at `--batch`, and batch-1 latency (ms);
- CPU milliseconds per image (process CPU time, all threads) of both: on a machine shared
  with other work, contention stretches wall time far more than the CPU time a step needs;
- compile time (ours: lowering plus XLA compilation of each function; peers: their first
  call, which for Keras includes tracing its tf.function);
- memory: the process's peak resident set growth over the measurement, XLA's compiled
  buffer sizes for ours, and on GPU the device's peak bytes in use.

The achieved FLOP rate counts 2 FLOPs per mult-add of `complexity.count` (classifier
included) per image for inference, and three times that (forward, input gradient and
weight gradient) for a training step. It is set against the rate of a large matmul in
our compute dtype (`--dtype`) measured by JAX on the same device, a practical ceiling.
On an accelerator the table leaves out the host's CPU time per image, which says nothing
of a step that runs on the device.

Every model is measured in its own subprocess, one after the other, so that thread pools,
allocators and peak memory do not interfere; the parent process never initializes a
device, so on a GPU no measuring process finds its memory already taken. `--rounds N`
measures every model N times in turn (ours, then each peer, then again): figures are
medians over the rounds, and each ratio is the median of the ratios within each round, so
that a change of load on a shared machine falls on both sides of most ratios instead of on
one model. On CPU the peers run in float32 (PyTorch NCHW, Keras NHWC) with each
framework's default threading. On a GPU, pytorchcv runs channels_last, with bfloat16
autocast under `--dtype bfloat16`, both eager and through `torch.compile`.

Allocator: XLA:CPU allocates an execution's buffers anew each time (over a GiB for a
MobileNet training step at batch 16); with glibc's defaults they fault in again, 4 KiB at a
time, on every step. Importing our package sets glibc's malloc to keep freed memory for
reuse (`mobileshuffle_jax.allocator`), so `--malloc default` (a plain environment for every
process) measures what a user gets: ours with that setting, the peers with glibc's
defaults. `--malloc system` holds ours to glibc's defaults too; `--malloc hugepages` starts
every process with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent huge pages). The
report names the CPU (model, family, vector extensions) and each side's allocator state.

Kernels: `--cpu-kernels ynnpack,xla` (or `all`) measures ours once with each XLA:CPU kernel
choice of `mobileshuffle_jax.cpu_kernels` (YNNPACK, jaxlib's default, or XLA's own), each
in its own process; the report says which kernels each of ours ran with.

`--tflite` also times batch-1 latency of our model exported to TFLite (float32, built-in
ops, `mobileshuffle_jax.export.tflite`) in the LiteRT interpreter with XNNPACK, 1 and 2
threads: what a phone runtime makes of it on this CPU.

`--input-pipeline [DATASET]` also times the input pipeline at `--resolution` in one process,
each variant of `photos.VARIANTS` in turn `--rounds` times (medians): the training path
(`input_pipeline.measure_train_throughput`) as configured by default, from the reduced copy
of the data set, and from the reduced copy with data echoing 2; the evaluation path
(`measure_eval_throughput`) by default and from the reduced copy; and plain tf.data doing
the work of the project's former default for each path (float32 normalised batches, no
determinism). It reports images/s, images per CPU second (process CPU time, all threads:
steadier than wall time on a shared machine), the ratios to plain tf.data within each
round, and how many cores each variant needs to feed our model's training step (training
path) or inference (evaluation path) as measured in the same run. The default data,
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
import sys

from mobileshuffle_jax import allocator, cpu_kernels
from mobileshuffle_jax.bench import cpu_info, litert, ours, peers, photos, results

MODELS = ("mobilenet_v1", "shufflenet_v1")
# Each a function of a spec, run by `--worker` in the process `results.run_in_subprocess`
# starts; none imports its framework before it is called.
MEASURE = {"jax": ours.measure_jax, "matmul": ours.measure_matmul,
           "pytorch": peers.measure_pytorch,
           "keras": peers.measure_keras, "input_pipeline": photos.measure_input_pipeline,
           "litert": litert.measure_litert}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m mobileshuffle_jax.bench",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", choices=MODELS, default="mobilenet_v1")
  parser.add_argument("--alpha", type=float, default=1.0, help="MobileNet width multiplier")
  parser.add_argument("--groups", type=int, default=3, help="ShuffleNet groups")
  parser.add_argument("--scale", type=float, default=1.0, help="ShuffleNet scale")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--resolution", type=int, default=224)
  # models.LOWERINGS, spelled out: importing models here would load JAX into every worker,
  # the peers' included.
  parser.add_argument("--lowering", choices=("auto", "xla", "fast", "all"), default="auto",
                      help="our conv lowering; 'all': 'xla' and 'fast'")
  parser.add_argument("--cpu-kernels", metavar="LIBRARIES",
                      help="run ours with each of these XLA:CPU kernel libraries "
                           f"(comma-separated, or 'all': {', '.join(cpu_kernels.LIBRARIES)}); "
                           "default: the package's choice (mobileshuffle_jax.cpu_kernels)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="our compute dtype (on a GPU, PyTorch autocasts to it)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=1,
                      help="measure every model this many times in turn; medians over rounds")
  parser.add_argument("--peers", action="store_true",
                      help="also measure pytorchcv and (MobileNet) Keras on TensorFlow")
  parser.add_argument("--matmul-size", type=int, default=4096)
  parser.add_argument("--malloc", choices=tuple(results.MALLOC_ENV), default="default",
                      help="'default': a plain environment for every process (ours then "
                           "keeps freed memory for reuse, see mobileshuffle_jax.allocator); "
                           "'system': glibc's defaults for ours too; 'hugepages': "
                           "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 for every process")
  parser.add_argument("--input-pipeline", nargs="?", const="photos", metavar="DATASET",
                      help="also time the input pipeline's variants on DATASET (default "
                           "photos: ImageNet-sized JPEGs made locally)")
  parser.add_argument("--data-dir", help="tfds data_dir for --input-pipeline")
  parser.add_argument("--tflite", action="store_true",
                      help="also time batch-1 latency of our model exported to TFLite, in "
                           "LiteRT (XNNPACK) with 1 and 2 threads")
  parser.add_argument("--input-batches", type=int, default=80,
                      help="timed training batches of each input-pipeline variant")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--worker", help=argparse.SUPPRESS)  # a spec, from run_in_subprocess
  return parser


def main(argv=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.worker:
    spec = json.loads(args.worker)
    result = MEASURE[spec["framework"]](spec)
    result["allocator"] = {"mallopt": allocator.keep_freed_memory(),
                           "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}
    result["kernel_library"] = cpu_kernels.choose()
    print(json.dumps(result))
    return 0

  # Counting builds no arrays: this process never initializes a device, so the measuring
  # processes have its whole memory.
  from mobileshuffle_jax import complexity, models

  if args.model == "mobilenet_v1":
    options = {"alpha": args.alpha}
  else:
    options = {"groups": args.groups, "scale": args.scale}
  try:
    mult_adds = complexity.count(models.build(args.model, **options),
                                 args.resolution).mult_adds
    peer_name = peers.pytorchcv_name(args.model, options) if args.peers else None
  except ValueError as error:
    parser.error(str(error))
  common = {"model": args.model, "options": options, "batch": args.batch,
            "resolution": args.resolution, "repeats": args.repeats}
  if args.lowering == "all":
    lowerings = tuple(name for name in models.LOWERINGS if name != "auto")
  else:
    lowerings = (args.lowering,)
  if args.rounds < 1:
    parser.error(f"--rounds={args.rounds} must be at least 1")
  matmul = results.run_in_subprocess({"framework": "matmul", "size": args.matmul_size,
                                      "repeats": args.repeats, "dtype": args.dtype},
                                     args.malloc)
  if "error" in matmul:
    raise RuntimeError(f"the matmul measurement failed: {matmul['error']}")
  if args.cpu_kernels is None:
    libraries = (None,)
  elif args.cpu_kernels == "all":
    libraries = tuple(cpu_kernels.LIBRARIES)
  else:
    libraries = tuple(args.cpu_kernels.split(","))
    unknown = [name for name in libraries if name not in cpu_kernels.LIBRARIES]
    if unknown:
      parser.error(f"--cpu-kernels: {', '.join(unknown)} not among "
                   f"{', '.join(cpu_kernels.LIBRARIES)}")
  specs = [dict(common, framework="jax", lowering=name, dtype=args.dtype,
                **({"cpu_kernels": library} if library else {}))
           for name in lowerings for library in libraries]
  if peer_name:
    specs.append(dict(common, framework="pytorch", dtype=args.dtype))
    if matmul["backend"] == "gpu":  # eager and compiled, as PyTorch users run it there
      specs.append(dict(common, framework="pytorch", dtype=args.dtype, compile=True))
    if args.model == "mobilenet_v1":
      specs.append(dict(common, framework="keras"))
  rounds = [[results.run_in_subprocess(spec, args.malloc) for spec in specs]
            for _ in range(args.rounds)]
  combined = results.combine_rounds(rounds)
  for result in combined:
    if "error" not in result:
      results.add_flop_rates(result, mult_adds, matmul["gflops"])
      results.add_roofline(result, mult_adds, matmul["gflops"], matmul["memory_gb_per_s"])
  report = {"config": dict(common, dtype=args.dtype, malloc=args.malloc, rounds=args.rounds),
            "machine": {"backend": matmul["backend"], "device": matmul["device"],
                        "cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "cpu": cpu_info.describe(),
                        "matmul_size": args.matmul_size, "matmul_dtype": args.dtype,
                        "matmul_gflops": matmul["gflops"],
                        "memory_gb_per_s": matmul["memory_gb_per_s"]},
            "mult_adds_per_image": mult_adds, "results": combined,
            "speedups": results.median_speedups(rounds)}
  if args.input_pipeline:
    report["input_pipeline"] = results.run_in_subprocess(
        {"framework": "input_pipeline", "data": args.input_pipeline,
         "data_dir": args.data_dir, "resolution": args.resolution, "batch": args.batch,
         "batches": args.input_batches, "rounds": args.rounds}, args.malloc)
  if args.tflite:
    report["litert"] = results.run_in_subprocess(
        {"framework": "litert", "model": args.model, "options": options,
         "resolution": args.resolution, "repeats": max(args.repeats, 50)}, args.malloc)
  print(json.dumps(report) if args.json else results.format_report(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
