r"""Export one checkpoint of a workdir as a portable file.

  python -m mobileshuffle_jax.export --workdir workdirs/default --out mobilenet.safetensors
  python -m mobileshuffle_jax.export --workdir DIR --out mobilenet.jax --format jax [--batch 8]
  python -m mobileshuffle_jax.export --workdir DIR --out mobilenet.tflite --format tflite \
      [--quantize none|dynamic|int8] [--calibration-data SPLIT|DIR] [--batch 1] [--resolution R]
  python -m mobileshuffle_jax.export --workdir DIR --out mobilenet.onnx --format onnx \
      [--batch B] [--resolution R] [--no-preprocessing]
  python -m mobileshuffle_jax.export --workdir DIR --out mobilenet.param --format ncnn \
      [--resolution R] [--no-preprocessing]

safetensors: every variable and the metadata to rebuild the model
(`mobileshuffle_jax.load(FILE)`). jax: a serialized jax.export function, RGB 0..255 images
-> logits, that runs with jax alone (see FILE.json). tflite: the same function for the
LiteRT runtime, built-in ops only, float or quantized (see FILE.json). onnx: the model with
each BN folded into its conv, NCHW input, for ONNX Runtime and other ONNX runtimes. ncnn:
FILE.param and FILE.bin for ncnn, one CHW image at a time. Check tflite, onnx and ncnn
files in their own runtimes with `python -m mobileshuffle_jax.export.check FILE --workdir
DIR`. An option the format cannot express is refused before anything is written; existing
files are never overwritten and a failure leaves no partial file.
"""

from __future__ import annotations

import argparse
import os
import sys

from mobileshuffle_jax import export


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m mobileshuffle_jax.export",
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True,
                      help="directory written by train.py or convert (or an exported "
                      ".safetensors file)")
  parser.add_argument("--out", required=True, help="file to write; must not exist")
  parser.add_argument("--format", choices=export.FORMATS, default="safetensors",
                      help="safetensors (default): variables and metadata; jax: a "
                      "jax.export inference function; tflite: a LiteRT flatbuffer; onnx: an "
                      "ONNX file; ncnn: FILE.param and FILE.bin (--out FILE.param)")
  parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  parser.add_argument("--batch", type=int,
                      help="jax, onnx: a fixed batch size (default: any batch size); tflite: "
                      "the batch size (default 1); not for ncnn (one image at a time)")
  tflite = parser.add_argument_group("--format tflite")
  tflite.add_argument("--quantize", help="none (default), dynamic (int8 weights) or int8 "
                      "(int8 weights and activations, calibrated)")
  tflite.add_argument("--calibration-data", help="int8: a split of the checkpoint's data set "
                      "(default 'train') or an image folder root (its train/CLASS/ images)")
  tflite.add_argument("--calibration-images", type=int,
                      help="int8: how many images calibrate the activation ranges (default 256)")
  graphs = parser.add_argument_group("--format tflite, onnx or ncnn")
  graphs.add_argument("--resolution", type=int,
                      help="input height and width (default: the checkpoint's image size)")
  graphs.add_argument("--no-preprocessing", action="store_true",
                      help="take normalized images instead of RGB 0..255 (normalization not "
                      "in the graph)")
  return parser.parse_args(argv)


def format_options(args: argparse.Namespace) -> dict:
  """The format's options given on the command line, as `export.FORMAT_OPTIONS` names."""
  given = {"quantize": args.quantize, "calibration_data": args.calibration_data,
           "calibration_count": args.calibration_images, "resolution": args.resolution,
           "in_graph_preprocessing": False if args.no_preprocessing else None}
  return {name: value for name, value in given.items() if value is not None}


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  try:
    predictor = export.export_checkpoint(args.workdir, args.out, file_format=args.format,
                                         step=args.step, batch=args.batch,
                                         **format_options(args))
  except (ValueError, FileNotFoundError) as error:
    sys.exit(f"error: {error}")
  print(f"{args.workdir} step {predictor.step} (params_sha256 {predictor.params_sha256})")
  for path in export.output_paths(args.out, args.format):
    print(f"  -> {path} ({os.path.getsize(path):,} bytes)")


if __name__ == "__main__":
  main()
