"""Test set-up shared by every module: quiet TensorFlow, one XLA compilation cache, and
the fixtures for small real runs (a tfds directory, the tiny config, a trained workdir, a
finished tiny sweep, a converted pytorchcv checkpoint and its predictor).

The Makefile gives JAX 8 simulated CPU devices. The cache (also inherited by the
train.py / eval.py subprocesses) lets runs that compile the same step share one compile.
"""

import logging
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "mobileshuffle_jax_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# GPUs and TPUs run float32 matrix products and convolutions at reduced precision by
# default (TF32, bfloat16 passes): 1e-3 off the float64 references the tests hold layers
# to. Tests (and their subprocesses) ask for full float32; on CPU nothing changes.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

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
  config.loop_efficiency_steps = 0  # measured by the synthetic-data test alone
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


# The tiny sweep of test_sweep.py and test_report.py: a 2x2 grid of tiny MobileNets, one
# seed; then a second seed for the pair of about equal mult-adds (0.5 at 32 px, 0.25 at 64).
SWEEP_CELLS = ["alpha=0.25,res=32", "alpha=0.25,res=64", "alpha=0.5,res=32",
               "alpha=0.5,res=64"]
SWEEP_STEPS = 4
SWEEP_SECOND_SEED_CELLS = [SWEEP_CELLS[1], SWEEP_CELLS[2]]

SWEEP_DEFINITION = '''
import ml_collections


def get_sweep():
  sweep = ml_collections.ConfigDict()
  sweep.description = "tiny width x resolution grid"
  sweep.config = {config!r}
  sweep.overrides = [
      ("data.data_dir", {data_dir!r}), ("lowering", "xla"), ("num_train_steps", {steps}),
      ("global_batch_size", 32), ("base_batch_size", 32), ("eval_batch_size", 128),
      ("schedule", "constant"), ("warmup_epochs", 0.0), ("log_every_steps", 2),
      ("eval_every_steps", {steps}), ("checkpoint_every_steps", {steps})]
  sweep.axes = [("model_options.alpha", (0.25, 0.5)), ("data.image_size", (32, 64), "res")]
  return sweep
'''


@pytest.fixture(scope="session")
def sweep_file(tmp_path_factory):
  """The tiny sweep's definition file."""
  directory = tmp_path_factory.mktemp("sweep")
  path = directory / "tiny.py"
  path.write_text(SWEEP_DEFINITION.format(config=os.path.join(REPO, "configs/default.py"),
                                          data_dir=str(directory / "tfds"),
                                          steps=SWEEP_STEPS))
  return str(path)


def _result_mtime(root, cell, seed=0):
  from mobileshuffle_jax import sweep  # pylint: disable=g-import-not-at-top

  return os.stat(os.path.join(sweep.run_workdir(root, cell, seed), sweep.RESULT_FILE)
                 ).st_mtime_ns


def _checkpoint_steps(workdir):
  from mobileshuffle_jax import checkpointing  # pylint: disable=g-import-not-at-top

  store = checkpointing.CheckpointStore(workdir, read_only=True)
  try:
    return sorted(store.all_steps())
  finally:
    store.close()


@pytest.fixture(scope="session")
def finished_root(sweep_file, tmp_path_factory):
  """A sweep run in five sessions: one cell (--only); a run killed right after its first
  cell's training returned, before the sweep recorded it; the rest; nothing left; seeds
  0 and 1 of two cells (--seeds 0,1 --only A --only B), of which seed 1 alone is new.

  Returns the root and the (cell, seed) runs that each later session trained.
  """
  from mobileshuffle_jax import sweep, training  # pylint: disable=g-import-not-at-top

  root = str(tmp_path_factory.mktemp("root"))
  assert sweep.main([sweep_file, "--workdir", root, "--only", SWEEP_CELLS[0]]) == 0
  assert sorted(os.listdir(root)) == sorted([SWEEP_CELLS[0], sweep.SWEEP_FILE])
  first_result = _result_mtime(root, SWEEP_CELLS[0])
  first_checkpoints = _checkpoint_steps(sweep.run_workdir(root, SWEEP_CELLS[0], 0))

  real_train = training.train_and_evaluate
  sessions = []

  def killed_after_training(config, workdir):
    sessions[-1].append(sweep.parse_run_workdir(workdir)[1:])
    real_train(config, workdir)
    raise KeyboardInterrupt

  def counted(config, workdir):
    sessions[-1].append(sweep.parse_run_workdir(workdir)[1:])
    return real_train(config, workdir)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(training, "train_and_evaluate", killed_after_training)
    sessions.append([])
    with pytest.raises(KeyboardInterrupt):
      sweep.main([sweep_file, "--workdir", root])
    assert sweep.read_result(sweep.run_workdir(root, SWEEP_CELLS[1], 0)) is None
    killed_checkpoints = _checkpoint_steps(sweep.run_workdir(root, SWEEP_CELLS[1], 0))
    patch.setattr(training, "train_and_evaluate", counted)
    for _ in range(2):
      sessions.append([])
      assert sweep.main([sweep_file, "--workdir", root]) == 0
    sessions.append([])
    second_seed = [arg for cell in SWEEP_SECOND_SEED_CELLS for arg in ("--only", cell)]
    assert sweep.main([sweep_file, "--workdir", root, "--seeds", "0,1", *second_seed]) == 0
  assert _result_mtime(root, SWEEP_CELLS[0]) == first_result
  assert _checkpoint_steps(sweep.run_workdir(root, SWEEP_CELLS[0], 0)) == first_checkpoints
  assert _checkpoint_steps(sweep.run_workdir(root, SWEEP_CELLS[1], 0)) == killed_checkpoints
  return root, sessions


# The converted checkpoint of test_predict.py and test_export.py: pytorchcv's 0.25 MobileNet
# with random weights and BN statistics, saved as a .pth and converted by
# `python -m mobileshuffle_jax.convert` in a subprocess; its logits under PyTorch are the
# reference. Those modules skip without torch, pytorchcv and safetensors.
CONVERTED_RESOLUTION = 224  # what the pytorchcv converter records
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def random_images(seed: int, count: int = 2) -> np.ndarray:
  """Random RGB images, 0..255, NHWC, at the converted checkpoint's resolution."""
  return np.random.default_rng(seed).uniform(
      0, 255, (count, CONVERTED_RESOLUTION, CONVERTED_RESOLUTION, 3)).astype(np.float32)


def torch_logits(net, images: np.ndarray) -> np.ndarray:
  """pytorchcv's own preprocessing (ImageNet mean/std on 0..1), NCHW."""
  import torch  # pylint: disable=g-import-not-at-top

  x = ((images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2)
  with torch.no_grad():
    return net(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def pytorchcv_mobilenet_wd4():
  """pytorchcv's MobileNet 0.25 with random weights; each BN gets the statistics of its
  input on calibration images (one cumulative training-mode pass), then random parameters
  and perturbed statistics. Random statistics alone would let the signal fade layer by
  layer and leave the logits blind to the image."""
  import torch  # pylint: disable=g-import-not-at-top
  from pytorchcv.models import mobilenet  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  net = mobilenet.mobilenet_wd4()
  norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for norm in norms:
    norm.momentum = None
    norm.reset_running_stats()
  net.train()
  torch_logits(net, random_images(seed=1, count=4))
  net.eval()
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for norm in norms:
      c = norm.num_features
      norm.weight.copy_(0.5 + torch.rand(c, generator=generator))
      norm.bias.copy_(0.2 * torch.randn(c, generator=generator))
      norm.running_mean.add_(0.2 * torch.randn(c, generator=generator)
                             * norm.running_var.sqrt())
      norm.running_var.mul_(0.5 + 1.5 * torch.rand(c, generator=generator))
    net.output.bias.copy_(0.1 * torch.randn(net.output.bias.shape, generator=generator))
  return net


def start_convert(*args: str) -> subprocess.Popen:
  """`python -m mobileshuffle_jax.convert ARGS` started; `.communicate()` finishes it."""
  return subprocess.Popen([sys.executable, "-m", "mobileshuffle_jax.convert", *args],
                          cwd=REPO, env=SUBPROCESS_ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
  """(pytorchcv net, its .pth, the directory `python -m mobileshuffle_jax.convert` wrote)."""
  import torch  # pylint: disable=g-import-not-at-top

  directory = tmp_path_factory.mktemp("converted")
  net = pytorchcv_mobilenet_wd4()
  path = str(directory / "mobilenet_wd4.pth")
  torch.save(net.state_dict(), path)
  out = str(directory / "mobilenet_wd4")
  convert = start_convert("pytorchcv", path, "--out", out)
  stdout, stderr = convert.communicate(timeout=300)
  assert convert.returncode == 0, stderr[-3000:]
  assert f"-> {out}" in stdout
  return net, path, out


@pytest.fixture(scope="session")
def predictor(converted):
  """`mobileshuffle_jax.load` of the converted directory."""
  import mobileshuffle_jax  # pylint: disable=g-import-not-at-top

  return mobileshuffle_jax.load(converted[2])
