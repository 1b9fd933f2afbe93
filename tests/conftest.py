"""Test set-up shared by every module: quiet TensorFlow, one XLA compilation cache, and
the fixtures for small real runs (a tfds directory, the tiny config, a trained workdir).

The Makefile gives JAX 8 simulated CPU devices. The cache (also inherited by the
train.py / eval.py subprocesses) lets runs that compile the same step share one compile.
"""

import logging
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "mobileshuffle_jax_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocesses: CPU only, TensorFlow quiet, two simulated devices.
SUBPROCESS_ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
                      XLA_FLAGS="--xla_force_host_platform_device_count=2")


@pytest.fixture(autouse=True)
def _caplog_sees_the_package(caplog):
  """caplog captures the package's logger once, whether or not `runtime.initialize` (which
  stops it propagating) ran earlier in this process."""
  ours = logging.getLogger("mobileshuffle_jax")
  propagate = ours.propagate
  ours.propagate = False
  ours.addHandler(caplog.handler)
  yield
  ours.removeHandler(caplog.handler)
  ours.propagate = propagate


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A tfds data directory for the session: digits is prepared once per test worker."""
  return tmp_path_factory.mktemp("tfds")


def make_tiny_config(data_dir, **overrides):
  """The default recipe shrunk to seconds: a 0.25 MobileNet on 32 px digits, 6 steps,
  checkpoints at 3 and 6. `overrides` are dotted field names ('model_options.alpha')."""
  from configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.data.data_dir = str(data_dir)
  config.model_options.alpha = 0.25
  config.global_batch_size = 32
  config.base_batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = 6
  config.schedule = "constant"
  config.warmup_epochs = 0.0
  config.log_every_steps = 2
  config.eval_every_steps = 6
  config.checkpoint_every_steps = 3
  config.lowering = "xla"
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


@pytest.fixture(scope="session")
def tiny_config(data_dir):
  """`make_tiny_config` on the session's data directory."""
  return lambda **overrides: make_tiny_config(data_dir, **overrides)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, tiny_config):
  """A finished tiny run (steps 3 and 6 saved). Read it, or copy it (`copy_of`) first."""
  from mobileshuffle_jax import training  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  training.train_and_evaluate(tiny_config(), workdir)
  return workdir


def copy_of(workdir, destination):
  """A copy of `workdir` at `destination` (a test may then modify it)."""
  shutil.copytree(workdir, destination)
  return str(destination)
