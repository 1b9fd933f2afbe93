"""Training and evaluation end to end on real tfds data, orbax checkpoints on disk."""

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from mobileshuffle_jax import checkpointing, evaluation, train_step, training

from tests.conftest import REPO, SUBPROCESS_ENV, copy_of


# Also with data echoing, evaluated on a few images to keep it cheap.
@pytest.mark.parametrize("overrides", [
    {}, {"data.echo": 2, "data.echo_window": 64, "data.eval_split": "validation[:64]"}],
    ids=["echo1", "echo2"])
def test_train_then_resume_matches_uninterrupted_run(tmp_path, tiny_config, overrides):
  run_config = functools.partial(tiny_config, **overrides)
  interrupted = str(tmp_path / "interrupted")
  training.train_and_evaluate(run_config(num_train_steps=3), interrupted)
  store = checkpointing.CheckpointStore(interrupted, read_only=True)
  assert store.all_steps() == [3]
  store.close()
  # A restart with the full length resumes at step 3, not from scratch.
  resumed = training.train_and_evaluate(run_config(), interrupted)
  with open(os.path.join(interrupted, "metrics.jsonl")) as f:
    logged_steps = [json.loads(line)["step"] for line in f]
  assert logged_steps.count(2) == 1 and 4 in logged_steps and 6 in logged_steps

  uninterrupted = str(tmp_path / "uninterrupted")
  straight = training.train_and_evaluate(run_config(), uninterrupted)
  a = evaluation.evaluate_checkpoint(interrupted)
  b = evaluation.evaluate_checkpoint(uninterrupted)
  assert a["step"] == b["step"] == 6
  assert a["params_sha256"] == b["params_sha256"]
  assert a["params_sha256_verified"] and b["params_sha256_verified"]
  assert resumed["top1"] == straight["top1"]


def test_eval_counts_every_example_once(tmp_path, tiny_config):
  workdir = str(tmp_path / "run")
  config = tiny_config(num_train_steps=2, eval_every_steps=2,
                       checkpoint_every_steps=2)
  training.train_and_evaluate(config, workdir)
  results = {}
  for batch_size in (64, 56, 360, 512):  # 360 validation images: none but 360 divides
    config.eval_batch_size = batch_size
    results[batch_size] = evaluation.evaluate_checkpoint(workdir, config)
  assert {r["num_examples"] for r in results.values()} == {360}
  for r in results.values():
    np.testing.assert_allclose(r["top1"], results[360]["top1"], atol=1e-6)
    np.testing.assert_allclose(r["loss"], results[360]["loss"], rtol=1e-5)


def test_non_finite_loss_stops_and_keeps_good_checkpoints(tmp_path, tiny_config):
  workdir = str(tmp_path / "nan")
  training.train_and_evaluate(tiny_config(num_train_steps=3), workdir)
  before = evaluation.evaluate_checkpoint(workdir)
  with pytest.raises(FloatingPointError, match="non-finite loss"):
    training.train_and_evaluate(tiny_config(learning_rate=1e30), workdir)
  store = checkpointing.CheckpointStore(workdir, read_only=True)
  assert store.all_steps() == [3]
  store.close()
  assert evaluation.evaluate_checkpoint(workdir)["params_sha256"] == before["params_sha256"]


def test_workdir_of_another_model_is_refused(tmp_path, tiny_config):
  workdir = str(tmp_path / "mnv1")
  training.train_and_evaluate(tiny_config(num_train_steps=3), workdir)
  other = tiny_config(model="shufflenet_v1")
  other.model_options = dict(groups=3, scale=0.25)
  with pytest.raises(ValueError, match="different model"):
    training.train_and_evaluate(other, workdir)
  assert os.path.exists(os.path.join(workdir, "checkpoints", "3"))


@pytest.mark.parametrize("field,value,message", [
    ("num_epochs", 3.0, "num_train_steps"),
    ("learning_rate", -1.0, "learning_rate"),
    ("global_batch_size", 30, "global_batch_size"),
    ("compute_dtype", "float16", "compute_dtype"),
    ("model_options.alpha", 0.0, "alpha"),
])
def test_invalid_config_names_the_field(tmp_path, field, value, message, tiny_config):
  with pytest.raises(ValueError, match=message):
    training.train_and_evaluate(tiny_config(**{field: value}), str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "1"))


def write_image_folder(root):
  """A tiny ImageNet-like folder with the awkward files real data sets contain."""
  rng = np.random.default_rng(0)
  for split, count in (("train", 6), ("validation", 3)):
    for label, tint in (("n01", 0), ("n02", 255)):
      folder = root / split / label
      folder.mkdir(parents=True)
      for i in range(count):
        size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
        pixels = rng.integers(0, 64, size + (3,), dtype=np.uint8) + np.uint8(tint // 2)
        Image.fromarray(pixels).save(folder / f"{i}.JPEG", "JPEG")
      Image.fromarray(pixels[..., 0]).save(folder / "gray.JPEG", "JPEG")
      Image.fromarray(pixels).convert("CMYK").save(folder / "cmyk.JPEG", "JPEG")
      Image.fromarray(pixels).save(folder / "png_named.JPEG", "PNG")
  (root / "train" / "n01" / "broken.JPEG").write_bytes(b"not an image")


def test_train_and_eval_scripts_on_an_image_folder(tmp_path):
  write_image_folder(tmp_path / "images")
  workdir = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  common = ["--config.data.name=image_folder", f"--config.data.image_folder={tmp_path}/images",
            f"--config.data.data_dir={tmp_path}/tfds", "--config.data.image_size=32",
            "--config.model_options.alpha=0.25", "--config.global_batch_size=8",
            "--config.eval_batch_size=4", "--config.lowering=xla"]
  train = subprocess.run(
      [sys.executable, "train.py", "--config=configs/default.py", f"--workdir={workdir}",
       *common, "--config.num_train_steps=4", "--config.log_every_steps=2",
       "--config.eval_every_steps=4", "--config.checkpoint_every_steps=4"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert train.returncode == 0, train.stderr[-3000:]
  assert "step 4/4" in train.stderr
  evaluated = subprocess.run(
      [sys.executable, "eval.py", f"--workdir={workdir}"], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=600)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  result = json.loads(evaluated.stdout.strip().splitlines()[-1])
  assert result["num_examples"] == 12  # 2 classes x (3 JPEGs + gray + CMYK + PNG)
  assert result["step"] == 4 and len(result["params_sha256"]) == 64
  assert set(result) >= {"top1", "top5", "loss", "num_examples", "step", "params_sha256"}


def test_init_from_loads_every_tensor_and_can_drop_the_classifier(tmp_path, tiny_config):
  source = str(tmp_path / "source")
  training.train_and_evaluate(tiny_config(num_train_steps=3), source)
  saved = checkpointing.CheckpointStore(source, read_only=True)
  expected = checkpointing.evaluation_variables(saved.restore_as_saved(3))
  saved.close()
  config = tiny_config()
  mesh = training.parallel.create_mesh()
  replicated = training.parallel.replicated(mesh)

  def fresh_state(num_classes):
    model = training.model_config.build_model(config, num_classes)
    tx = training.optim.create_optimizer(config, training.optim.learning_rate_schedule(
        config, 10.0, 100))
    return jax.jit(train_step.make_init_fn(model, tx, config),
                   out_shardings=replicated)(jax.random.key(1))

  state = training.initialize_from(fresh_state(10), source, False, replicated)
  jax.tree.map(np.testing.assert_array_equal,
               {"params": state.params, "batch_stats": state.batch_stats}, expected)

  with pytest.raises(ValueError, match=r"classifier/(kernel|bias).*init_from_drop_classifier"):
    training.initialize_from(fresh_state(5), source, False, replicated)
  fresh = fresh_state(5)
  state = training.initialize_from(fresh, source, True, replicated)
  np.testing.assert_array_equal(state.params["classifier"]["kernel"],
                                fresh.params["classifier"]["kernel"])
  np.testing.assert_array_equal(state.params["stem"]["conv"]["kernel"],
                                expected["params"]["stem"]["conv"]["kernel"])

  # And through the config: fine-tuning starts from the source, not from scratch.
  finetuned = str(tmp_path / "finetuned")
  result = training.train_and_evaluate(
      tiny_config(num_train_steps=2, init_from=source), finetuned)
  assert result["num_examples"] == 360


def logged_steps(workdir, prefix):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [r["step"] for r in records if any(key.startswith(prefix) for key in r)]


def test_resume_after_a_crash_logs_each_step_once(trained_workdir, tiny_config, tmp_path):
  workdir = copy_of(trained_workdir, tmp_path / "run")
  # Killed after logging (and evaluating) step 6 but before its checkpoint was complete.
  for name in os.listdir(os.path.join(workdir, "checkpoints")):
    if name.startswith("6"):
      shutil.rmtree(os.path.join(workdir, "checkpoints", name))
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 7, "train/lo')  # a line cut short by the kill
  training.train_and_evaluate(tiny_config(), workdir)
  assert logged_steps(workdir, "train/") == [2, 4, 6]
  assert logged_steps(workdir, "eval/") == [6]


OUR_LINE = re.compile(r"^\d\d:\d\d:\d\d \[0\] ")


def test_ctrl_c_saves_then_reruns_resume_and_report(tmp_path):
  """train.py as a user drives it: Ctrl-C saves and stops; the same command resumes to
  the end; rerun once finished, it prints the result again and leaves its config alone.
  The console holds our own lines only (a fresh data directory: digits is prepared)."""
  workdir = tmp_path / "run"
  command = [sys.executable, "train.py", "--config=configs/default.py", f"--workdir={workdir}",
             f"--config.data.data_dir={tmp_path}/tfds", "--config.model_options.alpha=0.25",
             "--config.global_batch_size=32", "--config.log_every_steps=1",
             "--config.checkpoint_every_steps=1000", "--config.eval_every_steps=1000",
             "--config.lowering=xla"]
  interrupted = subprocess.Popen(command + ["--config.num_train_steps=1000"], cwd=REPO,
                                 env=SUBPROCESS_ENV, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
  lines = []
  for line in interrupted.stderr:
    lines.append(line)
    if " step 2/1000 " in line:
      interrupted.send_signal(signal.SIGINT)
      break
  stdout, rest = interrupted.communicate(timeout=300)
  lines += rest.splitlines(keepends=True)
  assert interrupted.returncode == 130, "".join(lines)[-3000:]
  stopped = json.loads(stdout.strip().splitlines()[-1])
  assert stopped["signal"] == "SIGINT"
  step = stopped["preempted_at_step"]
  assert os.path.isdir(workdir / "checkpoints" / str(step))
  assert all(OUR_LINE.match(line) for line in lines), "".join(lines)

  finish = command + [f"--config.num_train_steps={step + 2}"]
  finished = subprocess.run(finish, cwd=REPO, env=SUBPROCESS_ENV, capture_output=True,
                            text=True, timeout=300)
  assert finished.returncode == 0, finished.stderr[-3000:]
  result = json.loads(finished.stdout.strip().splitlines()[-1])
  assert result["num_examples"] == 360
  assert logged_steps(str(workdir), "train/") == list(range(1, step + 3))
  config_file = workdir / "config.json"
  config_stat = (config_file.read_bytes(), config_file.stat().st_mtime_ns)

  # Both streams into one file, as `make train > log 2>&1` does: the result keeps its line.
  again = subprocess.run(finish, cwd=REPO, env=SUBPROCESS_ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=300)
  assert again.returncode == 0, again.stdout[-3000:]
  *progress_lines, last = again.stdout.strip().splitlines()
  assert json.loads(last) == result
  assert all(OUR_LINE.match(line) for line in progress_lines), again.stdout
  assert (config_file.read_bytes(), config_file.stat().st_mtime_ns) == config_stat
  assert logged_steps(str(workdir), "train/") == list(range(1, step + 3))


def test_scripts_fail_in_one_line(tmp_path):
  for script, arguments, expected in [
      ("train.py", ["--config=configs/default.py", f"--workdir={tmp_path}/w",
                    "--config.unknown_field=1"], "the config has no field 'unknown_field'"),
      ("train.py", ["--config=configs/default.py", f"--workdir={tmp_path}/w",
                    "--config.learning_rate=-1"], "config.learning_rate=-1.0 is invalid"),
      ("eval.py", [f"--workdir={tmp_path}/missing"], "is not a directory written by"),
  ]:
    run = subprocess.run([sys.executable, script, *arguments], cwd=REPO, env=SUBPROCESS_ENV,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode in (1, 2) and run.stdout == ""
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error: ") and expected in line, run.stderr


def test_train_and_eval_on_synthetic_data_never_import_tensorflow(tmp_path):
  """With data.name=synthetic, train.py and eval.py run to the end, save a checkpoint and
  evaluate it with a `tensorflow` package that raises ImportError first on the path."""
  blocked = tmp_path / "blocked" / "tensorflow"
  blocked.mkdir(parents=True)
  (blocked / "__init__.py").write_text('raise ImportError("TensorFlow is blocked here")\n')
  env = dict(SUBPROCESS_ENV, PYTHONPATH=str(blocked.parent))
  workdir = str(tmp_path / "run")
  flags = ["--config", "configs/default.py", "--workdir", workdir,
           "--config.data.name=synthetic", "--config.data.synthetic_num_classes=10",
           "--config.data.synthetic_eval_examples=20", "--config.model_options.alpha=0.25",
           "--config.global_batch_size=8", "--config.eval_batch_size=16",
           "--config.num_train_steps=4", "--config.log_every_steps=2",
           "--config.eval_every_steps=4", "--config.checkpoint_every_steps=4"]
  results, run_logs = [], []
  for script in ("train.py", "eval.py"):
    run = subprocess.run([sys.executable, script, *flags], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    run_logs.append(run.stderr)
  trained, evaluated = results
  assert "loop efficiency" in run_logs[0]
  assert trained["num_examples"] == evaluated["num_examples"] == 20
  assert evaluated["step"] == 4 and evaluated["top1"] == trained["top1"]
  store = checkpointing.CheckpointStore(workdir, read_only=True)
  try:
    assert store.latest_step() == 4
  finally:
    store.close()
