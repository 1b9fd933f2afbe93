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
