"""Process start-up shared by the entry points, before any device is touched."""

from __future__ import annotations

import logging
import os
import sys


def initialize() -> None:
  """Keep TensorFlow (input pipeline only) off accelerators; our progress on stderr.

  Library chatter (orbax, tfds) is kept to warnings; this package's own lines are INFO.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  ours = logging.getLogger("mobileshuffle_jax")
  ours.setLevel(logging.INFO)
  if not ours.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    ours.addHandler(handler)
    ours.propagate = False
