r"""Export one checkpoint of a workdir as a portable file.

  python -m mobileshuffle_jax.export --workdir workdirs/default --out mobilenet.safetensors
  python -m mobileshuffle_jax.export --workdir DIR --out mobilenet.jax --format jax [--batch 8]

safetensors: every variable and the metadata to rebuild the model
(`mobileshuffle_jax.load(FILE)`). jax: a serialized jax.export function, RGB 0..255 images
-> logits, that runs with jax alone (see FILE.json). Existing files are never overwritten
and a failure leaves no partial file.
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
                      "jax.export inference function")
  parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  parser.add_argument("--batch", type=int,
                      help="jax: a fixed batch size (default: any batch size)")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  try:
    predictor = export.export_checkpoint(args.workdir, args.out, file_format=args.format,
                                     step=args.step, batch=args.batch)
  except (ValueError, FileNotFoundError) as error:
    sys.exit(f"error: {error}")
  print(f"{args.workdir} step {predictor.step} (params_sha256 {predictor.params_sha256})")
  for path in export.output_paths(args.out, args.format):
    print(f"  -> {path} ({os.path.getsize(path):,} bytes)")


if __name__ == "__main__":
  main()
