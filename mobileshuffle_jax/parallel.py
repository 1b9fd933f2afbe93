"""Data parallelism: one 'data' mesh axis over every device of every process.

Parameters, optimizer state and BN statistics are replicated; batches are split along
the 'data' axis. Each process feeds only its own slice of every global batch.
"""

from __future__ import annotations

import re

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


COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute",
               "reduce-scatter")
_DTYPE_BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s8": 1,
                "u8": 1, "pred": 1}


def collectives(compiled_hlo: str) -> dict[str, dict[str, int]]:
  """Count and bytes of every cross-device collective in compiled HLO text.

  Bytes are those of each collective's result (for an all-reduce, what every device
  contributes and receives), summed over its operands.
  """
  found = {}
  pattern = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
  for line in compiled_hlo.splitlines():
    match = pattern.search(line)
    if not match or "=" not in line[:match.start()]:
      continue
    result_type = line[:match.start()].split("=", 1)[1]
    size = sum(_DTYPE_BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d]))
               for dtype, dims in re.findall(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]", result_type))
    entry = found.setdefault(match.group(1), {"count": 0, "bytes": 0})
    entry["count"] += 1
    entry["bytes"] += size
  return found
