"""The data the train loop and evaluation read, as global batches on the devices.

`data.name = "synthetic"` is made on the devices (`synthetic`) and needs no TensorFlow;
every other name is read by the tf.data input pipeline (`input_pipeline`), which is
imported only then, so that a synthetic run never imports TensorFlow.
"""

from __future__ import annotations

from typing import Iterator

import jax
import ml_collections
from jax.sharding import Mesh

from mobileshuffle_jax import parallel, synthetic
from mobileshuffle_jax.dataset_info import DatasetInfo


def _is_synthetic(data_config: ml_collections.ConfigDict) -> bool:
  return data_config.name == synthetic.NAME


def _input_pipeline():
  from mobileshuffle_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline


def prepare(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  """The data set's info, after building it once where it needs building."""
  if _is_synthetic(data_config):
    return synthetic.info(data_config)
  return _input_pipeline().prepare(data_config)


def train_batches(data_config: ml_collections.ConfigDict, *, global_batch_size: int,
                  start_step: int, mesh: Mesh) -> Iterator[dict[str, jax.Array]]:
  """Global training batches {'images', 'labels'} from `start_step` on, sharded on `mesh`."""
  if _is_synthetic(data_config):
    return synthetic.train_batches(data_config, global_batch_size=global_batch_size,
                                   mesh=mesh)
  host_batches = _input_pipeline().train_batches(
      data_config, global_batch_size=global_batch_size, start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count())
  return (parallel.global_batch(batch, mesh) for batch in host_batches)


def eval_batches(data_config: ml_collections.ConfigDict, *, global_batch_size: int,
                 mesh: Mesh) -> Iterator[dict[str, jax.Array]]:
  """Global evaluation batches {'images', 'labels', 'mask'}: mask 0 marks padding."""
  if _is_synthetic(data_config):
    return synthetic.eval_batches(data_config, global_batch_size=global_batch_size,
                                  mesh=mesh)
  host_batches = _input_pipeline().eval_batches(
      data_config, global_batch_size=global_batch_size, process_index=jax.process_index(),
      process_count=jax.process_count())
  return (parallel.global_batch(batch, mesh) for batch in host_batches)
