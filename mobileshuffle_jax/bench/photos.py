"""The input pipeline's measurement, and the folder of JPEG photos it reads by default.

Every variant of `VARIANTS` is timed in one process, in turn, `rounds` times: the training
path (`input_pipeline.measure_train_throughput`) as configured by default, with the reduced
copy, and with the reduced copy and data echoing; the evaluation path
(`measure_eval_throughput`) by default and with the reduced copy; and each against plain
tf.data doing the work that this project's default did before its batches left the host as
uint8 (`plain_batches`).
"""

from __future__ import annotations

import os
import statistics
import tempfile

# The photo folder of `--input-pipeline photos`: ImageNet's typical sizes and JPEG quality.
PHOTO_SIZES = ((500, 375), (375, 500), (500, 333), (500, 500))
PHOTO_QUALITY = 90
# Enough for the evaluation path's timed batches, which read each image once.
PHOTOS_PER_CLASS = 512
# The reduced copy of the `prepared` variants: the README's recommended settings.
REDUCED = {"reduced_shorter_side": 256, "reduced_quality": 90}
# Each variant: its path ('train' or 'eval') and its config overrides, None for plain tf.data.
VARIANTS = {
    "plain_tfdata": ("train", None),
    "default": ("train", {}),
    "prepared": ("train", REDUCED),
    "prepared_echo2": ("train", {**REDUCED, "echo": 2}),
    "eval_plain_tfdata": ("eval", None),
    "eval_default": ("eval", {}),
    "eval_prepared": ("eval", REDUCED),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def plain_batches(data_config, path: str, batch_size: int):
  """Plain tf.data, as tutorials write it, doing what this project's pipeline did before its
  batches left the host as uint8: JPEGs decoded within the crop (training: an Inception crop
  from `sample_distorted_bounding_box`; evaluation: the centre crop), resized
  bilinearly, flipped (training), normalised to float32 with ImageNet's statistics; order
  not deterministic."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from mobileshuffle_jax import datasets

  if data_config.name == "image_folder":
    builder = datasets.image_folder.builder_for_root(data_config.image_folder,
                                                     data_config.data_dir)
  else:
    builder = tfds.builder(data_config.name, data_dir=data_config.data_dir)
  image_key, label_key = builder.info.supervised_keys
  size = [data_config.image_size] * 2
  training = path == "train"
  split = data_config.train_split if training else data_config.eval_split
  examples = builder.as_dataset(split=split, shuffle_files=training,
                                decoders={image_key: tfds.decode.SkipDecoding()})
  if training:
    examples = examples.repeat().shuffle(data_config.shuffle_buffer)

  def crop_window(shape):
    if training:
      begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
          shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), min_object_covered=0.0,
          aspect_ratio_range=tuple(data_config.train_crop_aspect_range),
          area_range=tuple(data_config.train_crop_area_range), max_attempts=10,
          use_image_if_no_bounding_boxes=True)
      return tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    side = tf.cast(data_config.eval_crop_ratio * tf.cast(tf.minimum(shape[0], shape[1]),
                                                         tf.float32), tf.int32)
    return tf.stack([(shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2, side, side])

  def preprocess(example):
    image_bytes = example[image_key]
    image = tf.io.decode_and_crop_jpeg(image_bytes,
                                       crop_window(tf.image.extract_jpeg_shape(image_bytes)),
                                       channels=3)
    image = tf.image.resize(image, size, method="bilinear")
    if training:
      image = tf.image.random_flip_left_right(image)
    image = (image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return {"images": image, "labels": example[label_key]}

  examples = examples.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  return examples.batch(batch_size, drop_remainder=True).prefetch(
      tf.data.AUTOTUNE).as_numpy_iterator()


def measure_input_pipeline(spec: dict) -> dict:
  """Every one of `VARIANTS` on spec['data'] ('photos': see `write_photo_folder`), prepared
  first into spec['data_dir'] or a temporary directory; medians over spec['rounds']."""
  from mobileshuffle_jax import data_defaults, input_pipeline

  with tempfile.TemporaryDirectory(prefix="bench-input-") as scratch:
    config = data_defaults.default_data_config()
    config.name = spec["data"]
    config.data_dir = spec["data_dir"] or os.path.join(scratch, "tfds")
    if spec["data"] == "photos":
      config.name = "image_folder"
      config.image_folder = os.path.join(scratch, "photos")
      # Evaluation reads the training images: the validation split holds a few.
      config.eval_split = config.train_split
      write_photo_folder(config.image_folder)
    config.image_size = spec["resolution"]
    # Echo windows of 4 batches: small against the timed span (decoding falls evenly in it).
    config.echo_window = 2 * spec["batch"]
    configs = {}
    for name, (_, overrides) in VARIANTS.items():
      configs[name] = config.copy_and_resolve_references()
      configs[name].update(overrides or {})
      # The reduced copy is made once, then reused; every variant has the same examples.
      info = input_pipeline.prepare(configs[name])
    eval_batches = min(spec["batches"], info.num_eval_examples // spec["batch"] - 1)

    def measure(name):
      path, overrides = VARIANTS[name]
      batches = spec["batches"] if path == "train" else eval_batches
      if overrides is None:
        return input_pipeline.measure_batches(
            plain_batches(configs[name], path, spec["batch"]), spec["batch"], batches)
      measure_path = (input_pipeline.measure_train_throughput if path == "train"
                      else input_pipeline.measure_eval_throughput)
      return measure_path(configs[name], spec["batch"], batches)

    rounds = [{name: measure(name) for name in VARIANTS} for _ in range(spec["rounds"])]
  return {"framework": "input_pipeline", "data": spec["data"], "batch": spec["batch"],
          "train_batches": spec["batches"], "eval_batches": eval_batches,
          "rounds": spec["rounds"], "reduced": REDUCED, "echo_window": config.echo_window,
          "variants": combine_variant_rounds(rounds)}


def combine_variant_rounds(rounds: list[dict]) -> dict:
  """{variant: {'path', 'images_per_s', 'images_per_cpu_s', 'vs_plain_cpu', 'vs_plain_wall',
  'by_round'}} from one {variant: Throughput} per round: medians over the rounds, each ratio
  to the plain tf.data variant of the same path taken within a round."""
  plain = {path: name for name, (path, overrides) in VARIANTS.items() if overrides is None}
  combined = {}
  for name, (path, _) in VARIANTS.items():
    measured = [r[name] for r in rounds]
    baseline = [r[plain[path]] for r in rounds]
    combined[name] = {
        "path": path,
        "images_per_s": statistics.median(m.images_per_second for m in measured),
        "images_per_cpu_s": statistics.median(m.images_per_cpu_second for m in measured),
        "vs_plain_cpu": statistics.median(m.images_per_cpu_second / b.images_per_cpu_second
                                          for m, b in zip(measured, baseline)),
        "vs_plain_wall": statistics.median(m.images_per_second / b.images_per_second
                                           for m, b in zip(measured, baseline)),
        "by_round": [m.images_per_cpu_second for m in measured]}
  return combined
