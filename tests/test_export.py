"""Sharing a checkpoint: export to safetensors and to a jax.export function that runs
with jax alone, the refusals of the export command, and writers (export, convert) that never
leave a partial output behind.

The checkpoint is conftest's `converted` (pytorchcv's 0.25 MobileNet with random weights
and BN statistics, converted by `python -m mobileshuffle_jax.convert`). 224 px (the
converted preprocessing's size), a batch of two.
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
from mobileshuffle_jax import checkpointing, export
from mobileshuffle_jax import convert as mobileshuffle_convert
from mobileshuffle_jax import staging as mobileshuffle_staging
from mobileshuffle_jax.export import __main__ as export_cli
from tests.conftest import CONVERTED_RESOLUTION as RESOLUTION
from tests.conftest import SUBPROCESS_ENV, random_images, start_convert

pytest.importorskip("torch")
pytest.importorskip("pytorchcv.models.mobilenet")
safetensors = pytest.importorskip("safetensors")
safetensors_numpy = pytest.importorskip("safetensors.numpy")


def tree_listing(directory) -> list[tuple[str, int, int]]:
  """(relative path, size, mtime in ns) of every file under `directory`."""
  return sorted((os.path.relpath(os.path.join(root, name), directory),
                 os.stat(os.path.join(root, name)).st_size,
                 os.stat(os.path.join(root, name)).st_mtime_ns)
                for root, _, names in os.walk(directory) for name in names)


@pytest.fixture(scope="module")
def images():
  return random_images(seed=0)


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
    extra, message = ["--batch", "4"], "of a --format jax, tflite or onnx export only"
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
