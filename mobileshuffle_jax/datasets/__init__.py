"""TFDS builders for the project's own data sets; importing this package registers them.

- `digits`: scikit-learn's 8x8 handwritten digits as 32x32 RGB JPEGs (no download).
- `image_folder`: any `ROOT/{train,validation}/CLASS/*` tree of images, one prepared copy
  per root (see `image_folder.builder_for_root`).
"""

from mobileshuffle_jax.datasets import digits, image_folder
from mobileshuffle_jax.datasets.digits import Digits
from mobileshuffle_jax.datasets.image_folder import ImageFolder

__all__ = ["Digits", "ImageFolder", "digits", "image_folder"]
