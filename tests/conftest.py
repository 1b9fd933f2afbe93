"""Test set-up: TensorFlow never takes an accelerator, JAX sees 8 CPU devices (Makefile)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
