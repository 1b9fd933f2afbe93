"""One training run per workdir: a second is refused with the holder's name, and a lock
whose holder died (SIGKILL) is taken over with a warning."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

from mobileshuffle_jax import training, workdir_lock
from tests.conftest import REPO, SUBPROCESS_ENV

HOLDER = """
import sys, time
from mobileshuffle_jax import workdir_lock
workdir_lock.WorkdirLock(sys.argv[1]).acquire()
print("holding", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
  """Another process holding the lock of `tmp_path/run`, as a running train.py does."""
  workdir = tmp_path / "run"
  process = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], cwd=REPO,
                             env=SUBPROCESS_ENV, stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline().strip() == "holding"
  yield workdir, process
  process.kill()
  process.wait()


def test_second_run_is_refused_and_a_dead_holder_taken_over(holder, tiny_config, caplog):
  workdir, process = holder
  with pytest.raises(workdir_lock.WorkdirInUseError) as refusal:
    training.train_and_evaluate(tiny_config(num_train_steps=1), str(workdir))
  message = str(refusal.value)
  assert f"PID {process.pid} on {socket.gethostname()}, started " in message
  assert sorted(os.listdir(workdir)) == [workdir_lock.LOCK_FILE]  # nothing else touched

  process.send_signal(signal.SIGKILL)  # dies holding it: no chance to release
  process.wait()
  with caplog.at_level(logging.WARNING):
    with workdir_lock.WorkdirLock(str(workdir)):
      holder_record = json.loads(open(workdir / workdir_lock.LOCK_FILE).read())
      assert holder_record["pid"] == os.getpid()
  assert any(f"from PID {process.pid}" in m and "gone" in m for m in caplog.messages)
  # Released in order: the next run takes it without a warning.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    with workdir_lock.WorkdirLock(str(workdir)):
      pass
  assert not caplog.messages


def test_lock_is_exclusive_within_a_process_too(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path)):
    with pytest.raises(workdir_lock.WorkdirInUseError, match=f"PID {os.getpid()}"):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
