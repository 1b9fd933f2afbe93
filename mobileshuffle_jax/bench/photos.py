"""The input pipeline's measurement, and the folder of JPEG photos it reads by default."""

from __future__ import annotations

import os
import tempfile

# The photo folder of `--input-pipeline photos`: ImageNet's typical sizes and JPEG quality.
PHOTO_SIZES = ((500, 375), (375, 500), (500, 333), (500, 500))
PHOTO_QUALITY = 90
PHOTOS_PER_CLASS = 96


def write_photo_folder(root: str, per_class: int = PHOTOS_PER_CLASS) -> None:
  """ROOT/{train,validation}/{china,flower}/*.JPEG: crops of scikit-learn's two photographs
  (427 x 640), each resized to one of `PHOTO_SIZES` and encoded like a camera's JPEG."""
  import numpy as np
  import PIL.Image
  from sklearn import datasets as sklearn_datasets

  rng = np.random.default_rng(0)
  photos = sklearn_datasets.load_sample_images()
  for split, count in (("train", per_class), ("validation", 1)):
    for name, photo in zip(("china", "flower"), photos.images):
      directory = os.path.join(root, split, name)
      os.makedirs(directory)
      height, width, _ = photo.shape
      for index in range(count):
        crop_height, crop_width = rng.integers(height // 2, height + 1), rng.integers(
            width // 2, width + 1)
        top, left = rng.integers(0, height - crop_height + 1), rng.integers(
            0, width - crop_width + 1)
        image = PIL.Image.fromarray(photo[top:top + crop_height, left:left + crop_width])
        image = image.resize(PHOTO_SIZES[index % len(PHOTO_SIZES)], PIL.Image.BICUBIC)
        image.save(os.path.join(directory, f"{index:04d}.JPEG"), quality=PHOTO_QUALITY)


def measure_input_pipeline(spec: dict) -> dict:
  """Training preprocessing of `input_pipeline` on spec['data'] ('photos': see
  `write_photo_folder`), prepared first into spec['data_dir'] or a temporary directory."""
  from mobileshuffle_jax import data_defaults, input_pipeline

  with tempfile.TemporaryDirectory(prefix="bench-input-") as scratch:
    config = data_defaults.default_data_config()
    config.name = spec["data"]
    config.data_dir = spec["data_dir"] or os.path.join(scratch, "tfds")
    if spec["data"] == "photos":
      config.name = "image_folder"
      config.image_folder = os.path.join(scratch, "photos")
      write_photo_folder(config.image_folder)
    config.image_size = spec["resolution"]
    input_pipeline.prepare(config)
    result = input_pipeline.measure_train_throughput(config, spec["batch"], spec["batches"])
  return {"framework": "input_pipeline", "data": spec["data"],
          "images_per_s": result.images_per_second,
          "images_per_cpu_s": result.images_per_cpu_second}
