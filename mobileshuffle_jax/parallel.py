"""Data parallelism: one 'data' mesh axis over every device of every process.

Parameters, optimizer state and BN statistics are replicated; batches are split along
the 'data' axis. Each process feeds only its own slice of every global batch.
"""

from __future__ import annotations

import collections
import itertools
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
# Long enough for the slowest host to import, compile a full-size training step or save.
BARRIER_TIMEOUT_S = 3600
_COMPILED_KEPT = 8


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


_barrier_ids = itertools.count()


def barrier(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
  """Wait until every process is here (at once with one process).

  Through the coordination service, not a collective: XLA:CPU's Gloo collectives give a
  late process only 30 s, and on a loaded host one process can finish importing,
  compiling or saving minutes after another. Every process passes the same barriers in
  the same order.
  """
  ocp.multihost.get_barrier_sync_fn()(key=f"mobileshuffle_jax_{next(_barrier_ids)}_{name}",
                                     timeout_ms=timeout_s * 1000)


_compiled: collections.OrderedDict = collections.OrderedDict()


def compiled_on_every_process(jitted, *args) -> jax.stages.Compiled:
  """`jitted` compiled for `args`, returned once every process holds it.

  Call the result without `jitted`'s static arguments. A program's first collective
  is joined within Gloo's 30 s only if the processes start it together, so each program
  is compiled ahead of its first run and the processes meet at a `barrier` before
  running it. The last few programs are kept, keyed like jit's own cache, so repeated
  evaluations compile and meet once.
  """
  leaves, treedef = jax.tree.flatten(args)
  key = (jitted, treedef, tuple(_signature(leaf) for leaf in leaves))
  if key in _compiled:
    _compiled.move_to_end(key)
    return _compiled[key]
  compiled = jitted.lower(*args).compile()
  barrier("compiled")
  _compiled[key] = compiled
  if len(_compiled) > _COMPILED_KEPT:
    _compiled.popitem(last=False)
  return compiled


def _signature(leaf):
  if isinstance(leaf, jax.Array):
    return (jax.typeof(leaf), leaf.sharding)
  if isinstance(leaf, (np.ndarray, np.generic)):
    return (leaf.shape, leaf.dtype)
  return leaf  # a static argument: hashable, as jit requires


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
