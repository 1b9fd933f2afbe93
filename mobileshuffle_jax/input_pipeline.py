"""Input pipeline: TFDS data sets to sharded, deterministic, resumable numpy batches.

`prepare(config.data)` builds the data set once (scikit-learn digits, a folder of images, or
any TFDS image-classification data set such as imagenet2012 from its manually downloaded
tars) and returns its `DatasetInfo`. Then:

- `train_batches` yields `{'images', 'labels'}` forever. Each host reads its own slice of
  the split. Epoch e is a shuffle of that slice seeded by (seed, e), and the augmentation
  of an example is seeded by (seed, its position in the stream), so the batches are a
  function of (seed, step) alone: a pipeline started at step k yields exactly what an
  uninterrupted one yields from step k on, and starting there only reads (never decodes)
  the records of the current epoch that come before step k.
- With `data.echo` = k > 1 (data echoing, Choi et al. 2019), each record is decoded once and
  gives k training images, each with its own crop and flip, seeded by (seed, record
  position, copy). The k images of each window of `data.echo_window` records are shuffled
  by a permutation seeded by (seed, shard, window) and cut into batches. Batches stay a
  function of (seed, step): starting at step k reads (never decodes) the records before
  k's window, then decodes that whole window.
- `eval_batches` yields `{'images', 'labels', 'mask'}`: every host yields the same number
  of batches (`num_eval_batches`), padded with masked dummies, so that every real example
  counts exactly once whatever the batch size and host count.

Training images are decoded only within a random crop (`sample_distorted_bounding_box` plus
`decode_and_crop_jpeg`), resized bilinearly (as TF-slim, whose MobileNet recipe this
follows) and flipped; evaluation images are centre-cropped to `eval_crop_ratio` of their
shorter side, then resized. Both leave the host as uint8 pixels (rounded), a quarter of
float32's bytes: the jitted train and evaluation steps normalise them on the devices with
`preprocessing.normalize`, the same definition a predictor and the exports apply.

With `data.reduced_shorter_side` = N > 0, `prepare` also makes a reduced copy of the data set
once (`datasets.reduced`: shorter sides of at most N pixels, JPEG quality
`data.reduced_quality`), and both splits are read from it: the same pipeline, fewer pixels
to decode. A copy made with other settings is refused (DataError), never silently reused.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
from typing import Any, Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from mobileshuffle_jax import datasets, timing
from mobileshuffle_jax.datasets import reduced
from mobileshuffle_jax.dataset_info import DataError, DatasetInfo
from mobileshuffle_jax.preprocessing import NORMALIZATIONS

log = logging.getLogger("mobileshuffle_jax")


def _hide_accelerators_from_tensorflow() -> None:
  """TensorFlow only feeds the input pipeline: every accelerator belongs to JAX."""
  try:
    for device_type in ("GPU", "TPU"):
      tf.config.set_visible_devices([], device_type)
  except RuntimeError:  # raised once TensorFlow has initialised its devices
    log.warning("TensorFlow was initialised before mobileshuffle_jax.input_pipeline was "
                    "imported and may hold accelerator memory: import it first")


_hide_accelerators_from_tensorflow()
# tfds's progress bars follow the libraries' verbosity (`runtime.quiet_libraries`).
if absl_logging.get_verbosity() < absl_logging.WARNING:
  tfds.disable_progress_bar()


# ImageNet distributes these only to registered users; tfds's builder reads them unextracted.
IMAGENET_TARS = {"train": "ILSVRC2012_img_train.tar", "validation": "ILSVRC2012_img_val.tar"}
# Attempts at a crop within the configured ranges before the whole image is used instead.
CROP_ATTEMPTS = 10
# The whole image as the one "object" box: crops are then constrained by the ranges alone.
_WHOLE_IMAGE_BOX = (((0.0, 0.0, 1.0, 1.0),),)


@dataclasses.dataclass(frozen=True)
class Throughput:
  """Preprocessing speed (see `measure_train_throughput`, `measure_eval_throughput`)."""

  images_per_second: float  # wall clock, with as many cores as tf.data took
  images_per_cpu_second: float  # per core: images over the CPU time of the whole process


def prepare(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  """Builds the data set into its tfds data_dir unless already there; returns its info.

  An image folder's prepared copy is rebuilt when the folder's contents differ from those it
  was prepared from (see `_drop_stale_image_folder_copy`).

  Raises DataError with instructions when the data cannot be had (unknown name, missing
  ImageNet tars or image folder, a download that fails, a folder with an empty class), and
  when the reduced copy that the config asks for exists with other settings.

  With `data.reduced_shorter_side` > 0 it then makes the reduced copy, unless one of the
  data set as it is now exists already.
  """
  _check_config(data_config)
  builder = _builder(data_config)
  if builder.name == "image_folder":
    builder = _drop_stale_image_folder_copy(data_config, builder)
  if not builder.is_prepared():
    if builder.name == "imagenet2012":
      _check_imagenet_tars(data_config, builder)
    download_config = tfds.download.DownloadConfig(manual_dir=data_config.manual_dir)
    try:
      builder.download_and_prepare(download_config=download_config)
    except Exception as error:  # pylint: disable=broad-except
      # Any failure here (network, disk, malformed source) needs the same advice.
      raise DataError(_preparation_failure(data_config, builder, error)) from error
  info = _dataset_info(data_config, builder)
  if info.skipped_files:
    log.warning("%d unreadable file(s) were skipped when %s was prepared; they are "
                    "listed in %s", len(info.skipped_files), data_config.image_folder,
                    os.path.join(builder.data_dir, "metadata.json"))
  if data_config.get("reduced_shorter_side", 0):
    _prepare_reduced_copy(data_config, builder)
  return info


def train_batches(data_config: ml_collections.ConfigDict, *, global_batch_size: int,
                  start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """This host's training batches from `start_step` on, forever.

  Yields {'images': uint8 [global_batch_size // process_count, H, W, 3],
  'labels': int32 [global_batch_size // process_count]}: the rows of the global batch
  that this host's devices hold, which are the sub-batches of its input shards. With
  `data.echo` = k, an epoch of steps (as many images as the split holds) decodes 1 / k of it.
  """
  _check_config(data_config)
  host_batch_size = _host_batch_size(global_batch_size, process_index, process_count)
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0")
  shard_count = data_config.get("input_shards", 0) or process_count
  if shard_count % process_count or global_batch_size % shard_count:
    raise ValueError(f"data.input_shards={shard_count} must be a multiple of the "
                     f"process count {process_count} and divide the global batch "
                     f"{global_batch_size}")
  shards_per_host = shard_count // process_count
  builder = _prepared_builder(data_config)
  shard_batches = [
      _shard_batches(data_config, builder, shard_index, shard_count,
                     global_batch_size // shard_count, start_step)
      for shard_index in range(process_index * shards_per_host,
                               (process_index + 1) * shards_per_host)]
  batches = shard_batches[0]
  if shards_per_host > 1:
    batches = tf.data.Dataset.zip(tuple(shard_batches)).map(
        lambda *parts: {key: tf.concat([part[key] for part in parts], axis=0)
                        for key in parts[0]})
  batches = batches.prefetch(tf.data.AUTOTUNE)
  return batches.with_options(_deterministic_options()).as_numpy_iterator()


def _shard_batches(data_config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
                   shard_index: int, shard_count: int, batch_size: int,
                   start_step: int) -> tf.data.Dataset:
  """Batches of one input shard from `start_step` on: a function of (seed, step) alone."""
  image_key, label_key = _feature_keys(builder)
  shard_split = tfds.even_splits(data_config.train_split, n=shard_count)[shard_index]
  shard_examples = _num_examples(builder, shard_split)
  if shard_examples == 0:
    raise DataError(f"{data_config.name!r} split {data_config.train_split!r} leaves no "
                    f"training examples to input shard {shard_index} of {shard_count}")
  records = _encoded_records(builder, shard_split, image_key, label_key)
  if data_config.cache:
    records = records.cache()
  seed = int(data_config.seed)
  echo = int(data_config.get("echo", 1))
  window = int(data_config.get("echo_window", 1)) if echo > 1 else 1
  if echo > 1 and (window * echo) % batch_size:
    raise ValueError(f"data.echo_window={window} x data.echo={echo} must be a multiple of "
                     f"the batch of each input shard, {batch_size}")

  def epoch_records(epoch):
    # A fresh shuffle per epoch, seeded by (seed, epoch): every example once per epoch, and
    # any epoch can be started without replaying the ones before it. The files are read in
    # a fixed order, but tfds wrote the examples into them in a random order, so a buffer
    # shuffle re-randomises each epoch (locally: an example moves by up to the buffer size).
    epoch_seed = tf.random.stateless_uniform(
        [], seed=tf.stack([tf.constant(seed, tf.int64), epoch]), minval=0,
        maxval=2**31 - 1, dtype=tf.int64)
    return records.shuffle(data_config.shuffle_buffer, seed=epoch_seed)

  # This shard's training images before start_step: whole windows of records, then images
  # within one window (without echo, windows of one record yielded once).
  first_window, offset_in_window = divmod(start_step * batch_size, window * echo)
  start_epoch, offset_in_epoch = divmod(first_window * window, shard_examples)
  records_from = tf.data.Dataset.counter(start_epoch).flat_map(epoch_records)
  # Skipped records are never decoded: resuming costs a read of part of one epoch.
  records_from = records_from.skip(offset_in_epoch)

  def augmentation_seed(position):
    # Unique over shards, so no two images anywhere share their augmentation.
    return tf.stack([tf.constant(seed, tf.int64), position * shard_count + shard_index])

  if echo == 1:
    def preprocess(position, record):
      image_bytes, label = record
      return {"images": _train_image(image_bytes, augmentation_seed(position), data_config),
              "labels": label}

    images = records_from.enumerate(start=first_window).map(
        preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return images.batch(batch_size, drop_remainder=True)

  def augment(image, echoed_position):
    return _echoed_train_image(image, augmentation_seed(echoed_position), data_config)

  window_seed = tf.stack([tf.constant(seed, tf.int64), tf.constant(shard_index, tf.int64)])
  batches = _echoed_batches(records_from, first_window * window, window, echo, batch_size,
                            augment, window_seed)
  # Only the first window's images are made before they are skipped.
  return batches.skip(offset_in_window // batch_size)


def num_eval_batches(info_or_config: DatasetInfo | ml_collections.ConfigDict,
                     global_batch_size: int) -> int:
  """How many batches `eval_batches` yields on every host: ceil(examples / batch size).

  Independent of the host count, since each host holds at most ceil(examples / hosts).
  """
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size={global_batch_size} must be >= 1")
  if isinstance(info_or_config, DatasetInfo):
    info = info_or_config
  else:
    info = _dataset_info(info_or_config, _prepared_builder(info_or_config))
  return -(-info.num_eval_examples // global_batch_size)


def eval_batches(data_config: ml_collections.ConfigDict, *, global_batch_size: int,
                 process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """This host's share of the eval split, padded to `num_eval_batches` full batches.

  Yields {'images': uint8 [B, H, W, 3], 'labels': int32 [B], 'mask': float32 [B]} with
  B = global_batch_size // process_count; mask is 1 for real examples, 0 for padding.
  """
  _check_config(data_config)
  host_batch_size = _host_batch_size(global_batch_size, process_index, process_count)
  builder = _prepared_builder(data_config)
  image_key, label_key = _feature_keys(builder)
  info = _dataset_info(data_config, builder)
  # Sub-splits differ by at most one example, so ceil(N / G) batches hold every host's.
  host_split = tfds.even_splits(data_config.eval_split, n=process_count)[process_index]
  host_examples = _num_examples(builder, host_split)
  padding = num_eval_batches(info, global_batch_size) * host_batch_size - host_examples

  def preprocess(image_bytes, label):
    return {"images": _eval_image(image_bytes, data_config), "labels": label,
            "mask": tf.constant(1.0)}

  size = data_config.image_size
  dummy = {"images": tf.zeros([size, size, 3], tf.uint8), "labels": tf.constant(0, tf.int32),
           "mask": tf.constant(0.0)}
  examples = tf.data.Dataset.from_tensors(dummy).repeat(padding)
  if host_examples:  # tfds refuses to read an empty sub-split (more hosts than examples)
    examples = _encoded_records(builder, host_split, image_key, label_key).map(
        preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).concatenate(examples)
  batches = examples.batch(host_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return batches.with_options(_deterministic_options()).as_numpy_iterator()


def measure_train_throughput(data_config: ml_collections.ConfigDict, batch_size: int,
                             num_batches: int) -> Throughput:
  """Times `num_batches` training batches of one host after a warm-up batch.

  The warm-up absorbs tracing and the first shuffle-buffer fill (with echo, the first
  window's decoding: time many windows' worth of batches). `images_per_cpu_second` divides
  by the CPU time of the whole process (all tf.data threads), so it measures the cost per
  core independently of how many cores were free.
  """
  return measure_batches(train_batches(data_config, global_batch_size=batch_size), batch_size,
                         num_batches)


def measure_eval_throughput(data_config: ml_collections.ConfigDict, batch_size: int,
                            num_batches: int) -> Throughput:
  """`measure_train_throughput` for evaluation batches of `data_config.eval_split`, which
  must hold `num_batches` + 1 full batches (no padding is timed)."""
  full_batches = _num_examples(_prepared_builder(data_config),
                               data_config.eval_split) // batch_size
  if full_batches < num_batches + 1:
    raise ValueError(f"data.eval_split={data_config.eval_split!r} holds {full_batches} full "
                     f"batches of {batch_size}; timing {num_batches} needs {num_batches + 1}")
  return measure_batches(eval_batches(data_config, global_batch_size=batch_size), batch_size,
                         num_batches)


def measure_batches(batches: Iterator[Any], batch_size: int, num_batches: int) -> Throughput:
  """Times `num_batches` of `batches` (of `batch_size` images each) after a warm-up batch."""
  next(batches)

  def read_batches():
    for _ in range(num_batches):
      next(batches)

  # One timed span over all batches, not a median per batch: prefetched batches arrive in
  # bursts, and the CPU time must cover every tf.data thread's work in between.
  elapsed = timing.measure(read_batches, repeats=1, warmup=0)
  images = batch_size * num_batches
  return Throughput(images_per_second=images / elapsed.wall_s,
                    images_per_cpu_second=images / elapsed.cpu_s)


def _check_config(data_config: ml_collections.ConfigDict) -> None:
  """Config mistakes, raised before any data is touched."""
  if data_config.normalization not in NORMALIZATIONS:
    raise ValueError(f"data.normalization={data_config.normalization!r} must be one of "
                     f"{sorted(NORMALIZATIONS)}")
  if data_config.image_size < 1:
    raise ValueError(f"data.image_size={data_config.image_size} must be >= 1")
  if not 0.0 < data_config.eval_crop_ratio <= 1.0:
    raise ValueError(f"data.eval_crop_ratio={data_config.eval_crop_ratio} must be in (0, 1]")
  low, high = data_config.train_crop_area_range
  if not 0.0 < low <= high <= 1.0:
    raise ValueError(f"data.train_crop_area_range={tuple(data_config.train_crop_area_range)} "
                     "must satisfy 0 < low <= high <= 1")
  low, high = data_config.train_crop_aspect_range
  if not 0.0 < low <= high:
    raise ValueError(f"data.train_crop_aspect_range="
                     f"{tuple(data_config.train_crop_aspect_range)} must satisfy 0 < low <= high")
  if data_config.shuffle_buffer < 1:
    raise ValueError(f"data.shuffle_buffer={data_config.shuffle_buffer} must be >= 1")
  if data_config.get("reduced_shorter_side", 0) < 0:
    raise ValueError(f"data.reduced_shorter_side={data_config.reduced_shorter_side} must be "
                     ">= 0 (0: read the data set itself)")
  if not 1 <= data_config.get("reduced_quality", 90) <= 100:
    raise ValueError(f"data.reduced_quality={data_config.reduced_quality} must be in [1, 100]")
  for field in ("echo", "echo_window"):
    if data_config.get(field, 1) < 1:
      raise ValueError(f"data.{field}={data_config[field]} must be >= 1")


def _host_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"process_count={process_count}")
  return global_batch_size // process_count


def _builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The tfds builder that `data_config.name` designates (nothing prepared or read yet)."""
  name = data_config.name
  data_dir = data_config.data_dir or None
  if name == "image_folder":
    root = data_config.image_folder
    if not root or not os.path.isdir(root):
      raise DataError(f"data.name='image_folder' needs data.image_folder set to a directory "
                      f"holding train/CLASS/<images> and validation/CLASS/<images>; got "
                      f"{root!r}")
    try:
      return datasets.image_folder.builder_for_root(root, data_dir)
    except FileNotFoundError as error:
      raise DataError(str(error)) from error
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError:
    # Registered by importing mobileshuffle_jax.datasets, 'digits' and 'image_folder' are in
    # tfds's list too.
    close = difflib.get_close_matches(name, tfds.list_builders(with_community_datasets=False))
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise DataError(f"unknown dataset data.name={name!r}: expected 'digits', 'image_folder' or "
                    f"the name of a TFDS image-classification dataset.{hint}") from None


def _drop_stale_image_folder_copy(data_config: ml_collections.ConfigDict,
                                  builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """`builder`, or an unprepared one after deleting a copy that no longer matches its folder.

  The folder's fingerprint (a walk of its directories, no image opened) is checked on every
  run, so new files, classes or a new validation/ are never silently ignored; an unchanged
  folder keeps its copy. A layout that preparation would refuse is refused here first,
  before anything is deleted.
  """
  root = builder.builder_config.root_dir
  try:
    current = datasets.image_folder.folder_contents(root)
  except (OSError, ValueError) as error:
    raise DataError(f"image folder {root!r} cannot be prepared: {error}") from error
  if not builder.is_prepared():
    return builder
  recorded = dict(builder.info.metadata.items()).get(datasets.image_folder.CONTENTS_KEY)
  if recorded is not None and recorded["sha256"] == current["sha256"]:
    return builder
  log.warning("Image folder %s changed since it was prepared into %s (%s): deleting that "
                  "copy and preparing it again", root, builder.data_dir,
                  datasets.image_folder.describe_changes(recorded, current))
  builder.data_path.rmtree()
  return _builder(data_config)


def _prepared_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The builder that batches are read from: the data set's, or that of its reduced copy
  when the config asks for one; DataError unless it is prepared and up to date."""
  builder = _builder(data_config)
  call_prepare = "call mobileshuffle_jax.input_pipeline.prepare(config.data) first"
  if not builder.is_prepared():
    raise DataError(f"{data_config.name!r} is not prepared in {builder.data_dir_root}: "
                    f"{call_prepare}")
  if not data_config.get("reduced_shorter_side", 0):
    return builder
  copy = _reduced_builder(data_config, builder)
  if not copy.is_prepared():
    raise DataError(f"the reduced copy of {data_config.name!r} is not made yet in "
                    f"{copy.data_dir_root}: {call_prepare}")
  _check_reduced_settings(data_config, copy)
  if not _is_copy_of(copy, builder):
    raise DataError(f"the reduced copy {copy.data_dir} was made from another version of "
                    f"{data_config.name!r}: {call_prepare}, which makes it again")
  return copy


def _reduced_builder(data_config: ml_collections.ConfigDict,
                     source: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  image_key, label_key = _feature_keys(source)
  return reduced.builder_for_source(source, image_key, label_key,
                                    data_config.reduced_shorter_side,
                                    data_config.reduced_quality)


def _check_reduced_settings(data_config: ml_collections.ConfigDict,
                            copy: tfds.core.DatasetBuilder) -> None:
  """DataError, naming both, unless `copy` was made with the settings the config asks for."""
  recorded = dict(copy.info.metadata.items()).get(reduced.SETTINGS_KEY)
  asked = reduced.settings(data_config.reduced_shorter_side, data_config.reduced_quality)
  if recorded == asked:
    return
  made_with = reduced.describe(recorded) if recorded else "settings it does not record"
  keep = (f"set them to {recorded['shorter_side']} and {recorded['quality']} to read this "
          "copy, or " if recorded else "")
  raise DataError(f"the reduced copy {copy.data_dir} was made with {made_with}, but the "
                  f"config asks for data.reduced_shorter_side={asked['shorter_side']} and "
                  f"data.reduced_quality={asked['quality']}: {keep}delete that directory to "
                  "make the copy again with these settings")


def _is_copy_of(copy: tfds.core.DatasetBuilder, source: tfds.core.DatasetBuilder) -> bool:
  recorded = dict(copy.info.metadata.items()).get(reduced.SOURCE_KEY) or {}
  return recorded.get("sha256") == reduced.source_fingerprint(source)


def _prepare_reduced_copy(data_config: ml_collections.ConfigDict,
                          source: tfds.core.DatasetBuilder) -> None:
  """Makes the reduced copy of the prepared `source` unless an up-to-date one exists.

  A copy with other settings is refused; a copy of an older source (an image folder that
  changed since) is deleted and made again, as the source itself was.
  """
  copy = _reduced_builder(data_config, source)
  if copy.is_prepared():
    _check_reduced_settings(data_config, copy)
    if _is_copy_of(copy, source):
      return
    log.warning("%s changed since its reduced copy %s was made: deleting that copy and "
                    "making it again", data_config.name, copy.data_dir)
    copy.data_path.rmtree()
    copy = _reduced_builder(data_config, source)
  log.info("Making the reduced copy of %s (%s) in %s", data_config.name,
               reduced.describe(reduced.settings(data_config.reduced_shorter_side,
                                                 data_config.reduced_quality)),
               copy.data_dir)
  try:
    copy.download_and_prepare()
  except Exception as error:  # pylint: disable=broad-except
    raise DataError(f"could not make the reduced copy of {data_config.name!r} in "
                    f"{copy.data_dir_root}: {type(error).__name__}: {error}") from error


def _feature_keys(builder: tfds.core.DatasetBuilder) -> tuple[str, str]:
  """(image feature, label feature): the supervised keys, else 'image' and 'label'."""
  keys = builder.info.supervised_keys
  if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
    keys = ("image", "label")
  image_key, label_key = keys
  features = builder.info.features
  if not (image_key in features and isinstance(features[image_key], tfds.features.Image)
          and label_key in features
          and isinstance(features[label_key], tfds.features.ClassLabel)):
    raise DataError(f"{builder.name!r} is not an image-classification dataset: it needs an "
                    f"Image feature and a ClassLabel feature (features: {list(features)})")
  return image_key, label_key


def _num_examples(builder: tfds.core.DatasetBuilder, split: Any) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError) as error:
    raise DataError(f"{builder.name!r} as prepared in {builder.data_dir} has no split "
                    f"{split!s}: {error} (its splits: {sorted(builder.info.splits)})") from error


def _dataset_info(data_config: ml_collections.ConfigDict,
                  builder: tfds.core.DatasetBuilder) -> DatasetInfo:
  _, label_key = _feature_keys(builder)
  skipped = (builder.info.metadata or {}).get("skipped_files", {})
  return DatasetInfo(
      name=data_config.name,
      num_classes=builder.info.features[label_key].num_classes,
      num_train_examples=_num_examples(builder, data_config.train_split),
      num_eval_examples=_num_examples(builder, data_config.eval_split),
      class_names=tuple(builder.info.features[label_key].names),
      skipped_files=tuple(path for split in sorted(skipped) for path in skipped[split]),
  )


def _imagenet_instructions(builder: tfds.core.DatasetBuilder) -> str:
  return (
      "imagenet2012 is prepared from the ILSVRC2012 archives, which ImageNet distributes "
      "only to registered users:\n"
      "  1. register at https://image-net.org/download-images and download, for ILSVRC2012,\n"
      f"       {IMAGENET_TARS['train']} (138 GiB) and {IMAGENET_TARS['validation']} (6.3 GiB);\n"
      "  2. put both files, unextracted, in one directory, say /data/ILSVRC2012;\n"
      "  3. pass it as data.manual_dir (--config.data.manual_dir=/data/ILSVRC2012), or "
      "prepare once by hand with\n"
      f"       tfds build imagenet2012 --manual_dir=/data/ILSVRC2012 "
      f"--data_dir={builder.data_dir_root}\n"
      f"Preparing writes about 150 GiB of records to {builder.data_dir_root}/imagenet2012 "
      "(data.data_dir) and takes hours; later runs reuse them and need no manual_dir.")


def _check_imagenet_tars(data_config: ml_collections.ConfigDict,
                         builder: tfds.core.DatasetBuilder) -> None:
  """DataError with instructions unless manual_dir holds the tars of the configured splits."""
  manual_dir = data_config.manual_dir
  split_names = set(re.findall(r"[A-Za-z_]\w*", f"{data_config.train_split} "
                                                f"{data_config.eval_split}"))
  needed = [tar for split, tar in IMAGENET_TARS.items() if split in split_names]
  if not manual_dir:
    problem = (f"imagenet2012 is not prepared in {builder.data_dir_root} and "
               "data.manual_dir is unset.")
  else:
    missing = [tar for tar in needed if not os.path.isfile(os.path.join(manual_dir, tar))]
    if not missing:
      return
    problem = (f"imagenet2012 is not prepared in {builder.data_dir_root} and "
               f"data.manual_dir={manual_dir!r} lacks {' and '.join(missing)}.")
  raise DataError(f"{problem}\n{_imagenet_instructions(builder)}")


def _preparation_failure(data_config: ml_collections.ConfigDict,
                         builder: tfds.core.DatasetBuilder, error: Exception) -> str:
  message = (f"could not prepare {data_config.name!r} in {builder.data_dir_root}: "
             f"{type(error).__name__}: {error}\n")
  if builder.name == "imagenet2012":
    return message + _imagenet_instructions(builder)
  if builder.name in ("digits", "image_folder"):
    return message
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    return (message + "This dataset needs a manual download; put the files in a directory "
            f"and set data.manual_dir to it:\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  return (message + "Without internet access here, prepare it on a machine that has it "
          f"(tfds build {builder.name} --data_dir=DIR) and copy DIR/{builder.name} into "
          f"{builder.data_dir_root} (data.data_dir).")


def _encoded_records(builder: tfds.core.DatasetBuilder, split: Any, image_key: str,
                     label_key: str) -> tf.data.Dataset:
  """(encoded image bytes, int32 label) of `split` in a fixed order."""
  read_config = tfds.ReadConfig(try_autocache=False, options=_deterministic_options())
  records = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config,
                               decoders={image_key: tfds.decode.SkipDecoding()})
  return records.map(lambda example: (example[image_key], tf.cast(example[label_key], tf.int32)),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _deterministic_options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True  # batches must be a function of (seed, step) alone
  # Parallelism comes from tf.data's parallel map; single-threaded ops avoid oversubscription.
  options.threading.max_intra_op_parallelism = 1
  return options


def _decode_and_crop(image_bytes: tf.Tensor, crop_window_fn) -> tf.Tensor:
  """uint8 RGB pixels of the window `crop_window_fn(shape)` = [y, x, height, width].

  JPEGs (all that this project's builders store) decode only the window. Other encodings,
  which some tfds data sets use (cifar10: PNG), decode fully and are then cropped.
  """

  def crop_jpeg():
    window = crop_window_fn(tf.image.extract_jpeg_shape(image_bytes))
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def crop_other():
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    y, x, height, width = tf.unstack(crop_window_fn(tf.shape(image)))
    return image[y:y + height, x:x + width]

  image = tf.cond(tf.io.is_jpeg(image_bytes), crop_jpeg, crop_other)
  image.set_shape([None, None, 3])
  return image


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 `image` resized bilinearly to size x size, rounded back to uint8 pixels."""
  # The same pixels as resizing the uint8 image, whose kernel converts every pixel it reads:
  # converting them all first measured faster.
  resized = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear")
  # Bilinear weights are convex: within 0..255 already, so adding 0.5 and truncating rounds
  # (halves up) in one pass over the pixels fewer than round-then-saturate.
  return tf.cast(resized + 0.5, tf.uint8)


def _random_crop_window(image_shape: tf.Tensor, crop_seed: tf.Tensor,
                        data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """[y, x, height, width] of a random crop within the configured area and aspect ranges."""
  # min_object_covered=0: the configured area range alone bounds the crop's area.
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=tf.constant(_WHOLE_IMAGE_BOX), seed=crop_seed,
      min_object_covered=0.0, aspect_ratio_range=tuple(data_config.train_crop_aspect_range),
      area_range=tuple(data_config.train_crop_area_range), max_attempts=CROP_ATTEMPTS,
      use_image_if_no_bounding_boxes=True)
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def _resize_and_flip(crop: tf.Tensor, flip_seed: tf.Tensor,
                     data_config: ml_collections.ConfigDict) -> tf.Tensor:
  image = _resize(crop, data_config.image_size)
  if data_config.train_flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return image


def _train_image(image_bytes: tf.Tensor, example_seed: tf.Tensor,
                 data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """A random crop of the encoded image (a JPEG's decoded alone), resized and flipped."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
  crop = _decode_and_crop(image_bytes,
                          lambda shape: _random_crop_window(shape, crop_seed, data_config))
  return _resize_and_flip(crop, flip_seed, data_config)


def _echoed_train_image(image: tf.Tensor, example_seed: tf.Tensor,
                        data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """`_train_image` of an image decoded already (the same crop distribution)."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
  y, x, height, width = tf.unstack(_random_crop_window(tf.shape(image), crop_seed, data_config))
  return _resize_and_flip(image[y:y + height, x:x + width], flip_seed, data_config)


def _echoed_batches(records: tf.data.Dataset, first_record: int, window: int, echo: int,
                    batch_size: int, augment, window_seed: tf.Tensor) -> tf.data.Dataset:
  """Batches {'images', 'labels'} of `records`, each decoded once and augmented `echo`
  times, `augment(image, echoed_position)` with echoed_position = record position * echo +
  copy, then shuffled within each window of `window` records by a permutation seeded by
  `window_seed` and the window's index alone, and cut into batches. `records` starts at
  record `first_record`, the first of its window; window * echo is a multiple of
  `batch_size`, so that batches are rows of the shuffled window and not copied again."""

  def decode_and_augment(record_position, record):
    image_bytes, label = record
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    copies = [augment(image, record_position * echo + copy) for copy in range(echo)]
    return {"images": tf.stack(copies), "labels": tf.fill([echo], label)}

  def shuffled_batches(index, window_images):
    # Independent of the other windows and of the augmentation: any window can start alone.
    order = tf.random.experimental.stateless_shuffle(
        tf.range(window * echo), seed=tf.random.experimental.stateless_fold_in(window_seed,
                                                                               index))

    def batches(value):  # [window, echo, ...] -> [batches in the window, batch_size, ...]
      rows = tf.gather(tf.reshape(value, tf.concat([[window * echo], tf.shape(value)[2:]], 0)),
                       order)
      return tf.reshape(rows, tf.concat([[-1, batch_size], tf.shape(rows)[1:]], 0))

    return tf.data.Dataset.from_tensor_slices(
        {key: batches(value) for key, value in window_images.items()})

  augmented = records.enumerate(start=first_record).map(
      decode_and_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  windows = augmented.batch(window, drop_remainder=True)
  return windows.enumerate(start=first_record // window).flat_map(shuffled_batches)


def _eval_image(image_bytes: tf.Tensor, data_config: ml_collections.ConfigDict) -> tf.Tensor:

  def center_crop_window(image_shape):
    height, width = image_shape[0], image_shape[1]
    # A square of eval_crop_ratio x the shorter side (0.875 = the usual 224 of 256).
    side = tf.cast(data_config.eval_crop_ratio * tf.cast(tf.minimum(height, width), tf.float32),
                   tf.int32)
    side = tf.maximum(side, 1)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])

  return _resize(_decode_and_crop(image_bytes, center_crop_window), data_config.image_size)
