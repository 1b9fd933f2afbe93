"""A TFDS builder for a folder of images: `ROOT/train/CLASS/*` and `ROOT/validation/CLASS/*`.

Class names are the sorted folder names under `ROOT/train`; a class folder without files is
refused. Files may be anything PIL reads: every one that is not already an RGB JPEG (PNG,
also under a .JPEG name; greyscale; CMYK) is re-encoded to one at preparation time, and
every file that cannot be decoded is skipped, logged with its path and recorded in the
prepared data set's metadata (`skipped_files`) instead of failing a training run mid-epoch.

Each root gets its own builder config, named after the root's base name and a digest of its
absolute path, so the prepared copy lives in `DATA_DIR/image_folder/NAME_DIGEST/VERSION`:
repeated runs reuse it and two roots never collide. The copy also records a fingerprint of
the folder's contents (`folder_contents`: every file's path, size and modification time,
from directory listings alone), which `input_pipeline.prepare` compares with the folder on
every run to rebuild a copy that no longer matches it. A prepared copy carries its own class
names: reading it takes them from the copy, not from the folder, which may have changed since.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import re
from typing import Iterator

import tensorflow_datasets as tfds

from mobileshuffle_jax.datasets import jpeg

log = logging.getLogger("mobileshuffle_jax")

SPLITS = ("train", "validation")
# Decoding releases the GIL (PIL and TensorFlow), so threads check images in parallel.
PREPARE_THREADS = min(32, os.cpu_count() or 1)
# Files checked per round of threads: bounds the encoded bytes held in memory at once.
PREPARE_CHUNK = 256
# The metadata key of the fingerprint of the folder that a copy was prepared from.
CONTENTS_KEY = "folder_contents"
# Hex digits kept of each class's digest: enough to tell which classes changed, and short
# enough that ImageNet's 2 x 1,000 classes make a small metadata.json.
CLASS_DIGEST_CHARS = 16
# Class names listed in a message before the rest are only counted.
NAMES_SHOWN = 5


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


def _visible_files(class_dir: str) -> Iterator[tuple[str, list[str]]]:
  """(directory, its sorted visible file names) for `class_dir` and every folder under it."""
  for directory, subdirectories, file_names in os.walk(class_dir):
    # Sorting in place makes os.walk's own traversal order deterministic.
    subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
    yield directory, sorted(name for name in file_names if not name.startswith("."))


def _class_files(class_dir: str) -> list[str]:
  """Every visible file under `class_dir`, at any depth, in sorted order."""
  return [os.path.join(directory, name)
          for directory, names in _visible_files(class_dir) for name in names]


def _split_classes(root_dir: str, names: list[str]) -> dict[str, list[str]]:
  """{split: its class folder names} of the splits present; ValueError for unknown classes."""
  classes = {}
  for split in SPLITS:
    split_dir = os.path.join(root_dir, split)
    if not os.path.isdir(split_dir):
      continue
    classes[split] = _visible_subdirectories(split_dir)
    unknown = sorted(set(classes[split]) - set(names))
    if unknown:
      raise ValueError(f"{split_dir!r} has classes that train/ lacks: {unknown}")
  return classes


def _class_listing(class_dir: str) -> tuple[int, str]:
  """(file count, SHA-256 of the sorted relative paths, sizes and modification times)."""
  lines = []
  for directory, names in _visible_files(class_dir):
    prefix = os.path.relpath(directory, class_dir)
    for name in names:
      try:
        status = os.stat(os.path.join(directory, name))
        size, mtime = status.st_size, status.st_mtime_ns
      except OSError:  # a dangling link: preparation skips it as unreadable
        size, mtime = -1, -1
      lines.append(f"{prefix}/{name}\t{size}\t{mtime}\n")
  return len(lines), hashlib.sha256("".join(lines).encode()).hexdigest()


def folder_contents(root_dir: str) -> dict:
  """The fingerprint of what preparing `root_dir` reads, from directory listings alone.

  Every visible file under each split's class folders is listed by relative path, size and
  modification time (stat only, no file is opened), so checking a folder of ImageNet's size
  on every run costs a directory walk. Returns {'sha256': digest of the whole listing,
  'splits': {split: {class: [file count, first CLASS_DIGEST_CHARS of its listing's digest]}}},
  the summary that `describe_changes` compares. Refuses the layouts preparation refuses:
  FileNotFoundError without train/ class folders, ValueError for a validation class that
  train/ lacks or for a class folder that holds no files.
  """
  classes = _split_classes(root_dir, class_names(root_dir))
  whole = hashlib.sha256()
  splits = {}
  for split, names in classes.items():
    splits[split] = {}
    for name in names:
      class_dir = os.path.join(root_dir, split, name)
      # Sequential: the work per file is mostly Python's, and threads contending for the GIL
      # made it 2-3x slower on a local disk.
      count, digest = _class_listing(class_dir)
      if not count:
        raise ValueError(f"class folder {class_dir!r} holds no files: add images to it or "
                         "remove it (every folder under train/ and validation/ is a class)")
      whole.update(f"{split}/{name}\t{count}\t{digest}\n".encode())
      splits[split][name] = [count, digest[:CLASS_DIGEST_CHARS]]
  return {"sha256": whole.hexdigest(), "splits": splits}


def _some_names(names: list[str]) -> str:
  shown = ", ".join(names[:NAMES_SHOWN])
  return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def describe_changes(recorded: dict | None, current: dict) -> str:
  """What differs between two `folder_contents` summaries, in a few words."""
  if not recorded:
    return "the copy has no record of the folder's contents"
  changes = []
  for split in SPLITS:
    before, after = recorded["splits"].get(split), current["splits"].get(split)
    if before is None and after is not None:
      changes.append(f"{split}/ added ({_file_count(after)} files)")
    elif before is not None and after is None:
      changes.append(f"{split}/ removed")
    elif before != after:
      changes.append(f"{split}: {_split_changes(before, after)}")
  return "; ".join(changes) or "its files changed"


def _split_changes(before: dict, after: dict) -> str:
  parts = []
  added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
  if added:
    parts.append(f"classes added: {_some_names(added)}")
  if removed:
    parts.append(f"classes removed: {_some_names(removed)}")
  changed = sorted(name for name in set(before) & set(after) if before[name] != after[name])
  if changed:
    parts.append(f"files changed in {len(changed)} class(es): {_some_names(changed)}")
  return f"{', '.join(parts)} ({_file_count(after)} files, was {_file_count(before)})"


def _file_count(split_summary: dict) -> int:
  return sum(count for count, _ in split_summary.values())


def _image_files(split_dir: str, names: list[str]) -> list[tuple[str, str]]:
  """(path, class name) of every visible file under `split_dir/CLASS/`, in sorted order."""
  return [(path, name) for name in names if os.path.isdir(os.path.join(split_dir, name))
          for path in _class_files(os.path.join(split_dir, name))]


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
    # A prepared copy's class names are restored from its own files (label.labels.txt): the
    # folder may have changed since, and `prepare` rebuilds the copy when it has.
    label = (tfds.features.ClassLabel() if self.is_prepared()
             else tfds.features.ClassLabel(names=class_names(self._root_dir())))
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": label,
            "file_name": tfds.features.Text(),  # relative to the root, e.g. train/n01/a.JPEG
        }),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(skipped_files={}),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # the images are local
    root = self._root_dir()
    # Taken before any image is read: a file changed during preparation changes the folder's
    # fingerprint from the recorded one, and the next `prepare` rebuilds the copy.
    contents = folder_contents(root)
    self.info.metadata[CONTENTS_KEY] = contents
    names = self.info.features["label"].names
    return {split: self._generate_examples(split, _image_files(os.path.join(root, split), names))
            for split in contents["splits"]}

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
            log.warning("Skipping unreadable image %s (%s); %d skipped so far in %s",
                            path, error, len(skipped), split)
            continue
          yield relative_path, {"image": encoded, "label": name, "file_name": relative_path}
    if skipped:
      log.warning("Skipped %d unreadable image(s) of %s/%s", len(skipped), root, split)
    # Saved with the prepared data set, so `prepare` can report it on every later run too.
    self.info.metadata["skipped_files"][split] = skipped
