"""Inference from a shared checkpoint in one call.

    import mobileshuffle_jax
    predictor = mobileshuffle_jax.load("workdirs/default")  # or an exported .safetensors
    logits = predictor.predict(images)  # RGB 0..255, NHWC, predictor.image_size square

`load` reads a directory written by train.py or `python -m mobileshuffle_jax.convert`
(its latest checkpoint, or `step`) or a file written by `python -m mobileshuffle_jax.export
--format safetensors`, and checks the parameters against the fingerprint recorded with
them. `predict` normalises the images as the checkpoint's preprocessing says and applies
the model in inference mode. Resizing and cropping are the caller's:
`preprocessing['eval_crop_ratio']` is the centre crop (of the shorter side) the model was
evaluated on before that crop was resized to `image_size`. `predict` refuses images that
are complex, not numbers, or not finite (a NaN pixel would otherwise pass through the
network without a word); `classify` names the top classes when the checkpoint recorded
its class names.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mobileshuffle_jax import (allocator, checkpointing, model_config, preprocessing,
                               safetensors_io)


def preprocess_and_apply(model, variables, images, normalization: str):
  """float32 logits of RGB 0..255 `images`: the recorded normalization, then `model` in
  inference mode. The one definition both `Predictor.predict` and the jax exporter use."""
  normalized = preprocessing.normalize(images.astype(jnp.float32), normalization)
  return model.apply(variables, normalized, train=False).astype(jnp.float32)


class Predictor:
  """A model with its evaluation variables and the preprocessing it was trained with.

  Attributes (for inspection and fine-tuning): `model` (a flax Linen module), `variables`
  ({'params', 'batch_stats'} on the default device), `preprocessing` ({'image_size',
  'normalization', 'eval_crop_ratio', 'channel_order'}), `config` (the run's resolved
  config), `params_sha256` (fingerprint of `variables`, verified at load) and `step`.
  """

  def __init__(self, *, model, variables: dict[str, Any], preprocessing: dict[str, Any],
               config: ml_collections.ConfigDict, params_sha256: str, step: int,
               class_names: tuple[str, ...] = ()):
    self.model = model
    self.class_names = tuple(class_names)
    self.variables = variables
    self.preprocessing = dict(preprocessing)
    self.config = config
    self.params_sha256 = params_sha256
    self.step = step
    # The variables are an argument, not constants baked into the computation: compiling
    # stays fast however large the model is. jit compiles once per batch size.
    self._logits = jax.jit(lambda variables, images: preprocess_and_apply(
        self.model, variables, images, self.preprocessing["normalization"]))

  @property
  def image_size(self) -> int:
    return int(self.preprocessing["image_size"])

  @property
  def num_classes(self) -> int:
    return int(self.model.num_classes)

  def predict(self, images, *, allow_non_finite: bool = False) -> jax.Array:
    """Logits [batch, num_classes] (float32) of `images`: RGB values 0..255 (any real or
    integer dtype), shape [batch, image_size, image_size, 3].

    ValueError for complex or non-numeric images, and for NaN or infinite pixels unless
    `allow_non_finite` (then they go through the network as they are).
    """
    shape = tuple(np.shape(images))
    size = self.image_size
    if len(shape) != 4 or shape[1:] != (size, size, 3):
      raise ValueError(
          f"predict takes RGB images with values 0..255 of shape (batch, {size}, {size}, 3); "
          f"got shape {shape}. Resize the centre {self.preprocessing['eval_crop_ratio']:g} of "
          f"each image's shorter side to {size}x{size} first")
    dtype = np.dtype(getattr(images, "dtype", None) or np.asarray(images).dtype)
    if dtype.kind not in "biuf":
      raise ValueError(f"predict takes real-valued images (RGB 0..255); got dtype {dtype}"
                       + (": take the real part or the magnitude first" if dtype.kind == "c"
                          else ""))
    images = jnp.asarray(images, jnp.float32)
    if not allow_non_finite:
      bad = np.asarray(_non_finite_per_image(images))
      if bad.any():
        first = int(np.argmax(bad > 0))
        raise ValueError(
            f"{int((bad > 0).sum())} of {len(bad)} images hold NaN or infinite values "
            f"({int(bad[first])} in image {first}): predict takes RGB values 0..255 "
            "(allow_non_finite=True passes them through)")
    return self._logits(self.variables, images)

  def classify(self, images, top_k: int = 1) -> list[list[tuple[str, float]]]:
    """For each image, its `top_k` classes as (class name, probability), most probable
    first. Names are the checkpoint's `class_names`, or the label indices as text when it
    recorded none."""
    probabilities = np.asarray(jax.nn.softmax(self.predict(images), axis=-1))
    names = self.class_names or tuple(str(i) for i in range(self.num_classes))
    top = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k]
    return [[(names[i], float(row[i])) for i in indices]
            for row, indices in zip(probabilities, top)]


@jax.jit
def _non_finite_per_image(images):
  return jnp.sum(~jnp.isfinite(images), axis=(1, 2, 3))


def load(path: str, *, step: int | None = None) -> Predictor:
  """The predictor of a workdir or converted directory (its latest checkpoint, or `step`)
  or of a file written by `python -m mobileshuffle_jax.export --format safetensors`.

  Raises ValueError for a path that does not exist, a directory without that checkpoint
  or without a readable config, a file of another kind, or parameters that do not match
  their recorded `params_sha256`.
  """
  if os.path.isdir(path):
    config = checkpointing.read_config_json(path)
    restored = checkpointing.restore_for_inference(path, step)
    return _predictor(config, restored.meta, restored.variables, restored.path)
  if not os.path.isfile(path):
    raise ValueError(f"{path} does not exist: expected a directory written by train.py or "
                     "convert, or a file written by export --format safetensors")
  if step is not None:
    raise ValueError(f"{path} is an exported file of one checkpoint: it has no step to choose")
  variables, meta, config_json = safetensors_io.read(path)
  checkpointing.verify_fingerprint("params_sha256", variables, meta, step=meta["step"],
                                   where=path)
  return _predictor(ml_collections.ConfigDict(config_json), meta, variables, path)


def _predictor(config: ml_collections.ConfigDict, meta: dict[str, Any],
               variables: dict[str, Any], where: str) -> Predictor:
  """A Predictor of `variables` (verified against their fingerprint by the caller), checked
  against the model `config` builds (meta: a checkpoint's metadata: model, model_options,
  preprocessing, params_sha256, step[, class_names])."""
  model = model_config.build_model(config, meta["model_options"]["num_classes"])
  preprocessing = meta["preprocessing"]
  if preprocessing.get("channel_order", "rgb") != "rgb":
    raise ValueError(f"{where}: channel_order={preprocessing['channel_order']!r}; this "
                     "package's checkpoints read RGB images")
  size = preprocessing["image_size"]
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, size, size, model.input_channels)), train=False))
  checkpointing.check_same_model(
      {"model": meta["model"], "model_options": meta["model_options"],
       "param_shapes": checkpointing.param_shapes(variables["params"])},
      config.model, checkpointing.param_shapes(abstract["params"]), where)
  allocator.announce()
  return Predictor(model=model, variables=jax.device_put(variables),
                   preprocessing=preprocessing, config=config,
                   params_sha256=meta["params_sha256"], step=int(meta["step"]),
                   class_names=tuple(meta.get("class_names") or ()))
