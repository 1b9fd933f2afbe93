"""Checkpoint integrity on real orbax checkpoints: every reader verifies fingerprints,
readers survive a checkpoint deleted under them, and a save that fails stops the run
with one line (on a real read-only and a real full file system)."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import mobileshuffle_jax
from mobileshuffle_jax import checkpointing, evaluation, export, training
from tests.conftest import REPO, SUBPROCESS_ENV, copy_of


def largest_file(directory):
  files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
  return max(files, key=os.path.getsize)


def flip_one_bit(path):
  """Flip the lowest bit of the byte in the middle of `path`: a silent disk error."""
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 1]))


@pytest.fixture
def corrupted(trained_workdir, tmp_path):
  """A copy of the trained run whose step 6 has one bit flipped in its largest variables
  file, and the fingerprint step 6 recorded."""
  workdir = copy_of(trained_workdir, tmp_path / "corrupted")
  store = checkpointing.CheckpointStore(workdir, read_only=True)
  recorded = store.restore_meta(6)["params_sha256"]
  store.close()
  flip_one_bit(largest_file(os.path.join(workdir, "checkpoints", "6", "variables")))
  return workdir, recorded


def assert_names_the_corruption(message, workdir, recorded):
  assert "step 6" in message and os.path.join(workdir, "checkpoints", "6") in message
  assert recorded in message  # and the restored fingerprint beside it:
  assert len([word for word in message.replace(",", " ").split()
              if len(word) == 64 and all(c in "0123456789abcdef" for c in word)]) == 2


def test_every_reader_refuses_a_corrupted_checkpoint(corrupted, tiny_config, tmp_path):
  workdir, recorded = corrupted
  readers = {
      "evaluate": lambda: evaluation.evaluate_checkpoint(workdir),
      "load": lambda: mobileshuffle_jax.load(workdir),
      "export": lambda: export.export_checkpoint(workdir, str(tmp_path / "out.safetensors")),
      "init_from": lambda: training.train_and_evaluate(
          tiny_config(num_train_steps=1, init_from=workdir), str(tmp_path / "finetune")),
  }
  for name, read in readers.items():
    with pytest.raises(checkpointing.CorruptCheckpointError) as refusal:
      read()
    assert_names_the_corruption(str(refusal.value), workdir, recorded), name
  assert not os.path.exists(tmp_path / "out.safetensors")
  assert not os.path.exists(tmp_path / "finetune" / "checkpoints" / "1")
  # Resuming refuses too, and trains nothing on the corrupted weights.
  with pytest.raises(checkpointing.CorruptCheckpointError) as refusal:
    training.train_and_evaluate(tiny_config(num_train_steps=8), workdir)
  assert_names_the_corruption(str(refusal.value), workdir, recorded)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  # An intact step is still readable.
  assert evaluation.evaluate_checkpoint(workdir, step=3)["step"] == 3


def test_resume_refuses_a_corrupted_optimizer_state(trained_workdir, tiny_config, tmp_path):
  workdir = copy_of(trained_workdir, tmp_path / "run")
  flip_one_bit(largest_file(os.path.join(workdir, "checkpoints", "6", "opt_state")))
  with pytest.raises(checkpointing.CorruptCheckpointError, match="train_state_sha256"):
    training.train_and_evaluate(tiny_config(num_train_steps=8), workdir)


def test_eval_script_refuses_a_corrupted_checkpoint_in_one_line(corrupted):
  workdir, recorded = corrupted
  run = subprocess.run([sys.executable, "eval.py", f"--workdir={workdir}"], cwd=REPO,
                       env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
  assert run.returncode == 1
  assert run.stdout == ""
  (line,) = run.stderr.strip().splitlines()
  assert line.startswith("error: ") and recorded in line


def test_readers_choose_again_when_the_checkpoint_is_deleted_under_them(
    trained_workdir, tmp_path, monkeypatch):
  workdir = copy_of(trained_workdir, tmp_path / "run")
  chosen = checkpointing.CheckpointStore.saved_step

  def chosen_then_deleted(store, step=None):
    # What a training run with keep_checkpoints does between a reader's choice and read.
    step = chosen(store, step)
    shutil.rmtree(store.step_path(step), ignore_errors=True)
    monkeypatch.setattr(checkpointing.CheckpointStore, "saved_step", chosen)
    return step

  monkeypatch.setattr(checkpointing.CheckpointStore, "saved_step", chosen_then_deleted)
  assert mobileshuffle_jax.load(workdir).step == 3  # 6 vanished: the latest is 3 now

  monkeypatch.setattr(checkpointing.CheckpointStore, "saved_step", chosen_then_deleted)
  with pytest.raises(ValueError, match="step 3 of .* was deleted while it was being read"):
    evaluation.evaluate_checkpoint(workdir, step=3)


# A save that fails ---------------------------------------------------------------------

FAILING_SAVE = textwrap.dedent("""\
    set -u
    W=$1; MODE=$2; SIZE=$3; shift 3
    mkdir -p "$W/checkpoints"
    mount -t tmpfs -o "size=$SIZE" tmpfs "$W/checkpoints" || exit 97
    "$@" > "$W.stdout" 2> "$W.stderr" &
    pid=$!
    # Once the first checkpoint is complete: read-only (the kernel refuses while a file
    # is open for writing: retry), or full (a file takes all the space left).
    while [ ! -d "$W/checkpoints/4" ] && kill -0 $pid 2>/dev/null; do sleep 0.05; done
    if [ "$MODE" = read-only ]; then
      until mount -o remount,ro "$W/checkpoints" 2>/dev/null; do sleep 0.02; done
    else
      dd if=/dev/zero of="$W/checkpoints/.filler" bs=64k 2>/dev/null
    fi
    wait $pid; status=$?
    # While the file system is still mounted: what a reader finds there now.
    "$1" -c "import sys, mobileshuffle_jax; print(mobileshuffle_jax.load(sys.argv[1]).step)" \
        "$W" > "$W.loaded" 2>&1
    exit $status
    """)


def unshare_available():
  try:
    return subprocess.run(["unshare", "-Urm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"],
                          capture_output=True, timeout=30).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


@pytest.mark.parametrize("mode,size,reason", [
    ("read-only", "64m", "Read-only file system"),
    ("full", "64m", "No space left on device"),
])
def test_failed_save_stops_the_run_in_one_line(tmp_path, data_dir, mode, size, reason):
  if not unshare_available():
    pytest.skip("needs user and mount namespaces (unshare -Urm) to mount a file system")
  workdir = str(tmp_path / "run")
  train = [sys.executable, "train.py", "--config=configs/default.py", f"--workdir={workdir}",
           f"--config.data.data_dir={data_dir}", "--config.model_options.alpha=0.25",
           "--config.global_batch_size=32", "--config.num_train_steps=40",
           "--config.log_every_steps=2", "--config.checkpoint_every_steps=4",
           "--config.eval_every_steps=1000", "--config.lowering=xla"]
  script = tmp_path / "failing_save.sh"
  script.write_text(FAILING_SAVE)
  run = subprocess.run(["unshare", "-Urm", "bash", str(script), workdir, mode, size, *train],
                       cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True,
                       timeout=600)
  stderr = open(workdir + ".stderr").read()
  assert run.returncode == 1, (run.returncode, stderr[-3000:])
  errors = [line for line in stderr.splitlines() if not line[:2].isdigit()]
  (line,) = errors  # everything else is a progress line of ours
  assert line.startswith("error: could not save step ") and reason in line
  assert os.path.join(workdir, "checkpoints") in line
  failed_step = int(line.split("could not save step ")[1].split()[0])
  # Stopped within one save interval of the failure: at the next log line or save.
  steps = [int(l.split("step ")[1].split("/")[0]) for l in stderr.splitlines()
           if " step " in l and "/40" in l]
  assert max(steps) <= failed_step + 4
  # The latest checkpoint saved before it is complete: it loads, fingerprint verified.
  # Its last line: `load` first says once on the console how malloc is set (`allocator`).
  loaded = open(workdir + ".loaded").read().strip().splitlines()[-1]
  assert loaded.isdigit() and 0 < int(loaded) < failed_step, loaded


def test_sigkill_between_saves_then_resume_equals_uninterrupted_run(
    trained_workdir, data_dir, tiny_config, tmp_path):
  """train.py killed outright after its step-3 save (while training on towards step 6)
  resumes from step 3 to the very parameters of the uninterrupted run."""
  import time  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path / "killed")
  config = tiny_config()
  overrides = {"data.data_dir": data_dir, "model_options.alpha": 0.25,
               "global_batch_size": 32, "base_batch_size": 32, "eval_batch_size": 64,
               "num_train_steps": 6, "schedule": "constant", "warmup_epochs": 0.0,
               "log_every_steps": 2, "eval_every_steps": 6, "checkpoint_every_steps": 3,
               "lowering": "xla"}
  command = [sys.executable, "train.py", "--config=configs/default.py", f"--workdir={workdir}",
             *[f"--config.{key}={value}" for key, value in overrides.items()]]
  # The uninterrupted run's device count: BatchNorm statistics are per device.
  env = dict(SUBPROCESS_ENV, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  checkpoints = os.path.join(workdir, "checkpoints")
  while not os.path.isdir(os.path.join(checkpoints, "3")) and process.poll() is None:
    time.sleep(0.01)
  process.kill()
  stderr = process.communicate(timeout=60)[1]
  assert process.returncode == -9, stderr[-3000:]
  assert not os.path.isdir(os.path.join(checkpoints, "6")), "killed too late to prove much"
  training.train_and_evaluate(config, workdir)
  resumed = checkpointing.CheckpointStore(workdir, read_only=True)
  uninterrupted = checkpointing.CheckpointStore(trained_workdir, read_only=True)
  assert resumed.all_steps() == [3, 6]
  assert (resumed.restore_meta(6)["train_state_sha256"]
          == uninterrupted.restore_meta(6)["train_state_sha256"])
  resumed.close()
  uninterrupted.close()
