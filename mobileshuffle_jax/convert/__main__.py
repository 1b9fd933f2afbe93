r"""Convert a public pretrained checkpoint into a checkpoint directory of this package.

  python -m mobileshuffle_jax.convert keras mobilenet_1_0_224_tf.h5 --out workdirs/keras_1_0
  python -m mobileshuffle_jax.convert tf-slim mobilenet_v1_0.5_160.ckpt --out DIR --alpha 0.5
  python -m mobileshuffle_jax.convert pytorchcv shufflenet_g3_w1.pth --out DIR --groups 3
  python -m mobileshuffle_jax.convert megvii ShuffleNetV1-1.0x-g8.pth.tar --out DIR

Widths, groups and classes are read off the file; giving them checks the file against
them. Options a source does not take are refused.
"""

from __future__ import annotations

import argparse
import inspect
import sys

from mobileshuffle_jax import checkpointing
from mobileshuffle_jax.convert import SOURCES, convert


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
  parser = argparse.ArgumentParser(
      prog="python -m mobileshuffle_jax.convert",
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("source", choices=list(SOURCES))
  parser.add_argument("path", help="the source file (a TF checkpoint: its prefix or directory)")
  parser.add_argument("--out", required=True, help="directory to write the checkpoint to")
  parser.add_argument("--alpha", type=float, help="MobileNet width multiplier to expect")
  parser.add_argument("--groups", type=int, help="ShuffleNet groups to expect")
  parser.add_argument("--scale", type=float, help="ShuffleNet width scale to expect")
  parser.add_argument("--num-classes", type=int,
                      help="classes to expect; required for a Keras file without its top")
  parser.add_argument("--keep-background", action="store_true",
                      help="tf-slim: keep logit 0 (background) of a 1001-class head")
  parser.add_argument("--no-ema", action="store_true",
                      help="tf-slim: the raw weights, not their ExponentialMovingAverage")
  parser.add_argument("--image-size", type=int,
                      help="keras/tf-slim: evaluation resolution, if the file name lacks it")
  parser.add_argument("--seed", type=int,
                      help="keras: seed of a fresh classifier for a file without its top")
  return parser, parser.parse_args(argv)


# Converter keyword -> the flag that sets it.
FLAGS = dict(alpha="--alpha", groups="--groups", scale="--scale", num_classes="--num-classes",
             image_size="--image-size", seed="--seed", drop_background="--keep-background",
             use_ema="--no-ema")


def converter_options(args: argparse.Namespace) -> dict[str, object]:
  """The converter keywords the command line set (the rest keep the converter's defaults)."""
  options = dict(alpha=args.alpha, groups=args.groups, scale=args.scale,
                 num_classes=args.num_classes, image_size=args.image_size, seed=args.seed,
                 drop_background=False if args.keep_background else None,
                 use_ema=False if args.no_ema else None)
  return {name: value for name, value in options.items() if value is not None}


def main(argv: list[str] | None = None) -> None:
  parser, args = parse_args(argv)
  converter = SOURCES[args.source]
  options = converter_options(args)
  accepted = inspect.signature(converter).parameters
  refused = [name for name in options if name not in accepted]
  if refused:
    parser.error(f"{', '.join(FLAGS[name] for name in refused)}: not an option of "
                 f"source {args.source!r}")
  try:
    converted = convert(args.source, args.path, **options)
    checkpointing.write_converted(args.out, converted)
  except ValueError as error:  # ConversionError, or an --out that is not empty
    sys.exit(f"error: {error}")
  print(f"{args.source} {args.path} -> {args.out}\n"
        f"  model {converted.model_name} {converted.model_options}\n"
        f"  preprocessing {converted.preprocessing}")
  if converted.initialized:
    print(f"  not in the file, freshly initialised: {', '.join(converted.initialized)}")
  for note in converted.notes:
    print(f"  {note}")


if __name__ == "__main__":
  main()
