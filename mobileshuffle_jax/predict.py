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
evaluated on before that crop was resized to `image_size`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mobileshuffle_jax import checkpointing, model_config, preprocessing


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
               config: ml_collections.ConfigDict, params_sha256: str, step: int):
    self.model = model
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

  def predict(self, images) -> jax.Array:
    """Logits [batch, num_classes] (float32) of `images`: RGB values 0..255 (any real or
    integer dtype), shape [batch, image_size, image_size, 3]."""
    shape = tuple(np.shape(images))
    size = self.image_size
    if len(shape) != 4 or shape[1:] != (size, size, 3):
      raise ValueError(
          f"predict takes RGB images with values 0..255 of shape (batch, {size}, {size}, 3); "
          f"got shape {shape}. Resize the centre {self.preprocessing['eval_crop_ratio']:g} of "
          f"each image's shorter side to {size}x{size} first")
    return self._logits(self.variables, jnp.asarray(images, jnp.float32))


def load(path: str, *, step: int | None = None) -> Predictor:
  """The predictor of a workdir or converted directory (its latest checkpoint, or `step`)
  or of a file written by `python -m mobileshuffle_jax.export --format safetensors`.

  Raises ValueError for a directory without that checkpoint, a file of another kind, or
  parameters that do not match their recorded `params_sha256`.
  """
  if os.path.isdir(path):
    return _load_directory(path, step)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is neither a checkpoint directory nor an exported file")
  if step is not None:
    raise ValueError(f"{path} is an exported file of one checkpoint: it has no step to choose")
  from mobileshuffle_jax import export  # pylint: disable=g-import-not-at-top
  variables, meta, config_json = export.read_safetensors(path)
  return _predictor(ml_collections.ConfigDict(config_json), meta, variables, path)


def _load_directory(workdir: str, step: int | None) -> Predictor:
  """The evaluation variables of `step` (default: the latest) of `workdir`."""
  from mobileshuffle_jax import evaluation  # pylint: disable=g-import-not-at-top
  config = evaluation.load_workdir_config(workdir)
  store = checkpointing.CheckpointStore(workdir, read_only=True)
  try:
    step = store.saved_step(step)
    meta = store.restore_meta(step)
    variables = checkpointing.evaluation_variables(store.restore_as_saved(step))
  finally:
    store.close()
  return _predictor(config, meta, variables, workdir)


def _predictor(config: ml_collections.ConfigDict, meta: dict[str, Any],
               variables: dict[str, Any], where: str) -> Predictor:
  """A Predictor of `variables`, checked against the model `config` builds and against the
  fingerprint in `meta` (a checkpoint's metadata: model, model_options, preprocessing,
  params_sha256, step)."""
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
  fingerprint = checkpointing.params_sha256(variables)
  if fingerprint != meta["params_sha256"]:
    raise ValueError(f"{where}: the parameters' params_sha256 {fingerprint} differs from the "
                     f"recorded {meta['params_sha256']}: they were modified after they were "
                     "written")
  return Predictor(model=model, variables=jax.device_put(variables),
                   preprocessing=preprocessing, config=config, params_sha256=fingerprint,
                   step=int(meta["step"]))
