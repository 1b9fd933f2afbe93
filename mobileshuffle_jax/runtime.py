"""Process start-up and shutdown shared by the entry points, before any device is touched.

`run(main)` is absl's `app.run` for train.py and eval.py: a failure prints one line
(`error: ...`) and exits non-zero, the traceback and the libraries' own warnings only with
`--verbose`. TensorFlow's and XLA's C++ logging is kept to errors from the first import on.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
import warnings

from absl import app, flags

# Before anything imports TensorFlow or jaxlib (the entry points import this module
# before parsing their flags): their C++ banners and notices stay off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow runs only the input pipeline here (decoding, cropping, resizing), which its
# oneDNN custom ops take no part in. On CPUs where it turns them on by default (AVX-512
# VNNI and newer) it announces them on stderr before any log level applies.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, to start a multi-process run by hand; on Cloud "
                    "TPU pods and SLURM jobs the runtime finds it itself.")
flags.DEFINE_integer("num_processes", None, "Processes in a run started by hand.")
flags.DEFINE_integer("process_id", None, "This process's index in a run started by hand.")
flags.DEFINE_bool("verbose", False, "Print the libraries' warnings and, on failure, the "
                  "traceback.")

# Failures whose message says all: no exception type in front of it.
EXPLAINED_ERRORS = (ValueError, OSError, RuntimeError, FloatingPointError)


def in_managed_cluster() -> bool:
  """A multi-process job whose scheduler `jax.distributed.initialize()` reads by itself."""
  environ = os.environ
  slurm = "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1
  tpu_pod = "," in environ.get("TPU_WORKER_HOSTNAMES", "")
  open_mpi = int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
  return slurm or tpu_pod or open_mpi


def initialize() -> None:
  """Join the multi-process runtime if there is one, and set up logging.

  `jax.distributed.initialize` must run before anything asks JAX about devices. This
  package's own lines are INFO; the libraries' logging (orbax, tfds, absl) and Python
  warnings show only with --verbose. TensorFlow is not imported here: the input pipeline,
  its one user in training, keeps it off accelerators when it is imported.
  """
  import jax  # pylint: disable=g-import-not-at-top
  options = flags.FLAGS
  if options.coordinator_address:
    jax.distributed.initialize(options.coordinator_address, options.num_processes,
                               options.process_id)
  elif in_managed_cluster():
    jax.distributed.initialize()
  if jax.process_count() > 1:
    import orbax.checkpoint  # pylint: disable=g-import-not-at-top,unused-import  (defines the flag)
    # Orbax's barriers through the coordination service too, as `parallel.barrier`
    # explains: its default, a collective, gives a process saving late only 30 s.
    options.experimental_orbax_use_distributed_barrier = True

  quiet_libraries(verbose=options.verbose)
  ours = logging.getLogger("mobileshuffle_jax")
  ours.setLevel(logging.INFO)
  if not ours.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s [{jax.process_index()}] %(message)s", "%H:%M:%S"))
    ours.addHandler(handler)
    ours.propagate = False


def quiet_libraries(verbose: bool) -> None:
  """The libraries' logging (through absl) and warnings: shown only when `verbose`."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING if verbose else absl_logging.FATAL)
  if not verbose:
    warnings.simplefilter("ignore")
    # Library threads that fail (orbax's, after a failed save) would print tracebacks of
    # their own; the failure reaches the main thread, which reports it in one line.
    logging.getLogger().addHandler(logging.NullHandler())
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda unraisable: None


def shutdown() -> None:
  """Leave the multi-process runtime together: a process that exits while another is still
  finishing its last save or eval can make the coordination service abort the other."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    from mobileshuffle_jax import parallel  # pylint: disable=g-import-not-at-top
    parallel.barrier("done")
    jax.distributed.shutdown()


def run(main) -> None:
  """`app.run(main)` with failures as one line each, of flags and of `main` alike."""
  app.run(_reporting_failures(main), flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except Exception as error:  # pylint: disable=broad-except
    # ml_collections reports an unknown config field as a bare AttributeError.
    if isinstance(error, AttributeError):
      field = str(error).strip("\"' ")
      given = [arg for arg in argv[1:] if field in arg]
      message = (f"the config has no field {field!r} ({' '.join(given) or 'command line'}); "
                 "its fields are those of the config file")
    else:
      message = str(error)
    _exit(2, f"error: {message}  (--help lists the flags)")


def _reporting_failures(main):
  def wrapped(argv):
    try:
      main(argv)
    except KeyboardInterrupt:
      _exit(130, "interrupted")
    except Exception as error:  # pylint: disable=broad-except
      if flags.FLAGS.verbose:
        traceback.print_exc()
      message = str(error) if isinstance(error, EXPLAINED_ERRORS) else (
          f"{type(error).__name__}: {error}")
      hint = "" if flags.FLAGS.verbose else "  (--verbose shows the traceback)"
      _exit(1, f"error: {message}{hint}")
  return wrapped


def _exit(status: int, line: str) -> None:
  """Print `line` and leave now. A failed asynchronous checkpoint save leaves orbax threads
  waiting minutes for signals that will never come; a normal exit would wait for them."""
  sys.stdout.flush()
  print(line, file=sys.stderr, flush=True)
  logging.shutdown()
  os._exit(status)  # pylint: disable=protected-access
