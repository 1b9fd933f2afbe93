"""Scale-out: 8 devices equal 1, two processes equal one, SIGTERM loses nothing, and the
sharded step communicates nothing but the gradient and statistics reductions."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import flax.traverse_util
import jax
import numpy as np
import pytest

from mobileshuffle_jax import (checkpointing, data, evaluation, model_config, parallel,
                               train_step, training)

from configs import default
from tests.conftest import REPO, make_tiny_config


def small_config(data_dir, **overrides):
  """The tiny config at 64 px over two input shards, tamed for exact comparisons.

  A gentle rate and a large BN epsilon. At initialization this network amplifies float
  rounding steeply (a 1e-7 relative nudge of the initial weights moves the weights by
  1e-4 after two steps at rate 0.01, mostly through BN of near-constant channels), which
  would swamp the comparison; tamed, summing gradients in another order stays far below
  the tolerance while any real difference in what is computed (local instead of global
  gradients or statistics) is of the size of the updates.
  """
  return make_tiny_config(data_dir, **{
      "num_train_steps": 3, "learning_rate": 0.001, "model_options.bn_epsilon": 0.1,
      "log_every_steps": 1, "eval_every_steps": 1000, "checkpoint_every_steps": 1000,
      "data.input_shards": 2, "data.image_size": 64, **overrides})


def saved_variables(workdir):
  store = checkpointing.CheckpointStore(workdir, read_only=True)
  try:
    return flax.traverse_util.flatten_dict(
        store.restore_as_saved(store.latest_step()), sep="/")
  finally:
    store.close()


def logged_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]


def assert_same_training(workdir_a, workdir_b):
  np.testing.assert_allclose(logged_losses(workdir_a), logged_losses(workdir_b), rtol=5e-5)
  a, b = saved_variables(workdir_a), saved_variables(workdir_b)
  assert a.keys() == b.keys()
  for path in a:
    np.testing.assert_allclose(a[path], b[path], rtol=1e-4, atol=1e-5, err_msg=path)


@pytest.mark.parametrize("bn_group_size", [4, -1], ids=["bn-per-device", "bn-global"])
def test_eight_devices_train_like_one(tmp_path, data_dir, monkeypatch, bn_group_size):
  assert jax.device_count() == 8
  config = small_config(data_dir, bn_group_size=bn_group_size)
  eight = str(tmp_path / "eight")
  training.train_and_evaluate(config, eight)
  one_device = parallel.Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))
  monkeypatch.setattr(parallel, "create_mesh", lambda: one_device)
  one = str(tmp_path / "one")
  training.train_and_evaluate(config, one)
  assert_same_training(eight, one)


@pytest.mark.parametrize("model,options", [
    ("shufflenet_v1", dict(groups=3, scale=0.5)),
    ("shufflenet_v1", dict(groups=8, scale=0.5)),
    ("mobilenet_v1", dict(alpha=0.5)),
])
def test_sharded_step_communicates_only_reductions(model, options):
  config = default.get_config()
  config.model, config.model_options, config.lowering = model, options, "auto"
  config.global_batch_size = 32
  config.data.image_size = 32
  compiled = train_step.lower_train_step(config, num_classes=1000).compile()
  found = parallel.collectives(compiled.as_text())
  assert set(found) == {"all-reduce"}, found
  # What is reduced is the gradients, BN statistics and a few metrics: nothing that grows
  # with the batch (an all-gathered batch would be 32 x 32 x 32 x 3 floats and up).
  network = model_config.build_model(config, 1000)
  variables = jax.eval_shape(network.init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
  state_bytes = 4 * sum(x.size for x in jax.tree.leaves(variables))
  assert found["all-reduce"]["bytes"] <= state_bytes + 4096


def test_programs_compile_once_per_signature_and_run_as_jitted():
  double = jax.jit(lambda x: 2 * x)
  compiled = parallel.compiled_on_every_process(double, np.ones(3, np.float32))
  assert parallel.compiled_on_every_process(double, np.zeros(3, np.float32)) is compiled
  assert parallel.compiled_on_every_process(double, np.ones(4, np.float32)) is not compiled
  np.testing.assert_array_equal(compiled(np.arange(3, dtype=np.float32)), [0, 2, 4])


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def train_command(workdir, data_dir, steps, extra=()):
  return [sys.executable, "train.py", "--config=configs/default.py", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.model_options.alpha=0.25",
          "--config.global_batch_size=32", "--config.base_batch_size=32",
          "--config.eval_batch_size=64", f"--config.num_train_steps={steps}",
          "--config.learning_rate=0.001", "--config.model_options.bn_epsilon=0.1", "--config.schedule=constant",
          "--config.warmup_epochs=0",
          "--config.log_every_steps=1", "--config.eval_every_steps=1000",
          "--config.checkpoint_every_steps=1000", "--config.lowering=xla",
          "--config.data.input_shards=2", "--config.loop_efficiency_steps=0", *extra]


def environment(devices):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def run_processes(commands, env):
  processes = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for c in commands]
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-4000:]
  return outputs


def test_two_processes_train_save_and_restore_like_one(tmp_path, data_dir):
  # Prepare the data once, so the two processes do not race to build it.
  data.prepare(small_config(data_dir).data)
  multi = str(tmp_path / "two_processes")

  def two_process_run(steps):
    port = free_port()
    run_processes([train_command(multi, data_dir, steps, [
        f"--coordinator_address=localhost:{port}", "--num_processes=2",
        f"--process_id={i}"]) for i in range(2)], environment(devices=2))

  two_process_run(steps=2)  # saves at step 2 ...
  two_process_run(steps=4)  # ... and a new pair of processes restores it and goes on
  single = str(tmp_path / "one_process")
  run_processes([train_command(single, data_dir, 4)], environment(devices=4))
  a, b = saved_variables(multi), saved_variables(single)
  for path in a:
    np.testing.assert_allclose(a[path], b[path], rtol=1e-4, atol=1e-5, err_msg=path)
  np.testing.assert_allclose(logged_losses(multi), logged_losses(single), rtol=5e-5)


def test_sigterm_then_restart_equals_uninterrupted_run(tmp_path, data_dir):
  steps = 30
  interrupted = tmp_path / "interrupted"
  log_path = tmp_path / "interrupted.log"
  with open(log_path, "w") as log:
    process = subprocess.Popen(train_command(interrupted, data_dir, steps), cwd=REPO,
                               env=environment(devices=1), stdout=log,
                               stderr=subprocess.STDOUT)
    metrics = interrupted / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 5):
      assert process.poll() is None and time.time() < deadline, log_path.read_text()[-4000:]
      time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=300)
  output = log_path.read_text()
  assert process.returncode == 0, output[-4000:]
  assert "Stopped by SIGTERM: saved step" in output
  stopped_at = checkpointing.CheckpointStore(str(interrupted), read_only=True).latest_step()
  assert 5 <= stopped_at < steps

  run_processes([train_command(interrupted, data_dir, steps)], environment(devices=1))
  uninterrupted = tmp_path / "uninterrupted"
  run_processes([train_command(uninterrupted, data_dir, steps)], environment(devices=1))
  a = evaluation.evaluate_checkpoint(str(interrupted))
  b = evaluation.evaluate_checkpoint(str(uninterrupted))
  assert a["step"] == b["step"] == steps
  assert a["params_sha256"] == b["params_sha256"]
