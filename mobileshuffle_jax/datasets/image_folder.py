"""A TFDS builder for a folder of images: `ROOT/train/CLASS/*` and `ROOT/validation/CLASS/*`.

Class names are the sorted folder names under `ROOT/train`. Files may be anything PIL reads:
every one that is not already an RGB JPEG (PNG, also under a .JPEG name; greyscale; CMYK)
is re-encoded to one at preparation time, and every file that cannot be decoded is skipped,
logged with its path and recorded in the prepared data set's metadata (`skipped_files`)
instead of failing a training run mid-epoch.

Each root gets its own builder config, named after the root's base name and a digest of its
absolute path, so the prepared copy lives in `DATA_DIR/image_folder/NAME_DIGEST/VERSION`:
repeated runs reuse it and two roots never collide. The root must stay in place (the class
names are read from it), and the copy is not refreshed when the folder's contents change:
delete that directory to prepare it again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import re

import tensorflow_datasets as tfds
from absl import logging

from mobileshuffle_jax.datasets import jpeg

SPLITS = ("train", "validation")
# Decoding releases the GIL (PIL and TensorFlow), so threads check images in parallel.
PREPARE_THREADS = min(32, os.cpu_count() or 1)
# Files checked per round of threads: bounds the encoded bytes held in memory at once.
PREPARE_CHUNK = 256


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
  """The builder config of one root folder (see `config_for_root`)."""

  root_dir: str = ""


def config_for_root(root_dir: str) -> ImageFolderConfig:
  root = os.path.realpath(os.path.expanduser(root_dir))
  readable_name = re.sub(r"[^A-Za-z0-9_]+", "_", os.path.basename(root)) or "root"
  digest = hashlib.sha256(root.encode()).hexdigest()[:12]
  return ImageFolderConfig(name=f"{readable_name}_{digest}", root_dir=root,
                           description=f"The images under {root}.")


def builder_for_root(root_dir: str, data_dir: str | None = None) -> ImageFolder:
  """The builder of the images under `root_dir`, prepared into (or read from) `data_dir`."""
  return ImageFolder(config=config_for_root(root_dir), data_dir=data_dir)


def _visible_subdirectories(directory: str) -> list[str]:
  return sorted(entry.name for entry in os.scandir(directory)
                if entry.is_dir() and not entry.name.startswith("."))


def class_names(root_dir: str) -> list[str]:
  """Sorted class folder names under `root_dir/train`; FileNotFoundError if there are none."""
  train_dir = os.path.join(root_dir, "train")
  layout = "expected ROOT/train/CLASS/<images> and ROOT/validation/CLASS/<images>"
  if not os.path.isdir(train_dir):
    raise FileNotFoundError(f"image folder {root_dir!r} has no train/ directory: {layout}")
  names = _visible_subdirectories(train_dir)
  if not names:
    raise FileNotFoundError(f"{train_dir!r} holds no class directories: {layout}")
  return names


def _image_files(split_dir: str, names: list[str]) -> list[tuple[str, str]]:
  """(path, class name) of every visible file under `split_dir/CLASS/`, in sorted order."""
  files = []
  for name in names:
    class_dir = os.path.join(split_dir, name)
    if not os.path.isdir(class_dir):
      continue
    for directory, subdirectories, file_names in os.walk(class_dir):
      # Sorting in place makes os.walk's own traversal order deterministic.
      subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
      files.extend((os.path.join(directory, file_name), name)
                   for file_name in sorted(file_names) if not file_name.startswith("."))
  return files


def _read_as_rgb_jpeg(path: str) -> tuple[bytes | None, str | None]:
  """(RGB JPEG bytes, None), or (None, why) for a file that cannot be decoded."""
  try:
    with open(path, "rb") as f:
      return jpeg.as_rgb_jpeg(f.read()), None
  except Exception as error:  # pylint: disable=broad-except
    # Corrupt data makes PIL's format plugins raise nearly any exception type.
    return None, f"{type(error).__name__}: {error}"


class ImageFolder(tfds.core.GeneratorBasedBuilder):
  """Images under ROOT/{train,validation}/CLASS/, re-encoded to RGB JPEG where needed."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _root_dir(self) -> str:
    if self.builder_config is None:
      raise ValueError("image_folder needs a root directory: build it with "
                       "mobileshuffle_jax.datasets.image_folder.builder_for_root(root)")
    return self.builder_config.root_dir

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=class_names(self._root_dir())),
            "file_name": tfds.features.Text(),  # relative to the root, e.g. train/n01/a.JPEG
        }),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(skipped_files={}),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # the images are local
    root = self._root_dir()
    names = self.info.features["label"].names
    generators = {}
    for split in SPLITS:
      split_dir = os.path.join(root, split)
      if not os.path.isdir(split_dir):
        continue
      unknown = sorted(set(_visible_subdirectories(split_dir)) - set(names))
      if unknown:
        raise ValueError(f"{split_dir!r} has classes that train/ lacks: {unknown}")
      generators[split] = self._generate_examples(split, _image_files(split_dir, names))
    return generators

  def _generate_examples(self, split: str, files: list[tuple[str, str]]):
    root = self._root_dir()
    skipped = []
    with concurrent.futures.ThreadPoolExecutor(PREPARE_THREADS) as pool:
      for start in range(0, len(files), PREPARE_CHUNK):
        chunk = files[start:start + PREPARE_CHUNK]
        results = pool.map(_read_as_rgb_jpeg, [path for path, _ in chunk])
        for (path, name), (encoded, error) in zip(chunk, results):
          relative_path = os.path.relpath(path, root)
          if error is not None:
            skipped.append(relative_path)
            logging.warning("Skipping unreadable image %s (%s); %d skipped so far in %s",
                            path, error, len(skipped), split)
            continue
          yield relative_path, {"image": encoded, "label": name, "file_name": relative_path}
    if skipped:
      logging.warning("Skipped %d unreadable image(s) of %s/%s", len(skipped), root, split)
    # Saved with the prepared data set, so `prepare` can report it on every later run too.
    self.info.metadata["skipped_files"][split] = skipped
