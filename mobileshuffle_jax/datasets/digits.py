"""scikit-learn's handwritten digits as a TFDS image-classification data set (no download).

1,797 grey 8x8 images with values 0..16 (`sklearn.datasets.load_digits`), scaled to 0..255
and upsampled bilinearly to 32x32: smooth strokes stay legible, whereas nearest-neighbour
blocks would put sharp edges everywhere that JPEG rings around. Each is stored as an RGB
JPEG (grey replicated) so it goes through the same decode path as natural images.
Splits: a fixed stratified 80/20 split (`train_test_split(..., stratify=y,
random_state=0)`), 1,437 'train' and 360 'validation' images; 10 classes.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from sklearn import datasets as sklearn_datasets
from sklearn import model_selection

from mobileshuffle_jax.datasets import jpeg

IMAGE_SIZE = 32
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 0
MAX_PIXEL_VALUE = 16.0  # load_digits counts set pixels in 4x4 blocks: 0..16


def upsampled_image(pixels: np.ndarray) -> PIL.Image.Image:
  """One 8x8 digit (values 0..16) as a 32x32 greyscale image (values 0..255)."""
  scaled = PIL.Image.fromarray((pixels * (255.0 / MAX_PIXEL_VALUE)).astype(np.float32), "F")
  resized = np.asarray(scaled.resize((IMAGE_SIZE, IMAGE_SIZE), PIL.Image.BILINEAR))
  return PIL.Image.fromarray(np.clip(np.rint(resized), 0, 255).astype(np.uint8), "L")


def split_indices() -> dict[str, np.ndarray]:
  """Indices into `load_digits()` of each split: stratified, fixed by SPLIT_SEED."""
  labels = sklearn_datasets.load_digits().target
  train, validation = model_selection.train_test_split(
      np.arange(len(labels)), test_size=VALIDATION_FRACTION, stratify=labels,
      random_state=SPLIT_SEED)
  return {"train": train, "validation": validation}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits, upsampled to 32x32 RGB JPEGs."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(
                shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=[str(digit) for digit in range(10)]),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # the data ships with scikit-learn
    return {split: self._generate_examples(indices)
            for split, indices in split_indices().items()}

  def _generate_examples(self, indices: np.ndarray):
    digits = sklearn_datasets.load_digits()
    for index in indices:
      yield int(index), {"image": jpeg.encode(upsampled_image(digits.images[index])),
                         "label": int(digits.target[index])}
