"""Data parallelism: one 'data' mesh axis over every device of every process.

Parameters, optimizer state and BN statistics are replicated; batches are split along
the 'data' axis. Each process feeds only its own slice of every global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def create_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assemble the global batch from this process's slice (no cross-host copy)."""
  sharding = batch_sharded(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, value)
          for name, value in local_batch.items()}


def check_batch_size(name: str, global_batch_size: int) -> None:
  devices, processes = jax.device_count(), jax.process_count()
  if global_batch_size <= 0 or global_batch_size % devices or global_batch_size % processes:
    raise ValueError(f"config.{name}={global_batch_size} must be a positive multiple of "
                     f"the device count {devices} (and of the process count {processes})")
