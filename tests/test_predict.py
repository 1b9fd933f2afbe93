"""A converted checkpoint loaded and used: `mobileshuffle_jax.load(DIR).predict` against
PyTorch's logits, evaluation of the directory, and the refusals of `predict` and `load`.

The checkpoint is conftest's `converted` (pytorchcv's 0.25 MobileNet with random weights
and BN statistics, converted by `python -m mobileshuffle_jax.convert`). 224 px (the
converted preprocessing's size), a batch of two.
"""

from __future__ import annotations

import numpy as np
import pytest

import mobileshuffle_jax
from configs import default
from mobileshuffle_jax import checkpointing, evaluation, input_pipeline
from tests.conftest import CONVERTED_RESOLUTION as RESOLUTION
from tests.conftest import random_images, torch_logits

pytest.importorskip("torch")
pytest.importorskip("pytorchcv.models.mobilenet")
pytest.importorskip("safetensors")

TOLERANCE = 1e-4  # max |ours - theirs| / max |theirs| over the logits, float32


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
  # The uint8 batches, normalized inside the jitted evaluation step, score exactly what
  # `predict` makes of the same pixels.
  logits, labels = [], []
  for batch in input_pipeline.eval_batches(data, global_batch_size=120):
    real = batch["mask"] > 0
    logits.append(np.asarray(predictor.predict(batch["images"][real]), np.float64))
    labels.append(batch["labels"][real])
  logits, labels = np.concatenate(logits), np.concatenate(labels)
  assert result["top1"] == np.mean(np.argmax(logits, -1) == labels)
  log_probabilities = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)),
                                             -1, keepdims=True)) - logits.max(-1, keepdims=True)
  np.testing.assert_allclose(result["loss"], -np.mean(log_probabilities[np.arange(360), labels]),
                             rtol=1e-4)


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
