"""A reduced-resolution copy of a prepared tfds image data set: cheaper JPEGs to decode.

Decoding a JPEG costs about in proportion to its pixels, and training at 224 px rarely needs
ImageNet's 500 x 375 photos whole. The copy (`DATA_DIR/reduced/SOURCE/1.0.0`, next to its
source) holds every split of the source with the same labels and class names. Each image
whose shorter side exceeds `shorter_side` is resized so that its shorter side equals it
(PIL, bicubic with antialiasing, after decoding JPEGs at the coarsest DCT scale that still
covers the new size) and encoded as a JPEG of `quality` with 4:2:0 chroma, as cameras write
them; every other image is kept byte for byte.

One copy per source, wherever the settings: its metadata records them (SETTINGS_KEY) and a
fingerprint of the source it was made from (SOURCE_KEY), which `input_pipeline` compares
with the config (a copy made with other settings is refused) and with the source (a copy of
an older source is made again).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import io
import itertools
import json
import re

import PIL.Image
import tensorflow_datasets as tfds

from mobileshuffle_jax.datasets import image_folder, jpeg

SETTINGS_KEY = "reduced_settings"
SOURCE_KEY = "source"
# JPEG's chroma subsampling of re-encoded images: ImageNet's and cameras' own.
CHROMA_SUBSAMPLING = "4:2:0"


@dataclasses.dataclass
class ReducedConfig(tfds.core.BuilderConfig):
  """The copy of one source data set (named after it) and the settings it is made with."""

  shorter_side: int = 0
  quality: int = 0


def settings(shorter_side: int, quality: int) -> dict:
  """The settings as a copy's metadata records them."""
  return {"shorter_side": int(shorter_side), "quality": int(quality)}


def describe(recorded: dict) -> str:
  return f"shorter side {recorded['shorter_side']} px and JPEG quality {recorded['quality']}"


def source_fingerprint(source: tfds.core.DatasetBuilder) -> str:
  """A digest of what the source holds: its name and version, each split's example and
  byte counts and, for an image folder, the fingerprint of the folder it was made from."""
  contents = dict((source.info.metadata or {}).items()).get(image_folder.CONTENTS_KEY)
  summary = {"dataset": source.info.full_name,
             "splits": {name: [split.num_examples, split.num_bytes]
                        for name, split in sorted(source.info.splits.items())},
             "folder_sha256": contents["sha256"] if contents else None}
  return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()


def builder_for_source(source: tfds.core.DatasetBuilder, image_key: str, label_key: str,
                       shorter_side: int, quality: int) -> Reduced:
  """The reduced copy of the prepared `source` (its features `image_key`, `label_key`),
  in the source's data directory; made with these settings if it is made now."""
  source_name = source.name + (f"_{source.builder_config.name}" if source.builder_config
                               else "")
  name = re.sub(r"[^A-Za-z0-9_]+", "_", f"{source_name}_{source.version}")
  config = ReducedConfig(name=name, shorter_side=shorter_side, quality=quality,
                         description=f"{source.info.full_name} at a shorter side of at "
                                     f"most {shorter_side} px.")
  return Reduced(source=source, image_key=image_key, label_key=label_key, config=config,
                 data_dir=source.data_dir_root)


def reduce_image(data: bytes, shorter_side: int, quality: int) -> bytes:
  """`data` itself when its shorter side is at most `shorter_side`, else the image resized
  to that shorter side and encoded as a JPEG of `quality`."""
  with PIL.Image.open(io.BytesIO(data)) as image:
    width, height = image.size
    if min(width, height) <= shorter_side:
      return data
    scale = shorter_side / min(width, height)
    size = (max(shorter_side, round(width * scale)), max(shorter_side, round(height * scale)))
    image.draft("RGB", size)  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that covers size
    resized = image.convert("RGB").resize(size, PIL.Image.BICUBIC)
  return jpeg.encode(resized, quality, CHROMA_SUBSAMPLING)


class Reduced(tfds.core.GeneratorBasedBuilder):
  """Another prepared data set's images at a bounded shorter side (see `builder_for_source`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, source: tfds.core.DatasetBuilder, image_key: str, label_key: str,
               **kwargs):
    # Set before tfds's constructor, which already asks for `_info`.
    self._source, self._image_key, self._label_key = source, image_key, label_key
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # A prepared copy's class names are restored from its own files (label.labels.txt).
    label = (tfds.features.ClassLabel() if self.is_prepared() else
             tfds.features.ClassLabel(names=self._source.info.features[self._label_key].names))
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # JPEG, or the source's own encoding for an image kept as it was.
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": label,
        }),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # everything comes from the source
    config = self.builder_config
    self.info.metadata[SETTINGS_KEY] = settings(config.shorter_side, config.quality)
    self.info.metadata[SOURCE_KEY] = {"dataset": self._source.info.full_name,
                                      "sha256": source_fingerprint(self._source)}
    return {split: self._generate_examples(split) for split in self._source.info.splits}

  def _generate_examples(self, split: str):
    records = self._source.as_dataset(
        split=split, shuffle_files=False, read_config=tfds.ReadConfig(try_autocache=False),
        decoders={self._image_key: tfds.decode.SkipDecoding()}).as_numpy_iterator()
    reduce = functools.partial(reduce_image, shorter_side=self.builder_config.shorter_side,
                               quality=self.builder_config.quality)
    index = 0
    # PIL releases the GIL while it decodes, resizes and encodes: threads work in parallel.
    with concurrent.futures.ThreadPoolExecutor(image_folder.PREPARE_THREADS) as pool:
      while chunk := list(itertools.islice(records, image_folder.PREPARE_CHUNK)):
        images = pool.map(reduce, [example[self._image_key] for example in chunk])
        for example, image in zip(chunk, images):
          yield index, {"image": image, "label": example[self._label_key]}
          index += 1
