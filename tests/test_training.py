"""Training and evaluation end to end on real tfds data, orbax checkpoints on disk."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import default
from mobileshuffle_jax import checkpointing, evaluation, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, **overrides):
  """The default recipe shrunk to seconds: a 0.25 MobileNet on 32 px digits."""
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


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def test_train_then_resume_matches_uninterrupted_run(tmp_path, data_dir):
  interrupted = str(tmp_path / "interrupted")
  training.train_and_evaluate(tiny_config(data_dir, num_train_steps=3), interrupted)
  store = checkpointing.CheckpointStore(interrupted, read_only=True)
  assert store.all_steps() == [3]
  store.close()
  # A restart with the full length resumes at step 3, not from scratch.
  resumed = training.train_and_evaluate(tiny_config(data_dir), interrupted)
  with open(os.path.join(interrupted, "metrics.jsonl")) as f:
    logged_steps = [json.loads(line)["step"] for line in f]
  assert logged_steps.count(2) == 1 and 4 in logged_steps and 6 in logged_steps

  uninterrupted = str(tmp_path / "uninterrupted")
  straight = training.train_and_evaluate(tiny_config(data_dir), uninterrupted)
  a = evaluation.evaluate_checkpoint(interrupted)
  b = evaluation.evaluate_checkpoint(uninterrupted)
  assert a["step"] == b["step"] == 6
  assert a["params_sha256"] == b["params_sha256"]
  assert a["params_sha256_verified"] and b["params_sha256_verified"]
  assert resumed["top1"] == straight["top1"]


def test_eval_counts_every_example_once(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  config = tiny_config(data_dir, num_train_steps=2, eval_every_steps=2,
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


def test_non_finite_loss_stops_and_keeps_good_checkpoints(tmp_path, data_dir):
  workdir = str(tmp_path / "nan")
  training.train_and_evaluate(tiny_config(data_dir, num_train_steps=3), workdir)
  before = evaluation.evaluate_checkpoint(workdir)
  with pytest.raises(FloatingPointError, match="non-finite loss"):
    training.train_and_evaluate(tiny_config(data_dir, learning_rate=1e30), workdir)
  store = checkpointing.CheckpointStore(workdir, read_only=True)
  assert store.all_steps() == [3]
  store.close()
  assert evaluation.evaluate_checkpoint(workdir)["params_sha256"] == before["params_sha256"]


def test_workdir_of_another_model_is_refused(tmp_path, data_dir):
  workdir = str(tmp_path / "mnv1")
  training.train_and_evaluate(tiny_config(data_dir, num_train_steps=3), workdir)
  other = tiny_config(data_dir, model="shufflenet_v1")
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
def test_invalid_config_names_the_field(tmp_path, data_dir, field, value, message):
  with pytest.raises(ValueError, match=message):
    training.train_and_evaluate(tiny_config(data_dir, **{field: value}), str(tmp_path))
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


def test_init_from_loads_every_tensor_and_can_drop_the_classifier(tmp_path, data_dir):
  source = str(tmp_path / "source")
  training.train_and_evaluate(tiny_config(data_dir, num_train_steps=3), source)
  saved = checkpointing.CheckpointStore(source, read_only=True)
  expected = checkpointing.evaluation_variables(saved.restore_as_saved(3))
  saved.close()
  config = tiny_config(data_dir)
  mesh = training.parallel.create_mesh()
  replicated = training.parallel.replicated(mesh)

  def fresh_state(num_classes):
    model = training.model_config.build_model(config, num_classes)
    tx = training.optim.create_optimizer(config, training.optim.learning_rate_schedule(
        config, 10.0, 100))
    return jax.jit(training.make_init_fn(model, tx, config),
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
      tiny_config(data_dir, num_train_steps=2, init_from=source), finetuned)
  assert result["num_examples"] == 360
