"""TFDS builders for the project's own data sets; importing this package registers them.

- `digits`: scikit-learn's 8x8 handwritten digits as 32x32 RGB JPEGs (no download).
- `image_folder`: any `ROOT/{train,validation}/CLASS/*` tree of images, one prepared copy
  per root (see `image_folder.builder_for_root`).
- `reduced`: a copy of any of these (or of any tfds image data set) at a bounded shorter
  side, cheaper to decode (see `reduced.builder_for_source`).
"""

from mobileshuffle_jax.datasets import digits, image_folder, reduced
from mobileshuffle_jax.datasets.digits import Digits
from mobileshuffle_jax.datasets.image_folder import ImageFolder
from mobileshuffle_jax.datasets.reduced import Reduced

__all__ = ["Digits", "ImageFolder", "Reduced", "digits", "image_folder", "reduced"]
