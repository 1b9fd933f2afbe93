"""The data fields of a config, with the papers' ImageNet recipe as defaults.

Plain ml_collections, no TensorFlow: configs import this, and loading a config must not
import the input pipeline's TensorFlow.
"""

from __future__ import annotations

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
  """Every field the pipeline reads, defaulting to the ImageNet recipe of the papers."""
  data = ml_collections.ConfigDict()
  # 'digits', 'image_folder', any tfds image-classification name ('imagenet2012'), or
  # 'synthetic': random images and labels made on the devices, no TensorFlow (synthetic.py).
  data.name = "imagenet2012"
  data.data_dir = ml_collections.config_dict.placeholder(str)  # None: tfds's default
  data.manual_dir = ml_collections.config_dict.placeholder(str)  # imagenet2012's tars
  data.image_folder = ml_collections.config_dict.placeholder(str)  # ROOT/{train,validation}/
  data.train_split = "train"  # any tfds split spec, e.g. 'train[:95%]'
  data.eval_split = "validation"
  data.image_size = 224
  data.train_crop_area_range = (0.08, 1.0)  # fraction of the image area
  data.train_crop_aspect_range = (3 / 4, 4 / 3)  # width / height
  data.train_flip = True
  data.eval_crop_ratio = 0.875  # centre crop side / shorter image side
  data.normalization = "imagenet"  # a key of preprocessing.NORMALIZATIONS
  data.shuffle_buffer = 16_384  # records (still encoded) shuffled at a time
  data.cache = False  # keep the encoded training records in memory (small data sets)
  data.seed = 0  # example order and augmentation
  # A reduced copy of the data set, made once by `prepare` next to it and read instead of
  # it: images with a shorter side above this many pixels resized to it and re-encoded as
  # JPEGs of `reduced_quality` (datasets/reduced.py). 0: read the data set itself, as the
  # papers did. 256, measured in the README, is image_size / eval_crop_ratio at 224 px:
  # evaluation's centre crop then keeps every stored pixel.
  data.reduced_shorter_side = 0
  data.reduced_quality = 90
  # Data echoing (Choi et al. 2019): each decoded training record gives `echo` crops, each
  # augmented on its own, shuffled over the batches of a window of `echo_window` records.
  # Each input shard holds a window's echo x echo_window images (image_size^2 x 3 bytes
  # each), a multiple of its batch. An epoch still counts training images, so with echo k
  # it decodes 1 / k of the split.
  data.echo = 1
  data.echo_window = 1024
  # The training split is read as this many fixed shards, each host reading a contiguous
  # block of them (0: one per host). The global batch of a step is the same for any host
  # count that divides input_shards, so a run can move between 1 and N hosts unchanged.
  data.input_shards = 0
  # 'synthetic' only: ImageNet's class and training-example counts, so that epochs mean
  # the same; a smaller eval split keeps periodic evaluation cheap.
  data.synthetic_num_classes = 1000
  data.synthetic_train_examples = 1_281_167
  data.synthetic_eval_examples = 10_000
  return data
