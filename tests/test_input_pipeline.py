"""The input pipeline on real tfds data sets prepared into temporary directories."""

import collections
import hashlib
import io
import logging
import re

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn import datasets as sklearn_datasets

from mobileshuffle_jax import data_defaults, input_pipeline
from mobileshuffle_jax.datasets import digits, image_folder, reduced
from mobileshuffle_jax.preprocessing import NORMALIZATIONS, normalize

NUM_DIGITS = 1797


def digits_config(data_dir, **overrides):
  config = data_defaults.default_data_config()
  config.name = "digits"
  config.data_dir = str(data_dir)
  config.image_size = 32
  config.normalization = "zero_one"
  config.shuffle_buffer = 512
  config.update(overrides)
  return config


def unaugmented(config):
  """Training images then equal evaluation images (whole image, no flip, same size)."""
  config.train_crop_area_range = (1.0, 1.0)
  config.train_crop_aspect_range = (1.0, 1.0)
  config.train_flip = False
  config.eval_crop_ratio = 1.0
  return config


def fingerprint(image):
  return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def take(batches, count):
  return [next(batches) for _ in range(count)]


@pytest.fixture(scope="module")
def data_dir(data_dir):
  """The session's data directory with digits prepared."""
  input_pipeline.prepare(digits_config(data_dir))
  return data_dir


def test_digits_prepares_a_stratified_80_20_split(data_dir):
  info = input_pipeline.prepare(digits_config(data_dir))
  assert (info.num_train_examples, info.num_eval_examples) == (1437, 360)
  assert info.num_train_examples + info.num_eval_examples == NUM_DIGITS
  assert info.num_classes == 10 and info.class_names == tuple("0123456789")
  eval_labels = np.concatenate([
      batch["labels"][batch["mask"] == 1]
      for batch in input_pipeline.eval_batches(digits_config(data_dir), global_batch_size=100)])
  per_class = np.bincount(eval_labels, minlength=10)
  totals = np.bincount(sklearn_datasets.load_digits().target, minlength=10)
  assert np.all(np.abs(per_class - digits.VALIDATION_FRACTION * totals) <= 1)


def test_batches_are_uint8_pixels_whatever_the_normalization(data_dir):
  """Normalization runs in the jitted steps: the host ships the same uint8 pixels for all."""
  batches = {}
  for normalization in sorted(NORMALIZATIONS):
    config = digits_config(data_dir, normalization=normalization, image_size=24)
    train = next(input_pipeline.train_batches(config, global_batch_size=16))
    evaluation = next(input_pipeline.eval_batches(config, global_batch_size=16))
    for batch in (train, evaluation):
      assert batch["images"].shape == (16, 24, 24, 3) and batch["images"].dtype == np.uint8
      assert batch["labels"].shape == (16,) and batch["labels"].dtype == np.int32
      assert np.all((0 <= batch["labels"]) & (batch["labels"] < 10))
      assert np.ptp(batch["images"]) > 128  # dark strokes on light
    assert evaluation["mask"].dtype == np.float32 and np.all(evaluation["mask"] == 1)
    batches[normalization] = (train["images"], evaluation["images"])
  first = batches.pop("imagenet")
  for images in batches.values():
    np.testing.assert_array_equal(images[0], first[0])
    np.testing.assert_array_equal(images[1], first[1])


def test_normalize_matches_on_numpy_and_jax():
  pixels = np.arange(0, 256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
  np.testing.assert_allclose(normalize(pixels, "minus_one_one")[0, 0, 0], -1.0)
  np.testing.assert_allclose(normalize(pixels, "zero_one").max(), 1.0)
  imagenet = normalize(pixels, "imagenet")
  assert imagenet.dtype == np.float32
  np.testing.assert_allclose(normalize(jnp.asarray(pixels), "imagenet"), imagenet, rtol=1e-6)
  np.testing.assert_allclose(imagenet[0, 0, 0], [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
                             rtol=1e-5)
  with pytest.raises(ValueError, match="normalization"):
    normalize(pixels, "bogus")


# Echo 2 in windows of 80 records (160 images, 5 batches): steps 8 and 10 start inside and
# at the start of a window.
@pytest.mark.parametrize("echo", [{}, {"echo": 2, "echo_window": 80}], ids=["echo1", "echo2"])
def test_batches_are_a_function_of_seed_and_step_and_resume_exactly(data_dir, echo):
  # 300 examples in batches of 32: the first epoch ends inside step 9 (without echo).
  config = digits_config(data_dir, train_split="train[:300]", train_crop_area_range=(0.3, 1.0),
                         train_flip=True, **echo)
  straight = take(input_pipeline.train_batches(config, global_batch_size=32), 12)
  again = take(input_pipeline.train_batches(config, global_batch_size=32), 12)
  for start in (8, 10):
    resumed = take(input_pipeline.train_batches(config, global_batch_size=32,
                                                start_step=start), 12 - start)
    for expected, batch in zip(straight[start:], resumed):
      np.testing.assert_array_equal(batch["images"], expected["images"])
      np.testing.assert_array_equal(batch["labels"], expected["labels"])
  for expected, batch in zip(straight, again):
    np.testing.assert_array_equal(batch["images"], expected["images"])
  config.seed = 1
  other_seed = next(input_pipeline.train_batches(config, global_batch_size=32))
  assert not np.array_equal(other_seed["labels"], straight[0]["labels"])
  # Each epoch is a new order: positions 20..83 of the second epoch differ from the first's.
  labels = np.concatenate([batch["labels"] for batch in straight])
  assert not np.array_equal(labels[20:84], labels[320:384])
  assert len(set(map(fingerprint, np.concatenate([b["images"] for b in straight])))) == 384


def echoed_positions(images):
  """{fingerprint: the positions that hold it} of unaugmented images."""
  positions = collections.defaultdict(list)
  for position, image in enumerate(images):
    positions[fingerprint(image)].append(position)
  return positions


def test_echo_crops_each_decoded_image_k_times_apart_and_hosts_stay_disjoint(data_dir):
  # 2 hosts x 60 records, each one window: 120 images per host, batches of 4. Crops of at
  # most 3/4 of the image: never the whole image, which two copies could share.
  config = digits_config(data_dir, train_split="train[:120]", echo=2, echo_window=60,
                         train_crop_area_range=(0.25, 0.75))
  everything = collections.Counter(
      fingerprint(image)
      for batch in input_pipeline.eval_batches(unaugmented(digits_config(
          data_dir, eval_split="train[:120]")), global_batch_size=120)
      for image in batch["images"])

  def host_images(config, process_index):
    batches = input_pipeline.train_batches(config, global_batch_size=8,
                                           process_index=process_index, process_count=2)
    return np.concatenate([batch["images"] for batch in take(batches, 30)])

  seen = []
  for process_index in (0, 1):
    # Unaugmented, the copies of a record are equal: the window holds each record twice.
    plain = echoed_positions(host_images(unaugmented(config.copy_and_resolve_references()),
                                         process_index))
    assert sorted(map(len, plain.values())) == [2] * 60
    seen.append(collections.Counter({key: len(value) // 2 for key, value in plain.items()}))
    # Copies land in different batches of 4, bar a few (chance: 3 in 119 for each pair).
    same_batch = sum(a // 4 == b // 4 for a, b in plain.values())
    assert same_batch <= 6
    assert np.median([abs(a - b) for a, b in plain.values()]) > 20
    # Augmentation does not move the records (the window's order is seeded alone), and
    # gives each copy its own crop and flip.
    augmented = host_images(config, process_index)
    assert all(not np.array_equal(augmented[a], augmented[b]) for a, b in plain.values())
  assert not set(seen[0]) & set(seen[1])
  assert seen[0] + seen[1] == everything
  # Batches are rows of a shuffled window: windows hold whole batches.
  with pytest.raises(ValueError, match="echo_window=60 x data.echo=2 must be a multiple of "
                                       "the batch of each input shard, 16"):
    input_pipeline.train_batches(config, global_batch_size=16)


def test_cache_does_not_change_the_batches(data_dir):
  cached, uncached = (
      take(input_pipeline.train_batches(digits_config(data_dir, train_split="train[:200]",
                                                      cache=cache), global_batch_size=50), 5)
      for cache in (True, False))
  for a, b in zip(cached, uncached):
    np.testing.assert_array_equal(a["images"], b["images"])


def test_two_hosts_read_disjoint_halves_of_the_train_split(data_dir):
  config = unaugmented(digits_config(data_dir, train_split="train[:301]"))
  everything = collections.Counter(
      fingerprint(image)
      for batch in input_pipeline.eval_batches(unaugmented(digits_config(
          data_dir, eval_split="train[:301]")), global_batch_size=301)
      for image in batch["images"])
  assert sum(everything.values()) == 301
  seen = []
  for process_index, host_examples in ((0, 151), (1, 150)):
    batches = input_pipeline.train_batches(config, global_batch_size=2,
                                           process_index=process_index, process_count=2)
    seen.append(collections.Counter(
        fingerprint(batch["images"][0]) for batch in take(batches, host_examples)))
    assert sum(seen[-1].values()) == host_examples
  assert not set(seen[0]) & set(seen[1])
  assert seen[0] + seen[1] == everything


@pytest.mark.parametrize("eval_split,global_batch_size,process_count", [
    ("validation", 14, 1), ("validation", 14, 2), ("validation[:359]", 8, 2),
    ("validation[:359]", 7, 1), ("validation[:1]", 4, 2)])
def test_eval_counts_every_example_exactly_once(data_dir, eval_split, global_batch_size,
                                                 process_count):
  config = digits_config(data_dir, eval_split=eval_split)
  num_examples = input_pipeline.prepare(config).num_eval_examples
  expected_batches = input_pipeline.num_eval_batches(config, global_batch_size)
  assert expected_batches == -(-num_examples // global_batch_size)
  reference = collections.Counter(
      (fingerprint(image), int(label))
      for batch in input_pipeline.eval_batches(config, global_batch_size=1000)
      for image, label, mask in zip(batch["images"], batch["labels"], batch["mask"]) if mask)
  assert sum(reference.values()) == num_examples
  seen = collections.Counter()
  for process_index in range(process_count):
    batches = list(input_pipeline.eval_batches(
        config, global_batch_size=global_batch_size, process_index=process_index,
        process_count=process_count))
    assert len(batches) == expected_batches
    for batch in batches:
      assert batch["images"].shape[0] == global_batch_size // process_count
      seen.update((fingerprint(image), int(label))
                  for image, label, mask in zip(batch["images"], batch["labels"], batch["mask"])
                  if mask)
  assert seen == reference


def test_batch_size_must_split_evenly_over_hosts(data_dir):
  with pytest.raises(ValueError, match="multiple of process_count"):
    input_pipeline.train_batches(digits_config(data_dir), global_batch_size=10, process_count=4)
  with pytest.raises(ValueError, match="multiple of process_count"):
    input_pipeline.eval_batches(digits_config(data_dir), global_batch_size=9, process_count=2)


# Solid colours identify each file after any crop; the CMYK one checks the conversion.
FOLDER_FILES = {
    "train/cat/wide.JPEG": ("RGB", (200, 40, 40), (97, 31)),
    "train/cat/gray.JPEG": ("L", 90, (33, 50)),
    "train/cat/png_named.JPEG": ("RGB", (40, 200, 40), (40, 64)),
    "train/dog/cmyk.JPEG": ("CMYK", (40, 40, 200), (51, 77)),
    "train/dog/tall.jpg": ("RGB", (220, 220, 30), (23, 90)),
    "validation/cat/a.JPEG": ("RGB", (30, 220, 220), (64, 48)),
    "validation/dog/b.JPEG": ("CMYK", (220, 30, 220), (45, 45)),
}
CORRUPT_FILES = ("train/cat/not_an_image.JPEG", "train/dog/truncated.JPEG")


def write_image_folder(root):
  for relative_path, (mode, colour, size) in FOLDER_FILES.items():
    path = root / relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.new("RGB", size, colour if mode != "L" else (colour,) * 3)
    image = rgb.convert("CMYK") if mode == "CMYK" else rgb.convert(mode)
    image.save(path, "PNG" if "png" in relative_path else "JPEG", quality=95)
  (root / CORRUPT_FILES[0]).write_bytes(b"this is not an image")
  whole = (root / "train/cat/wide.JPEG").read_bytes()
  (root / CORRUPT_FILES[1]).write_bytes(whole[:len(whole) // 2])


def folder_config(root, data_dir, **overrides):
  config = data_defaults.default_data_config()
  config.update(name="image_folder", image_folder=str(root), data_dir=str(data_dir),
                image_size=24, normalization="none", eval_crop_ratio=0.875, **overrides)
  return config


def test_image_folder_reencodes_odd_files_and_skips_corrupt_ones(tmp_path, caplog):
  write_image_folder(tmp_path / "images")
  config = folder_config(tmp_path / "images", tmp_path / "tfds")
  with caplog.at_level(logging.WARNING):
    info = input_pipeline.prepare(config)
  assert info.class_names == ("cat", "dog") and info.num_classes == 2
  assert (info.num_train_examples, info.num_eval_examples) == (5, 2)
  assert sorted(info.skipped_files) == sorted(CORRUPT_FILES)
  for corrupt in CORRUPT_FILES:
    assert any(corrupt.split("/")[-1] in message for message in caplog.messages)
  assert any("Skipped 2 unreadable" in message for message in caplog.messages)
  # A second run reuses the prepared copy and still reports what was skipped.
  assert input_pipeline.prepare(config) == info

  evaluation = list(input_pipeline.eval_batches(config, global_batch_size=4))
  assert len(evaluation) == 1 and evaluation[0]["mask"].tolist() == [1, 1, 0, 0]
  colours = {int(label): image.reshape(-1, 3).mean(0)
             for image, label in zip(evaluation[0]["images"][:2], evaluation[0]["labels"][:2])}
  np.testing.assert_allclose(colours[0], FOLDER_FILES["validation/cat/a.JPEG"][1], atol=6)
  np.testing.assert_allclose(colours[1], FOLDER_FILES["validation/dog/b.JPEG"][1], atol=6)

  # One batch of 5 is one epoch: each training file exactly once, with its own label.
  train = take(input_pipeline.train_batches(config, global_batch_size=5), 2)
  expected = {path: (np.broadcast_to(colour, 3), int(path.split("/")[1] == "dog"))
              for path, (_, colour, _) in FOLDER_FILES.items() if path.startswith("train")}
  matched = []
  for image, label in zip(train[0]["images"], train[0]["labels"]):
    path = min(expected, key=lambda p: np.abs(image.reshape(-1, 3).mean(0) - expected[p][0]).max())
    np.testing.assert_allclose(image.reshape(-1, 3).mean(0), expected[path][0], atol=6)
    assert label == expected[path][1]
    matched.append(path)
  assert sorted(matched) == sorted(expected)
  assert train[1]["images"].shape == (5, 24, 24, 3)


def stored_images(builder, split):
  """[(label, (width, height) as PIL reads them, encoded bytes)] of a builder's split."""
  images = []
  for example in builder.as_dataset(split=split, decoders={
      "image": tfds.decode.SkipDecoding()}).as_numpy_iterator():
    with Image.open(io.BytesIO(example["image"])) as image:
      images.append((int(example["label"]), image.size, example["image"]))
  return images


def image_sizes(builder, split):
  return collections.Counter((label, *size) for label, size, _ in stored_images(builder, split))


def test_reduced_copy_bounds_shorter_sides_and_refuses_other_settings(tmp_path, caplog):
  root, data_dir = tmp_path / "images", tmp_path / "tfds"
  write_image_folder(root)
  config = folder_config(root, data_dir, reduced_shorter_side=40, reduced_quality=85)
  info = input_pipeline.prepare(config)
  source = image_folder.builder_for_root(str(root), str(data_dir))
  copy = reduced.builder_for_source(source, "image", "label", 40, 85)
  assert dict(copy.info.metadata.items())[reduced.SETTINGS_KEY] == {"shorter_side": 40,
                                                                    "quality": 85}
  for split in ("train", "validation"):
    # A shorter side above 40 becomes 40, the longer one in proportion; the rest is kept.
    expected = collections.Counter()
    for (label, width, height), count in image_sizes(source, split).items():
      scale = min(1.0, 40 / min(width, height))
      expected[(label, round(width * scale), round(height * scale))] += count
    assert image_sizes(copy, split) == expected
    kept = {data for _, size, data in stored_images(source, split) if min(size) <= 40}
    assert len(kept) == {"train": 4, "validation": 0}[split]
    assert kept <= {data for _, _, data in stored_images(copy, split)}  # byte for byte
  assert ((0, 53, 40) in image_sizes(copy, "validation")
          and (1, 40, 60) in image_sizes(copy, "train"))  # 64 x 48 and 51 x 77 before
  # The pipeline reads the copy: the solid colours survive at quality 85.
  (evaluation,) = input_pipeline.eval_batches(config, global_batch_size=2)
  for image, label in zip(evaluation["images"], evaluation["labels"]):
    path = ("validation/cat/a.JPEG", "validation/dog/b.JPEG")[label]
    np.testing.assert_allclose(image.reshape(-1, 3).mean(0), FOLDER_FILES[path][1], atol=6)

  config.reduced_quality = 90
  for make_or_read in (input_pipeline.prepare,
                       lambda c: input_pipeline.train_batches(c, global_batch_size=2)):
    with pytest.raises(input_pipeline.DataError) as refused:
      make_or_read(config)
    assert ("made with shorter side 40 px and JPEG quality 85" in str(refused.value)
            and "asks for data.reduced_shorter_side=40 and data.reduced_quality=90"
            in str(refused.value))

  # The folder changes: its tfds copy is made again, and so is the reduced one.
  config.reduced_quality = 85
  write_jpeg(root / "validation/dog/new.jpg")
  with caplog.at_level(logging.WARNING):
    assert input_pipeline.prepare(config).num_eval_examples == info.num_eval_examples + 1
  assert any("changed since its reduced copy" in message for message in caplog.messages)
  (evaluation,) = input_pipeline.eval_batches(config, global_batch_size=4)
  assert evaluation["mask"].tolist() == [1, 1, 1, 0]


def test_each_image_folder_root_gets_its_own_prepared_copy(tmp_path):
  for name in ("one", "two"):
    write_image_folder(tmp_path / name / "images")
    input_pipeline.prepare(folder_config(tmp_path / name / "images", tmp_path / "tfds"))
  assert len(list((tmp_path / "tfds" / "image_folder").iterdir())) == 2


def write_jpeg(path, colour=(128, 128, 128)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (16, 16), colour).save(path, "JPEG", quality=95)


def write_classes(root, counts):
  """`count` grey JPEGs in each folder of `counts`, e.g. {'train/cat': 2}."""
  for folder, count in counts.items():
    for index in range(count):
      write_jpeg(root / folder / f"{index}.jpg")


def prepared_files(data_dir):
  """(inode, mtime) of every file of the one prepared image-folder copy under data_dir."""
  (version_dir,) = (data_dir / "image_folder").glob("*/1.0.0")
  return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns)
          for path in version_dir.iterdir()}


def rebuild_messages(caplog):
  return [message for message in caplog.messages if "changed since it was prepared" in message]


def test_image_folder_copy_is_rebuilt_when_the_folder_changes(tmp_path, caplog):
  root, data_dir = tmp_path / "images", tmp_path / "tfds"
  write_classes(root, {"train/cat": 2, "train/dog": 1})
  config = folder_config(root, data_dir)
  # tfds prepares the train split alone; the configured eval split is missing.
  with pytest.raises(input_pipeline.DataError, match="no split validation"):
    input_pipeline.prepare(config)

  write_classes(root, {"validation/cat": 1, "validation/dog": 2})
  with caplog.at_level(logging.WARNING):
    info = input_pipeline.prepare(config)
  assert (info.num_train_examples, info.num_eval_examples) == (3, 3)
  (message,) = rebuild_messages(caplog)
  assert "validation/ added (3 files)" in message and "preparing it again" in message

  # Unchanged: the same copy, not a word.
  before = prepared_files(data_dir)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert input_pipeline.prepare(config) == info
  assert prepared_files(data_dir) == before and not rebuild_messages(caplog)

  write_jpeg(root / "train/dog/new.jpg")
  write_classes(root, {"train/bird": 1})
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    info = input_pipeline.prepare(config)
  assert info.num_train_examples == 5 and info.class_names == ("bird", "cat", "dog")
  (message,) = rebuild_messages(caplog)
  assert ("train: classes added: bird, files changed in 1 class(es): dog (5 files, was 3)"
          in message)
  assert prepared_files(data_dir) != before

  # Rewritten in place under the same name (a solid JPEG of the same size: only the
  # modification time tells): rebuilt, and the new pixels are what evaluation reads.
  write_jpeg(root / "validation/cat/0.jpg", colour=(200, 30, 30))
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert input_pipeline.prepare(config) == info
  (message,) = rebuild_messages(caplog)
  assert "validation: files changed in 1 class(es): cat (3 files, was 3)" in message
  (batch,) = input_pipeline.eval_batches(config, global_batch_size=3)
  (cat,) = batch["images"][batch["labels"] == info.class_names.index("cat")]
  np.testing.assert_allclose(cat.reshape(-1, 3).mean(0), (200, 30, 30), atol=6)


def test_empty_class_folders_are_refused(tmp_path):
  root, data_dir = tmp_path / "images", tmp_path / "tfds"
  write_classes(root, {"train/cat": 1, "train/dog": 1, "validation/cat": 1})
  (root / "train/empty").mkdir()
  with pytest.raises(input_pipeline.DataError, match=re.escape(f"{root}/train/empty")):
    input_pipeline.prepare(folder_config(root, data_dir))
  (root / "train/empty").rmdir()
  input_pipeline.prepare(folder_config(root, data_dir))

  # Hidden files are not images; the prepared copy stays until the folder can be prepared.
  before = prepared_files(data_dir)
  (root / "validation/dog").mkdir()
  (root / "validation/dog/.DS_Store").write_bytes(b"finder")
  with pytest.raises(input_pipeline.DataError, match=re.escape(f"{root}/validation/dog")):
    input_pipeline.prepare(folder_config(root, data_dir))
  assert prepared_files(data_dir) == before


def test_image_folder_class_names_are_the_sorted_folder_names(tmp_path):
  root = tmp_path / "images"
  for index, name in enumerate(("zebra", "mango", "Apple", "kiwi_2")):
    write_classes(root, {f"train/{name}": index + 1, f"validation/{name}": 1})
  config = folder_config(root, tmp_path / "tfds")
  info = input_pipeline.prepare(config)
  assert info.class_names == ("Apple", "kiwi_2", "mango", "zebra") and info.num_classes == 4
  # Each stored label is the index of its file's folder name among class_names.
  builder = image_folder.builder_for_root(str(root), str(tmp_path / "tfds"))
  for split in ("train", "validation"):
    for example in builder.as_dataset(split=split).as_numpy_iterator():
      folder = example["file_name"].decode().split("/")[1]
      assert info.class_names[example["label"]] == folder
  # The prepared copy keeps naming its own classes after the folder gains one.
  write_classes(root, {"train/banana": 1})
  builder = image_folder.builder_for_root(str(root), str(tmp_path / "tfds"))
  assert tuple(builder.info.features["label"].names) == info.class_names


class PipelineTestShapes(tfds.core.GeneratorBasedBuilder):
  """A tfds data set with named classes, prepared without any download."""

  VERSION = tfds.core.Version("1.0.0")
  CLASSES = ("square", "circle", "triangle")  # tfds keeps this order, unsorted

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(names=self.CLASSES)}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(), "validation": self._generate_examples()}

  def _generate_examples(self):
    for index in range(3):
      yield index, {"image": np.full((8, 8, 3), 50 * index, np.uint8), "label": index}


def test_tfds_dataset_class_names_come_from_its_label_feature(tmp_path):
  config = digits_config(tmp_path / "tfds", name="pipeline_test_shapes")
  info = input_pipeline.prepare(config)
  assert info.class_names == PipelineTestShapes.CLASSES and info.num_classes == 3


def test_missing_image_folder_explains_the_layout(tmp_path):
  with pytest.raises(input_pipeline.DataError, match="train/CLASS"):
    input_pipeline.prepare(folder_config(tmp_path / "absent", tmp_path / "tfds"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(input_pipeline.DataError, match="no train/ directory"):
    input_pipeline.prepare(folder_config(tmp_path / "empty", tmp_path / "tfds"))


def test_imagenet_without_its_tars_says_what_to_download(tmp_path):
  config = data_defaults.default_data_config()
  config.data_dir = str(tmp_path / "tfds")
  with pytest.raises(input_pipeline.DataError) as unset:
    input_pipeline.prepare(config)
  message = str(unset.value)
  assert "manual_dir is unset" in message and "image-net.org" in message
  assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
  assert "tfds build imagenet2012 --manual_dir=" in message
  config.manual_dir = str(tmp_path / "tars")
  (tmp_path / "tars").mkdir()
  (tmp_path / "tars" / "ILSVRC2012_img_val.tar").touch()
  with pytest.raises(input_pipeline.DataError, match="lacks ILSVRC2012_img_train.tar"):
    input_pipeline.prepare(config)


def test_unknown_or_unprepared_datasets_are_clear_errors(tmp_path):
  config = digits_config(tmp_path / "tfds", name="digitz")
  with pytest.raises(input_pipeline.DataError, match="unknown dataset.*'digits'"):
    input_pipeline.prepare(config)
  with pytest.raises(input_pipeline.DataError, match="call .*prepare"):
    input_pipeline.train_batches(digits_config(tmp_path / "tfds"), global_batch_size=8)


def test_measure_train_and_eval_throughput(data_dir):
  config = digits_config(data_dir)
  for measure in (input_pipeline.measure_train_throughput,
                  input_pipeline.measure_eval_throughput):
    result = measure(config, 64, 3)
    assert result.images_per_second > 0 and result.images_per_cpu_second > 0
  # 360 validation images: 5 full batches of 64, and the first one warms up.
  with pytest.raises(ValueError, match="holds 5 full batches of 64; timing 5 needs 6"):
    input_pipeline.measure_eval_throughput(config, 64, 5)


@pytest.mark.parametrize("field,value", [("reduced_shorter_side", -1), ("reduced_quality", 0),
                                         ("reduced_quality", 101), ("echo", 0),
                                         ("echo_window", 0)])
def test_reduced_copy_and_echo_settings_are_checked(data_dir, field, value):
  with pytest.raises(ValueError, match=f"data.{field}={value} must be"):
    input_pipeline.prepare(digits_config(data_dir, **{field: value}))
