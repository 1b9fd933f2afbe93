r"""Check exports against the JAX model they came from, each in its own runtime.

    python -m mobileshuffle_jax.export.check FILE [FILE ...] --workdir DIR \
        [--split SPLIT] [--max-examples N] [--threads 1,2] [--repeats 50] [--rounds 1] \
        [--ncnn-benchmark PARAM ...] [--json]

FILE is a `.tflite` (run in the stock LiteRT interpreter with its XNNPACK delegate), a
`.onnx` (ONNX Runtime, CPU) or an ncnn `.param` with its `.bin` (ncnn's Python runtime,
float32: ncnn's fp16 and bf16 storage are turned off), each written by
`python -m mobileshuffle_jax.export` from DIR. Each FILE and the checkpoint's JAX model (the
step FILE.json names) run on the evaluation images of the checkpoint's data set (its eval
split, or `--split`), fed the same preprocessed images at the file's resolution; for each
FILE the checker reports:

- the largest absolute logit difference, and relative to the largest JAX logit;
- top-1 agreement between the two, and the top-1 accuracy of each on the labels;
- the file's size (ncnn: .param and .bin);
- batch-1 (tflite: the file's batch) latency in its runtime, the median of `--repeats`
  calls after warm-up, with each number of `--threads`.

`--ncnn-benchmark PARAM` also times models of ncnn's own benchmark (benchmark/models/
mobilenet.param, shufflenet.param in Tencent/ncnn) in the same run, with zero weights as
ncnn's benchncnn loads them (its DataReaderFromEmpty) and the same runtime options as our
ncnn files. With `--rounds N`, every file and benchmark model is timed N times in turn and
each figure is the median of its rounds: on a shared machine the load drifts, and figures
taken minutes apart compare mostly that drift.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Callable

import jax
import numpy as np

from mobileshuffle_jax import export, predict, preprocessing, timing
from mobileshuffle_jax.export import ncnn_export, onnx_export, tflite

DEFAULT_THREADS = (1, 2)
DEFAULT_REPEATS = 50
WARMUP = 5
CHUNK = 16  # images per call to a runtime with a free batch size
RUNTIMES = {tflite.FORMAT: "LiteRT", onnx_export.FORMAT: "ONNX Runtime",
            ncnn_export.FORMAT: "ncnn"}


def read_sidecar(path: str) -> dict:
  """FILE.json, checked to describe a tflite, onnx or ncnn export of this package."""
  sidecar_path = path + export.SIDECAR_SUFFIX
  if not os.path.isfile(path):
    raise ValueError(f"{path} does not exist")
  if not os.path.isfile(sidecar_path):
    raise ValueError(f"{sidecar_path} is missing: the checker needs the description "
                     "`python -m mobileshuffle_jax.export` writes beside FILE")
  with open(sidecar_path) as f:
    record = json.load(f)
  if record.get("format") not in RUNTIMES:
    raise ValueError(f"{sidecar_path} does not describe a tflite, onnx or ncnn export "
                     f"(format={record.get('format')!r})")
  return record


# LiteRT -----------------------------------------------------------------------------------

def interpreter(path: str, threads: int):
  """The stock LiteRT interpreter of `path`, tensors allocated (XNNPACK delegate applied)."""
  from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top

  runner = litert.Interpreter(model_path=path, num_threads=threads)
  runner.allocate_tensors()
  return runner


def invoke(runner, images: np.ndarray) -> np.ndarray:
  """The file's output for `images` (exactly its batch size)."""
  runner.set_tensor(runner.get_input_details()[0]["index"], images)
  runner.invoke()
  return runner.get_tensor(runner.get_output_details()[0]["index"]).copy()


def latency_ms(runner, images: np.ndarray, repeats: int) -> float:
  """Median milliseconds of one LiteRT invocation on `images`, after `WARMUP` invocations."""
  runner.set_tensor(runner.get_input_details()[0]["index"], images)
  return timing.measure(runner.invoke, repeats, warmup=WARMUP).wall_s * 1e3


# One runtime per format: images (NHWC, as the file takes them) -> logits ------------------

class LiteRT:
  """A tflite file in LiteRT; its batch is fixed, so inputs are zero-padded to it."""

  def __init__(self, path: str, record: dict, threads: int):
    self.runner = interpreter(path, threads)
    self.batch = record["input"]["shape"][0]

  def _padded(self, images: np.ndarray) -> np.ndarray:
    return np.concatenate([images, np.zeros((self.batch - len(images),) + images.shape[1:],
                                            np.float32)])

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return invoke(self.runner, self._padded(images))[:len(images)]

  def timed(self, images: np.ndarray) -> Callable[[], object]:
    self.runner.set_tensor(self.runner.get_input_details()[0]["index"], self._padded(images))
    return self.runner.invoke


class OnnxRuntime:
  """An ONNX file in ONNX Runtime (CPU, all graph optimizations, `threads` intra-op)."""

  def __init__(self, path: str, record: dict, threads: int):
    import onnxruntime  # pylint: disable=g-import-not-at-top

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    self.session = onnxruntime.InferenceSession(path, options,
                                                providers=["CPUExecutionProvider"])
    self.batch = record["input"]["shape"][0]  # None: any

  def _feed(self, images: np.ndarray) -> dict:
    nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if self.batch is not None and len(nchw) < self.batch:
      nchw = np.concatenate([nchw, np.zeros((self.batch - len(nchw),) + nchw.shape[1:],
                                            np.float32)])
    return {"images": nchw}

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return self.session.run(None, self._feed(images))[0][:len(images)]

  def timed(self, images: np.ndarray) -> Callable[[], object]:
    feed = self._feed(images)
    return lambda: self.session.run(None, feed)


class Ncnn:
  """An ncnn .param (with its .bin, or zero weights) in ncnn's Python runtime, float32,
  run the way ncnn's benchncnn runs its models (pool allocators, a fresh extractor per
  image), one CHW image at a time."""

  batch = 1

  def __init__(self, param_path: str, threads: int, *, weights: str | None,
               input_blob: str, output_blob: str, input_shape: tuple[int, int, int]):
    import ncnn  # pylint: disable=g-import-not-at-top

    self.net = ncnn.Net()
    # Kept referenced: the net's options point at them.
    self.allocators = (ncnn.UnlockedPoolAllocator(), ncnn.PoolAllocator())
    opt = self.net.opt
    opt.num_threads = threads
    opt.blob_allocator, opt.workspace_allocator = self.allocators
    # ncnn stores activations as fp16 or bf16 where the CPU allows; exports are float32.
    opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = False
    opt.use_bf16_storage = opt.use_bf16_packed = False
    if self.net.load_param(param_path) != 0:
      raise ValueError(f"ncnn cannot read {param_path}")
    loaded = (self.net.load_model(weights) if weights is not None
              else self.net.load_model(ncnn.DataReaderFromEmpty()))
    if loaded != 0:
      raise ValueError(f"ncnn cannot read the weights of {param_path} ({weights})")
    self.input_blob, self.output_blob = input_blob, output_blob
    channels, height, width = input_shape
    # An input owned by ncnn, filled through a view: ncnn may compute in place on its
    # input, which it does on a copy only when the input is shared (refcounted).
    self.input = ncnn.Mat(width, height, channels)
    self.view = np.array(self.input, copy=False)

  @classmethod
  def of_export(cls, path: str, record: dict, threads: int) -> "Ncnn":
    return cls(path, threads, weights=ncnn_export.bin_path(path),
               input_blob=record["input"]["blob"], output_blob=record["output"]["blob"],
               input_shape=tuple(record["input"]["shape"]))

  def _extract(self) -> np.ndarray:
    extractor = self.net.create_extractor()
    extractor.input(self.input_blob, self.input)
    status, output = extractor.extract(self.output_blob)
    if status != 0:
      raise RuntimeError(f"ncnn failed to compute {self.output_blob} (status {status})")
    return np.array(output).reshape(-1)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    logits = []
    for image in images:
      self.view[...] = image.transpose(2, 0, 1)
      logits.append(self._extract())
    return np.stack(logits)

  def timed(self, images: np.ndarray) -> Callable[[], object]:
    self.view[...] = images[0].transpose(2, 0, 1)
    return self._extract


def open_runtime(path: str, record: dict, threads: int):
  """The runtime of the export at `path`, described by `record`, with `threads` threads."""
  if record["format"] == tflite.FORMAT:
    return LiteRT(path, record, threads)
  if record["format"] == onnx_export.FORMAT:
    return OnnxRuntime(path, record, threads)
  return Ncnn.of_export(path, record, threads)


def ncnn_benchmark_model(param_path: str) -> tuple[Callable[[int], Ncnn], np.ndarray]:
  """(threads -> the model of ncnn's benchmark at `param_path` with zero weights, a random
  NHWC input for it): its input is the Input layer's blob and shape (0=w 1=h 2=c), its
  output the last layer's first output."""
  with open(param_path) as f:
    lines = [line.split() for line in f.read().splitlines()[2:] if line.strip()]
  inputs = [line for line in lines if line[0] == "Input"]
  if not inputs:
    raise ValueError(f"{param_path} has no Input layer: not an ncnn model")
  params = dict(pair.split("=", 1) for pair in inputs[0][5:] if not pair.startswith("-"))
  shape = (int(params.get("2", 3)), int(params.get("1", 224)), int(params.get("0", 224)))
  last = lines[-1]
  output_blob = last[4 + int(last[2])]
  image = np.random.default_rng(0).uniform(0, 255, (1, shape[1], shape[2], shape[0]))
  return (lambda threads: Ncnn(param_path, threads, weights=None, input_blob=inputs[0][4],
                               output_blob=output_blob, input_shape=shape),
          image.astype(np.float32))


def file_size(path: str, record: dict) -> int:
  if record["format"] == ncnn_export.FORMAT:
    return os.path.getsize(path) + os.path.getsize(ncnn_export.bin_path(path))
  return os.path.getsize(path)


def measure_latency(runtime_of_threads: Callable[[int], object], images: np.ndarray,
                    threads: tuple[int, ...], repeats: int) -> dict[str, float]:
  """Median milliseconds of one call on `images` with each thread count."""
  return {str(n): timing.measure(runtime_of_threads(n).timed(images), repeats,
                                 warmup=WARMUP).wall_s * 1e3 for n in threads}


def check_parity(path: str, workdir: str, *, split: str | None = None,
                 max_examples: int | None = None) -> tuple[dict, np.ndarray]:
  """The parity, accuracy and size figures of the module docstring, and the batch-1 input
  (the first image(s), as the file takes them) that latency is measured on."""
  record = read_sidecar(path)
  if max_examples is not None and max_examples < 1:
    raise ValueError(f"--max-examples={max_examples} must be positive")
  predictor = predict.load(workdir, step=int(record["step"]))
  if predictor.params_sha256 != record["params_sha256"]:
    raise ValueError(f"{path} was exported from parameters {record['params_sha256'][:12]}..., "
                     f"but {workdir} step {record['step']} holds "
                     f"{predictor.params_sha256[:12]}...: not the same checkpoint")
  file_input = record["input"]
  resolution = file_input.get("resolution", file_input["shape"][1])
  in_graph = file_input["in_graph_preprocessing"]
  normalization = predictor.preprocessing["normalization"]
  model = predictor.model
  jax_logits_of = jax.jit(lambda images: predict.preprocess_and_apply(
      model, predictor.variables, images, normalization))

  data_config = tflite.image_data_config(predictor.config, data=split, resolution=resolution)
  runtime = open_runtime(path, record, max(DEFAULT_THREADS))
  differences, scales, agree, correct_export, correct_jax, count = [], [], 0, 0, 0, 0
  first_batch = None
  for images, labels in tflite.read_images(data_config, max_examples,
                                           batch=runtime.batch or CHUNK):
    inputs = images if in_graph else preprocessing.normalize(images, normalization)
    if first_batch is None:
      first_batch = inputs[:runtime.batch or 1]
    export_logits = runtime(inputs)
    jax_logits = np.asarray(jax_logits_of(images))
    differences.append(float(np.max(np.abs(export_logits - jax_logits))))
    scales.append(float(np.max(np.abs(jax_logits))))
    agree += int(np.sum(export_logits.argmax(-1) == jax_logits.argmax(-1)))
    correct_export += int(np.sum(export_logits.argmax(-1) == labels))
    correct_jax += int(np.sum(jax_logits.argmax(-1) == labels))
    count += len(images)
  if not count:
    raise ValueError(f"split {data_config.eval_split!r} of {data_config.name!r} has no images")
  return ({"file": path, "format": record["format"].rsplit(".", 1)[-1],
           "runtime": RUNTIMES[record["format"]], "size_bytes": file_size(path, record),
           "quantize": record.get("quantize", "none"), "model": record["model"],
           "step": record["step"], "input_shape": file_input["shape"],
           "input_layout": file_input.get("layout", "NHWC"), "split": data_config.eval_split,
           "examples": count, "max_abs_logit_difference": max(differences),
           "max_relative_logit_difference": max(differences) / max(scales),
           "top1_agreement": agree / count, "top1_export": correct_export / count,
           "top1_jax": correct_jax / count}, first_batch)


def check(path: str, workdir: str, *, split: str | None = None, max_examples: int | None = None,
          threads: tuple[int, ...] = DEFAULT_THREADS, repeats: int = DEFAULT_REPEATS) -> dict:
  """Every figure of the module docstring for one file, as a dict."""
  return check_all([path], workdir, split=split, max_examples=max_examples, threads=threads,
                   repeats=repeats)["exports"][0]


def check_threads(threads: tuple[int, ...]) -> None:
  if not threads or min(threads) < 1:
    raise ValueError(f"--threads={threads} must be positive counts")


def check_all(paths: list[str], workdir: str, *, benchmark_params: tuple[str, ...] = (),
              split: str | None = None, max_examples: int | None = None,
              threads: tuple[int, ...] = DEFAULT_THREADS, repeats: int = DEFAULT_REPEATS,
              rounds: int = 1) -> dict:
  """`check` of every file, and the latency of ncnn's benchmark models, timed in turn
  `rounds` times (each figure: the median of its rounds)."""
  check_threads(threads)
  if rounds < 1:
    raise ValueError(f"--rounds={rounds} must be positive")
  exports, timed = [], []
  for path in paths:
    result, first_batch = check_parity(path, workdir, split=split, max_examples=max_examples)
    record = read_sidecar(path)
    exports.append(result)
    timed.append((result, lambda n, path=path, record=record: open_runtime(path, record, n),
                  first_batch))
  benchmarks = []
  for param_path in benchmark_params:
    runtime_of_threads, image = ncnn_benchmark_model(param_path)
    benchmarks.append({"file": param_path, "runtime": "ncnn",
                       "model": os.path.basename(param_path)[:-len(".param")]})
    timed.append((benchmarks[-1], runtime_of_threads, image))
  samples = [[] for _ in timed]
  for _ in range(rounds):
    for (_, runtime_of_threads, images), sample in zip(timed, samples):
      sample.append(measure_latency(runtime_of_threads, images, threads, repeats))
  for (result, _, _), sample in zip(timed, samples):
    result["latency_ms_by_threads"] = {
        str(n): statistics.median(s[str(n)] for s in sample) for n in threads}
    result["latency_repeats"], result["latency_rounds"] = repeats, rounds
  return {"exports": exports, "ncnn_benchmark_models": benchmarks}


def format_latency(result: dict) -> str:
  return ", ".join(f"{ms:.2f} ms with {n} thread{'s' if n != '1' else ''}"
                   for n, ms in result["latency_ms_by_threads"].items())


def format_report(result: dict) -> str:
  return "\n".join([
      f"{result['file']}: {result['model']} step {result['step']}, {result['runtime']}, "
      f"input {result['input_layout']} {result['input_shape']}, "
      f"quantize={result['quantize']}, {result['size_bytes'] / 2**20:.2f} MiB",
      f"{result['examples']} images of split {result['split']!r}:",
      f"  max |logit difference| {result['max_abs_logit_difference']:.3g} "
      f"({result['max_relative_logit_difference']:.3g} of the largest |logit|)",
      f"  top-1 agreement {100 * result['top1_agreement']:.2f}%; top-1 accuracy: "
      f"{result['format']} {100 * result['top1_export']:.2f}%, "
      f"jax {100 * result['top1_jax']:.2f}%",
      f"  latency (median of {result['latency_repeats']}): {format_latency(result)}"])


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m mobileshuffle_jax.export.check",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("files", nargs="+", metavar="FILE",
                      help=".tflite, .onnx or ncnn .param files written by "
                      "mobileshuffle_jax.export")
  parser.add_argument("--workdir", required=True, help="the workdir (or export) they came from")
  parser.add_argument("--split", help="split of the checkpoint's data set (default: its eval "
                      "split) or an image folder root")
  parser.add_argument("--max-examples", type=int, help="at most this many images")
  parser.add_argument("--threads", default=",".join(map(str, DEFAULT_THREADS)),
                      help="thread counts to time, comma-separated (default 1,2)")
  parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
  parser.add_argument("--rounds", type=int, default=1,
                      help="time every file and benchmark model this many times in turn")
  parser.add_argument("--ncnn-benchmark", action="append", default=[], metavar="PARAM",
                      help="a .param of ncnn's benchmark models to time (zero weights)")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  try:
    threads = tuple(int(n) for n in args.threads.split(","))
    result = check_all(args.files, args.workdir, benchmark_params=tuple(args.ncnn_benchmark),
                       split=args.split, max_examples=args.max_examples, threads=threads,
                       repeats=args.repeats, rounds=args.rounds)
  except (ValueError, FileNotFoundError) as error:
    sys.exit(f"error: {error}")
  if args.json:
    print(json.dumps(result))
    return
  print("\n".join(format_report(r) for r in result["exports"]))
  for benchmark in result["ncnn_benchmark_models"]:
    print(f"{benchmark['file']} (ncnn's benchmark model, zero weights): "
          f"{format_latency(benchmark)}")


if __name__ == "__main__":
  main()
