"""Random images and labels made on the devices: the train loop measured on its own.

`data.name = "synthetic"` trains and evaluates on uniformly random uint8 pixels, as the
tf.data pipeline delivers them, of `data.image_size`, with uniformly random labels of
`data.synthetic_num_classes` classes, as flax's ImageNet example does for its fake-data
benchmark. Nothing is read from disk and TensorFlow is never imported. Training repeats
one batch, made once on the devices, so a step costs the loop nothing beyond the step
itself; each evaluation batch is made on the devices when it is needed.
"""

from __future__ import annotations

import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from mobileshuffle_jax import parallel
from mobileshuffle_jax.dataset_info import DatasetInfo

NAME = "synthetic"
CHANNELS = 3


def info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  counts = {"synthetic_num_classes": data_config.synthetic_num_classes,
            "synthetic_train_examples": data_config.synthetic_train_examples,
            "synthetic_eval_examples": data_config.synthetic_eval_examples}
  for field, value in counts.items():
    if not (isinstance(value, int) and value >= 1):
      raise ValueError(f"data.{field}={value!r} must be a positive integer")
  if data_config.image_size < 1:
    raise ValueError(f"data.image_size={data_config.image_size} must be >= 1")
  return DatasetInfo(NAME, counts["synthetic_num_classes"],
                     counts["synthetic_train_examples"], counts["synthetic_eval_examples"])


@functools.lru_cache(maxsize=None)
def _batch_maker(mesh: Mesh, batch_size: int, image_size: int, num_classes: int):
  """A jitted (key, first example's position, example count) -> global batch on `mesh`,
  with a mask over the positions past the count; compiled once per shape and mesh, not once
  per evaluation."""
  def make(key, first_position, examples):
    image_key, label_key = jax.random.split(key)
    position = first_position + jnp.arange(batch_size)
    return {"images": jax.random.randint(
                image_key, (batch_size, image_size, image_size, CHANNELS), 0, 256, jnp.int32
            ).astype(jnp.uint8),
            "labels": jax.random.randint(label_key, (batch_size,), 0, num_classes, jnp.int32),
            "mask": (position < examples).astype(jnp.float32)}
  return jax.jit(make, out_shardings=parallel.batch_sharded(mesh))


def _maker(data_config: ml_collections.ConfigDict, batch_size: int, mesh: Mesh):
  return _batch_maker(mesh, batch_size, data_config.image_size,
                      data_config.synthetic_num_classes)


def train_batches(data_config: ml_collections.ConfigDict, *, global_batch_size: int,
                  mesh: Mesh) -> Iterator[dict[str, jax.Array]]:
  """One global batch, sharded over `mesh` as the train step takes it, forever."""
  info(data_config)
  made = _maker(data_config, global_batch_size, mesh)(
      jax.random.key(data_config.seed), 0, global_batch_size)
  batch = {"images": made["images"], "labels": made["labels"]}
  while True:
    yield batch


def eval_batches(data_config: ml_collections.ConfigDict, *, global_batch_size: int,
                 mesh: Mesh) -> Iterator[dict[str, jax.Array]]:
  """`synthetic_eval_examples` examples in global batches with a mask over the padding."""
  examples = info(data_config).num_eval_examples
  make = _maker(data_config, global_batch_size, mesh)
  for index in range(-(-examples // global_batch_size)):
    key = jax.random.fold_in(jax.random.key(data_config.seed), 1 + index)
    yield make(key, index * global_batch_size, examples)
