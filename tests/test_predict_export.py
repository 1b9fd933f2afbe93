"""Sharing a checkpoint end to end: convert (as a command), load and predict, evaluate,
export to safetensors and to a jax.export function that runs with jax alone.

The checkpoint is pytorchcv's 0.25 MobileNet with random weights and BN statistics, saved
as a .pth and converted by `python -m mobileshuffle_jax.convert` in a subprocess; its
logits under PyTorch are the reference. 224 px (the converted preprocessing's size), a
batch of two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.traverse_util
import jax
import numpy as np
import pytest

import mobileshuffle_jax
from configs import default
from mobileshuffle_jax import checkpointing, evaluation, export
from mobileshuffle_jax import convert as mobileshuffle_convert
from mobileshuffle_jax import staging as mobileshuffle_staging
from mobileshuffle_jax.export import __main__ as export_cli

torch = pytest.importorskip("torch")
pytorchcv_mobilenet = pytest.importorskip("pytorchcv.models.mobilenet")
safetensors = pytest.importorskip("safetensors")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESOLUTION = 224  # what the pytorchcv converter records
TOLERANCE = 1e-4  # max |ours - theirs| / max |theirs| over the logits, float32
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Subprocesses: CPU only, TensorFlow quiet.
SUBPROCESS_ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")


def random_images(seed: int, count: int = 2) -> np.ndarray:
  """Random RGB images, 0..255, NHWC."""
  return np.random.default_rng(seed).uniform(
      0, 255, (count, RESOLUTION, RESOLUTION, 3)).astype(np.float32)


def torch_logits(net, images: np.ndarray) -> np.ndarray:
  """pytorchcv's own preprocessing (ImageNet mean/std on 0..1), NCHW."""
  x = ((images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2)
  with torch.no_grad():
    return net(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def pytorchcv_mobilenet_wd4():
  """pytorchcv's MobileNet 0.25 with random weights; each BN gets the statistics of its
  input on calibration images (one cumulative training-mode pass), then random parameters
  and perturbed statistics. Random statistics alone would let the signal fade layer by
  layer and leave the logits blind to the image."""
  torch.manual_seed(0)
  net = pytorchcv_mobilenet.mobilenet_wd4()
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


def tree_listing(directory) -> list[tuple[str, int, int]]:
  """(relative path, size, mtime in ns) of every file under `directory`."""
  return sorted((os.path.relpath(os.path.join(root, name), directory),
                 os.stat(os.path.join(root, name)).st_size,
                 os.stat(os.path.join(root, name)).st_mtime_ns)
                for root, _, names in os.walk(directory) for name in names)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(pytorchcv net, its .pth, the directory `python -m mobileshuffle_jax.convert` wrote)."""
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


@pytest.fixture(scope="module")
def predictor(converted):
  return mobileshuffle_jax.load(converted[2])


@pytest.fixture(scope="module")
def images():
  return random_images(seed=0)


def test_converted_directory_predicts_like_pytorchcv(converted, predictor, images):
  net, _, _ = converted
  assert predictor.config.model == "mobilenet_v1"
  assert predictor.model.alpha == 0.25 and predictor.num_classes == 1000
  assert predictor.preprocessing == dict(normalization="imagenet", channel_order="rgb",
                                         image_size=RESOLUTION, eval_crop_ratio=0.875)
  assert set(predictor.variables) == {"params", "batch_stats"} and predictor.step == 0
  ours = np.asarray(predictor.predict(images))
  theirs = torch_logits(net, images)
  scale = np.abs(theirs).max()
  # Non-trivial logits: the two images must be told apart, else the check proves little.
  assert np.abs(theirs[0] - theirs[1]).max() > 1e-2 * scale
  difference = np.abs(ours - theirs).max() / scale
  print(f"load(DIR).predict vs pytorchcv: max relative logit difference {difference:.2e}")
  assert difference <= TOLERANCE
  # Integer images are taken as they are (0..255), not rescaled.
  rounded = np.rint(images)
  np.testing.assert_array_equal(np.asarray(predictor.predict(rounded.astype(np.uint8))),
                                np.asarray(predictor.predict(rounded)))
  with pytest.raises(ValueError, match=r"shape \(batch, 224, 224, 3\); got shape \(2, 64, 64, 3\)"):
    predictor.predict(images[:, :64, :64])
  with pytest.raises(ValueError, match=r"got shape \(224, 224, 3\)"):
    predictor.predict(images[0])


def test_converted_directory_evaluates_on_digits(converted, predictor, tmp_path):
  """eval.py's library path on a converted directory: its config with the digits data set
  at the model's resolution and normalization."""
  config = checkpointing.read_config_json(converted[2])
  data = default.data_config()
  data.image_size = config.data.image_size
  data.normalization = config.data.normalization
  data.data_dir = str(tmp_path / "tfds")
  config.data = data
  result = evaluation.evaluate_checkpoint(converted[2], config)
  assert result["num_examples"] == 360 and result["step"] == 0
  assert result["params_sha256_verified"]
  assert result["params_sha256"] == predictor.params_sha256


def test_convert_never_leaves_a_partial_directory(converted, tmp_path):
  _, path, out = converted
  before = tree_listing(out)
  # Both at once: each spends its seconds importing.
  again = start_convert("pytorchcv", path, "--out", out)
  failed = start_convert("pytorchcv", path, "--out", str(tmp_path / "wrong_groups"),
                         "--groups", "3")
  again_stderr, failed_stderr = again.communicate(timeout=300)[1], failed.communicate(
      timeout=300)[1]
  assert again.returncode != 0 and "exists and is not empty" in again_stderr
  assert tree_listing(out) == before
  assert failed.returncode != 0
  assert "holds a MobileNet: give alpha, not groups/scale" in failed_stderr
  assert os.listdir(tmp_path) == []  # neither the directory nor a `.partial-*` sibling


def variables_equal(a, b) -> None:
  flat_a = flax.traverse_util.flatten_dict(jax.device_get(a), sep="/")
  flat_b = flax.traverse_util.flatten_dict(jax.device_get(b), sep="/")
  assert flat_a.keys() == flat_b.keys()
  for path, value in flat_a.items():
    assert value.dtype == flat_b[path].dtype
    np.testing.assert_array_equal(value, flat_b[path], err_msg=path)


def test_safetensors_export_round_trip(converted, predictor, images, tmp_path, capsys):
  out = tmp_path / "mobilenet.safetensors"
  export_cli.main(["--workdir", converted[2], "--out", str(out)])
  assert predictor.params_sha256 in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path)) == ["mobilenet.safetensors"]
  loaded = mobileshuffle_jax.load(str(out))
  assert loaded.params_sha256 == predictor.params_sha256
  variables_equal(loaded.variables, predictor.variables)
  assert loaded.preprocessing == predictor.preprocessing and loaded.step == 0
  assert loaded.config.to_dict() == predictor.config.to_dict()
  np.testing.assert_array_equal(np.asarray(loaded.predict(images)),
                                np.asarray(predictor.predict(images)))
  # Any safetensors reader gets the tensors by path and the metadata as strings.
  with safetensors.safe_open(str(out), framework="numpy") as reader:
    metadata = reader.metadata()
    kernel = reader.get_tensor("params/stem/conv/kernel")
  np.testing.assert_array_equal(kernel, predictor.variables["params"]["stem"]["conv"]["kernel"])
  assert metadata["model"] == "mobilenet_v1" and metadata["format_version"] == "1"
  assert json.loads(metadata["model_options"])["num_classes"] == 1000
  assert json.loads(metadata["preprocessing"]) == predictor.preprocessing
  assert metadata["params_sha256"] == predictor.params_sha256


# Runs an exported function with jax and numpy alone: `python -I` (isolated mode) puts
# neither the working directory nor PYTHONPATH on sys.path, so this package is not there.
JAX_ONLY_SCRIPT = """
import importlib.util, sys
import jax, numpy as np
assert importlib.util.find_spec("mobileshuffle_jax") is None, "mobileshuffle_jax importable"
with open(sys.argv[1], "rb") as f:
  exported = jax.export.deserialize(bytearray(f.read()))
np.save(sys.argv[3], np.asarray(exported.call(np.load(sys.argv[2]))))
assert not [m for m in sys.modules if m.split(".")[0] in ("mobileshuffle_jax", "flax")]
"""


def test_jax_export_runs_with_jax_alone(converted, predictor, tmp_path):
  out = str(tmp_path / "mobilenet.jax")
  export_cli.main(["--workdir", converted[2], "--out", out, "--format", "jax"])
  with open(out + ".json") as f:
    sidecar = json.load(f)
  assert sidecar["input"]["shape"] == [None, RESOLUTION, RESOLUTION, 3]
  assert sidecar["preprocessing"] == predictor.preprocessing
  assert sidecar["params_sha256"] == predictor.params_sha256
  assert set(sidecar["platforms"]) == set(export.JAX_PLATFORMS)
  # Three images: the exported batch dimension is symbolic, not the two of the others.
  images = random_images(seed=2, count=3)
  np.save(tmp_path / "images.npy", images)
  run = subprocess.run(
      [sys.executable, "-I", "-c", JAX_ONLY_SCRIPT, out, "images.npy", "logits.npy"],
      cwd=tmp_path, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  theirs = np.asarray(predictor.predict(images))
  difference = np.abs(np.load(tmp_path / "logits.npy") - theirs).max() / np.abs(theirs).max()
  print(f"jax.export function vs load(DIR).predict: max relative logit difference "
        f"{difference:.2e}")
  assert difference <= 1e-5

  fixed = str(tmp_path / "fixed.jax")
  export.export_checkpoint(converted[2], fixed, file_format="jax", batch=2)
  with open(fixed, "rb") as f:
    assert jax.export.deserialize(bytearray(f.read())).in_avals[0].shape == (
        2, RESOLUTION, RESOLUTION, 3)
  with pytest.raises(ValueError, match="not a safetensors file.*jax.export.deserialize"):
    mobileshuffle_jax.load(fixed)


@pytest.mark.parametrize("case", ["no_config", "no_checkpoint", "unknown_step", "out_exists",
                                  "batch_for_safetensors", "missing_out_directory"])
def test_export_refusals_write_nothing(converted, tmp_path, case):
  workdir, out, extra = converted[2], tmp_path / "out" / "model.safetensors", []
  out.parent.mkdir()
  if case == "no_config":
    workdir, message = str(tmp_path / "empty"), "has no config.json"
    os.mkdir(workdir)
  elif case == "no_checkpoint":
    workdir, message = str(tmp_path / "config_only"), "holds no checkpoint"
    os.mkdir(workdir)
    with open(os.path.join(converted[2], "config.json")) as src, \
        open(os.path.join(workdir, "config.json"), "w") as dst:
      dst.write(src.read())
  elif case == "unknown_step":
    extra, message = ["--step", "7"], r"step 7 is not saved in .*; saved steps: \[0\]"
  elif case == "out_exists":
    out.write_text("mine")
    message = "exists; choose a new --out"
  elif case == "batch_for_safetensors":
    extra, message = ["--batch", "4"], "of a --format jax or tflite export only"
  else:
    out, message = tmp_path / "nowhere" / "model.safetensors", "does not exist"
  before = tree_listing(tmp_path)
  with pytest.raises(SystemExit, match=message):
    export_cli.main(["--workdir", workdir, "--out", str(out), *extra])
  assert tree_listing(tmp_path) == before


def test_tampered_file_and_failed_write(predictor, tmp_path):
  out = str(tmp_path / "model.safetensors")
  export.write_safetensors(predictor, out)
  with safetensors.safe_open(out, framework="numpy") as reader:
    metadata = reader.metadata()
    tensors = {name: reader.get_tensor(name) for name in reader.keys()}
  tensors["params/classifier/bias"] = tensors["params/classifier/bias"] + 1.0
  tampered = str(tmp_path / "tampered.safetensors")
  safetensors_numpy.save_file(tensors, tampered, metadata=metadata)
  with pytest.raises(checkpointing.CorruptCheckpointError, match="tampered.safetensors is corrupted: .*params_sha256"):
    mobileshuffle_jax.load(tampered)
  # A writer that fails half way leaves neither the file nor its temporary.
  failing = tmp_path / "failing.bin"
  with pytest.raises(RuntimeError, match="disk full"):
    with mobileshuffle_staging.staged_file(str(failing)) as staging:
      with open(staging, "wb") as f:
        f.write(b"half")
      raise RuntimeError("disk full")
  assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "tampered.safetensors"]


def test_predict_refuses_non_finite_and_complex_images(predictor, images):
  nan_pixel = images.copy()
  nan_pixel[1, 7, 9, 2] = np.nan
  for bad, count in ((nan_pixel, "1 of 2 images"), (np.full_like(images, np.inf), "2 of 2"),
                     (np.full_like(images, np.nan), "2 of 2")):
    with pytest.raises(ValueError, match=f"{count} .*NaN or infinite"):
      predictor.predict(bad)
  with pytest.raises(ValueError, match="real-valued images .* complex64"):
    predictor.predict(images.astype(np.complex64))
  with pytest.raises(ValueError, match="real-valued images"):
    predictor.predict(images.astype(str))
  # Asked for, the raw behaviour: the images go through the network as they are (where
  # XLA's max and clamp absorb a NaN, which is why it is refused by default).
  raw = np.asarray(predictor.predict(nan_pixel, allow_non_finite=True))
  np.testing.assert_array_equal(raw[0], np.asarray(predictor.predict(images))[0])


def test_load_refuses_bad_paths_with_value_errors(converted, tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    mobileshuffle_jax.load(str(tmp_path / "missing"))
  broken = tmp_path / "broken"
  broken.mkdir()
  with pytest.raises(ValueError, match="has no config.json"):
    mobileshuffle_jax.load(str(broken))
  (broken / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="config.json is not valid JSON"):
    mobileshuffle_jax.load(str(broken))


def test_stale_partial_outputs_are_removed_at_the_next_start(converted, predictor, tmp_path):
  # What a killed export (a file) and a killed convert (a directory) leave behind, by a
  # process that is gone, beside one of a writer that still runs (this test).
  out = tmp_path / "model.safetensors"
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  (tmp_path / f"model.safetensors.partial-{gone}-0123abcd").write_bytes(b"half")
  (tmp_path / f"model.safetensors.partial-{os.getpid()}-0123abcd").write_bytes(b"live")
  export.write_safetensors(predictor, str(out))
  assert sorted(os.listdir(tmp_path)) == [
      "model.safetensors", f"model.safetensors.partial-{os.getpid()}-0123abcd"]

  _, path, _ = converted
  target = tmp_path / "converted"
  (tmp_path / f"converted.partial-{gone}-0123abcd" / "checkpoints").mkdir(parents=True)
  (tmp_path / "converted.partial-x1y2z3").mkdir()  # named by an older version
  checkpointing.write_converted(str(target), mobileshuffle_convert.convert("pytorchcv", path))
  assert os.path.isdir(target / "checkpoints")
  assert not [name for name in os.listdir(tmp_path) if name.startswith("converted.partial")]


def test_class_names_travel_with_checkpoints_and_exports(trained_workdir, tmp_path):
  digits = tuple(str(digit) for digit in range(10))
  store = checkpointing.CheckpointStore(trained_workdir, read_only=True)
  assert store.restore_meta(6)["class_names"] == list(digits)
  store.close()
  loaded = mobileshuffle_jax.load(trained_workdir)
  assert loaded.class_names == digits
  out = str(tmp_path / "digits.safetensors")
  export.export_checkpoint(trained_workdir, out)
  assert mobileshuffle_jax.load(out).class_names == digits
  export.export_checkpoint(trained_workdir, str(tmp_path / "digits.jax"), file_format="jax")
  with open(tmp_path / "digits.jax.json") as f:
    assert json.load(f)["class_names"] == list(digits)
  images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
  top = loaded.classify(images, top_k=2)
  logits = np.asarray(loaded.predict(images))
  for row, classes in zip(logits, top):
    assert [name for name, _ in classes] == [digits[i] for i in np.argsort(-row)[:2]]
    assert classes[0][1] >= classes[1][1] > 0
