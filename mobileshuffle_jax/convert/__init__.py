"""Converters of public pretrained MobileNet v1 and ShuffleNet v1 weights to this package.

    converted = convert("pytorchcv", "shufflenet_g3_w1.pth")
    model = models.build(converted.model_name, **converted.model_options)
    logits = model.apply(converted.variables, images, train=False)

`images` prepared as `converted.preprocessing` says. Sources (`SOURCES`):
  keras      Keras applications MobileNet: Keras 2 .h5, Keras 3 .weights.h5 or .keras
  tf-slim    TF-slim MobileNet v1 checkpoints (EMA weights; a 1001-class head -> 1000)
  pytorchcv  pytorchcv mobilenet_* / shufflenet_* state dicts
  megvii     the ShuffleNet authors' ShuffleNetV1 release (ShuffleNet-Series)

Each converter is a table from source tensor names to our variable paths plus a few
layout transforms (`common`); widths, groups and classes are read off the shapes, and an
option given to the converter that the file contradicts is an error. The converted
variables match `models.build(...).init` tensor for tensor, and every refusal is a
`ConversionError` (a ValueError) naming the tensor at fault.
"""

from __future__ import annotations

from typing import Callable

from mobileshuffle_jax.convert import common
from mobileshuffle_jax.convert.common import ConversionError, Converted
from mobileshuffle_jax.convert.source_keras import convert_keras
from mobileshuffle_jax.convert.source_megvii import convert_megvii
from mobileshuffle_jax.convert.source_pytorchcv import convert_pytorchcv
from mobileshuffle_jax.convert.source_tf_slim import convert_tf_slim

SOURCES: dict[str, Callable[..., Converted]] = {
    "keras": convert_keras,
    "tf-slim": convert_tf_slim,
    "pytorchcv": convert_pytorchcv,
    "megvii": convert_megvii,
}
# Sources whose path is one file; a TF-slim path is a checkpoint prefix or a directory,
# which its converter resolves and checks.
SINGLE_FILE_SOURCES = ("keras", "pytorchcv", "megvii")

__all__ = ["ConversionError", "Converted", "SOURCES", "convert", "convert_keras",
           "convert_megvii", "convert_pytorchcv", "convert_tf_slim"]


def convert(source: str, path: str, **options) -> Converted:
  """`SOURCES[source](path, **options)`, with a clear error for an unknown source and a
  `ConversionError` naming a path that cannot be read (rather than each reader's own
  exception: h5py's, torch's)."""
  if source not in SOURCES:
    raise ValueError(f"source={source!r} is not supported; allowed values: "
                     f"{', '.join(repr(s) for s in SOURCES)}")
  if source in SINGLE_FILE_SOURCES:
    common.require_readable_file(path)
  return SOURCES[source](path, **options)
