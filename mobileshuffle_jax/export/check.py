r"""Check a TFLite export against the JAX model it came from, on the same images.

    python -m mobileshuffle_jax.export.check model.tflite --workdir DIR \
        [--split SPLIT] [--max-examples N] [--threads 1,2] [--repeats 50] [--json]

Runs FILE in the stock LiteRT interpreter (XNNPACK delegate) and the checkpoint's JAX model
(the step FILE.json names) on the evaluation images of the checkpoint's data set (its
eval split, or `--split`), both fed the same preprocessed images at the file's resolution,
and reports:

- the largest absolute logit difference, and relative to the largest JAX logit;
- top-1 agreement between the two, and the top-1 accuracy of each on the labels;
- the file's size;
- batch-1 (the file's batch) latency, median of `--repeats` invocations after warm-up,
  with each number of `--threads`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

from mobileshuffle_jax import export, predict, preprocessing, timing
from mobileshuffle_jax.export import tflite

DEFAULT_THREADS = (1, 2)
DEFAULT_REPEATS = 50
WARMUP = 5


def read_sidecar(path: str) -> dict:
  """FILE.json, checked to describe a tflite export of this package."""
  sidecar_path = path + export.SIDECAR_SUFFIX
  if not os.path.isfile(path):
    raise ValueError(f"{path} does not exist")
  if not os.path.isfile(sidecar_path):
    raise ValueError(f"{sidecar_path} is missing: the checker needs the description "
                     "`python -m mobileshuffle_jax.export --format tflite` writes beside FILE")
  with open(sidecar_path) as f:
    record = json.load(f)
  if record.get("format") != tflite.FORMAT:
    raise ValueError(f"{sidecar_path} does not describe a tflite export (format="
                     f"{record.get('format')!r})")
  return record


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
  """Median milliseconds of one invocation on `images`, after `WARMUP` invocations."""
  runner.set_tensor(runner.get_input_details()[0]["index"], images)
  return timing.measure(runner.invoke, repeats, warmup=WARMUP).wall_s * 1e3


def check(path: str, workdir: str, *, split: str | None = None, max_examples: int | None = None,
          threads: tuple[int, ...] = DEFAULT_THREADS, repeats: int = DEFAULT_REPEATS) -> dict:
  """The figures of the module docstring, as a dict."""
  record = read_sidecar(path)
  if max_examples is not None and max_examples < 1:
    raise ValueError(f"--max-examples={max_examples} must be positive")
  if not threads or min(threads) < 1:
    raise ValueError(f"--threads={threads} must be positive counts")
  predictor = predict.load(workdir, step=int(record["step"]))
  if predictor.params_sha256 != record["params_sha256"]:
    raise ValueError(f"{path} was exported from parameters {record['params_sha256'][:12]}..., "
                     f"but {workdir} step {record['step']} holds "
                     f"{predictor.params_sha256[:12]}...: not the same checkpoint")
  batch, resolution = record["input"]["shape"][0], record["input"]["shape"][1]
  in_graph = record["input"]["in_graph_preprocessing"]
  normalization = predictor.preprocessing["normalization"]
  model = predictor.model
  jax_logits_of = jax.jit(lambda images: predict.preprocess_and_apply(
      model, predictor.variables, images, normalization))

  data_config = tflite.image_data_config(predictor.config, data=split, resolution=resolution)
  runner = interpreter(path, max(threads))
  differences, scales, agree, correct_tflite, correct_jax, count = [], [], 0, 0, 0, 0
  first_batch = None
  for images, labels in tflite.read_images(data_config, max_examples, batch=batch):
    inputs = images if in_graph else preprocessing.normalize(images, normalization)
    # The file's batch is fixed: zero-pad the last chunk and drop the padding's outputs.
    padded = np.concatenate([inputs, np.zeros((batch - len(inputs),) + inputs.shape[1:],
                                              np.float32)])
    if first_batch is None:
      first_batch = padded
    tflite_logits = invoke(runner, padded)[:len(inputs)]
    jax_logits = np.asarray(jax_logits_of(images))
    differences.append(float(np.max(np.abs(tflite_logits - jax_logits))))
    scales.append(float(np.max(np.abs(jax_logits))))
    agree += int(np.sum(tflite_logits.argmax(-1) == jax_logits.argmax(-1)))
    correct_tflite += int(np.sum(tflite_logits.argmax(-1) == labels))
    correct_jax += int(np.sum(jax_logits.argmax(-1) == labels))
    count += len(images)
  if not count:
    raise ValueError(f"split {data_config.eval_split!r} of {data_config.name!r} has no images")
  latency = {str(n): latency_ms(interpreter(path, n), first_batch, repeats) for n in threads}
  return {"file": path, "size_bytes": os.path.getsize(path), "quantize": record["quantize"],
          "model": record["model"], "step": record["step"], "input_shape": record["input"]["shape"],
          "split": data_config.eval_split, "examples": count,
          "max_abs_logit_difference": max(differences),
          "max_relative_logit_difference": max(differences) / max(scales),
          "top1_agreement": agree / count, "top1_tflite": correct_tflite / count,
          "top1_jax": correct_jax / count, "latency_ms_by_threads": latency,
          "latency_repeats": repeats}


def format_report(result: dict) -> str:
  latency = ", ".join(f"{ms:.2f} ms with {n} thread{'s' if n != '1' else ''}"
                      for n, ms in result["latency_ms_by_threads"].items())
  return "\n".join([
      f"{result['file']}: {result['model']} step {result['step']}, input "
      f"{result['input_shape']}, quantize={result['quantize']}, "
      f"{result['size_bytes'] / 2**20:.2f} MiB",
      f"{result['examples']} images of split {result['split']!r}:",
      f"  max |logit difference| {result['max_abs_logit_difference']:.3g} "
      f"({result['max_relative_logit_difference']:.3g} of the largest |logit|)",
      f"  top-1 agreement {100 * result['top1_agreement']:.2f}%; top-1 accuracy: tflite "
      f"{100 * result['top1_tflite']:.2f}%, jax {100 * result['top1_jax']:.2f}%",
      f"  latency (median of {result['latency_repeats']}): {latency}"])


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m mobileshuffle_jax.export.check",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("file", help="a .tflite file written by mobileshuffle_jax.export")
  parser.add_argument("--workdir", required=True, help="the workdir (or export) it came from")
  parser.add_argument("--split", help="split of the checkpoint's data set (default: its eval "
                      "split) or an image folder root")
  parser.add_argument("--max-examples", type=int, help="at most this many images")
  parser.add_argument("--threads", default=",".join(map(str, DEFAULT_THREADS)),
                      help="thread counts to time, comma-separated (default 1,2)")
  parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  try:
    threads = tuple(int(n) for n in args.threads.split(","))
    result = check(args.file, args.workdir, split=args.split, max_examples=args.max_examples,
                   threads=threads, repeats=args.repeats)
  except (ValueError, FileNotFoundError) as error:
    sys.exit(f"error: {error}")
  print(json.dumps(result) if args.json else format_report(result))


if __name__ == "__main__":
  main()
