"""Test set-up: quiet TensorFlow, and one XLA compilation cache for the whole suite.

The Makefile gives JAX 8 simulated CPU devices. The cache (also inherited by the
train.py / eval.py subprocesses) lets runs that compile the same step share one compile.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "mobileshuffle_jax_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
