"""Process start-up shared by the entry points, before any device is touched."""

from __future__ import annotations

import logging
import os
import sys

from absl import flags

flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, to start a multi-process run by hand; on Cloud "
                    "TPU pods and SLURM jobs the runtime finds it itself.")
flags.DEFINE_integer("num_processes", None, "Processes in a run started by hand.")
flags.DEFINE_integer("process_id", None, "This process's index in a run started by hand.")


def in_managed_cluster() -> bool:
  """A multi-process job whose scheduler `jax.distributed.initialize()` reads by itself."""
  environ = os.environ
  slurm = "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1
  tpu_pod = "," in environ.get("TPU_WORKER_HOSTNAMES", "")
  open_mpi = int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
  return slurm or tpu_pod or open_mpi


def initialize() -> None:
  """Join the multi-process runtime if there is one; keep TensorFlow off accelerators.

  `jax.distributed.initialize` must run before anything asks JAX about devices. Library
  chatter (orbax, tfds) is kept to warnings; this package's own lines are INFO.
  """
  import jax  # pylint: disable=g-import-not-at-top
  options = flags.FLAGS
  if options.coordinator_address:
    jax.distributed.initialize(options.coordinator_address, options.num_processes,
                               options.process_id)
  elif in_managed_cluster():
    jax.distributed.initialize()

  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU")
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  ours = logging.getLogger("mobileshuffle_jax")
  ours.setLevel(logging.INFO)
  if not ours.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s [{jax.process_index()}] %(message)s", "%H:%M:%S"))
    ours.addHandler(handler)
    ours.propagate = False


def shutdown() -> None:
  """Leave the multi-process runtime together: a process that exits while another is still
  finishing its last save or eval can make the coordination service abort the other."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("mobileshuffle_jax: done")
    jax.distributed.shutdown()
