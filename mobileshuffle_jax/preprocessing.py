"""Input normalizations, shared by the tf.data pipeline, predictors and exports.

Plain array arithmetic (no TensorFlow), so numpy, JAX and TensorFlow arrays all work.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Normalization(NamedTuple):
  """Per-channel RGB statistics on the 0..255 scale: `(image - mean) / std`."""

  mean: tuple[float, float, float]
  std: tuple[float, float, float]


NORMALIZATIONS = {
    # torchvision's ImageNet statistics (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) x 255.
    "imagenet": Normalization(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)),
    "minus_one_one": Normalization(mean=(127.5,) * 3, std=(127.5,) * 3),  # TF-slim, Keras
    "zero_one": Normalization(mean=(0.0,) * 3, std=(255.0,) * 3),
    "none": Normalization(mean=(0.0,) * 3, std=(1.0,) * 3),  # raw 0..255 as float
}


def normalize(images, normalization: str):
  """`images` (RGB values 0..255; numpy, JAX or float TF arrays, channels last) normalised.

  Integer numpy or JAX images come back as float32.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"normalization={normalization!r} must be one of {sorted(NORMALIZATIONS)}")
  mean, std = NORMALIZATIONS[normalization]
  return (images - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
