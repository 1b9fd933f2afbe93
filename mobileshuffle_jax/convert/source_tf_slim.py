"""TF-slim MobileNet v1 checkpoints -> MobileNetV1 (relu6, SAME padding, BN eps 1e-3).

Tensors under `MobilenetV1/`: `Conv2d_0/weights`, `Conv2d_{i}_depthwise/depthwise_weights`,
`Conv2d_{i}_pointwise/weights`, each with `BatchNorm/{gamma,beta,moving_mean,moving_variance}`
(no gamma anywhere when slim's batch norm ran with scale=False: gamma is then ones), and
`Logits/Conv2d_1c_1x1/{weights,biases}` over 1001 classes, index 0 being background.
A tensor's `/ExponentialMovingAverage` copy, the weights the releases are evaluated with,
is taken instead of it when present; optimizer slots and tensors outside the scope
(global_step) are skipped. Input: RGB scaled to [-1, 1].
"""

from __future__ import annotations

import numpy as np

from mobileshuffle_jax.convert import common

SCOPE = "MobilenetV1/"
EMA_SUFFIX = "/ExponentialMovingAverage"
# Last name components of optimizer slot variables (`<var>/RMSProp`, `<var>/Momentum`, ...).
OPTIMIZER_SLOTS = ("RMSProp", "RMSProp_1", "Momentum", "Adam", "Adam_1")
STEM = SCOPE + "Conv2d_0/weights"
LOGITS = SCOPE + "Logits/Conv2d_1c_1x1/"


def scope_name(module: str) -> str:
  """The slim scope of our ConvBN module: block3/depthwise -> MobilenetV1/Conv2d_3_depthwise."""
  if module == "stem":
    return SCOPE + "Conv2d_0"
  block, kind = module.split("/")
  return f"{SCOPE}Conv2d_{block.removeprefix('block')}_{kind}"


def source_names(module: str) -> tuple[str, tuple[str, str, str, str]]:
  scope = scope_name(module)
  kernel = "depthwise_weights" if module.endswith("depthwise") else "weights"
  bn = f"{scope}/BatchNorm"
  return f"{scope}/{kernel}", (f"{bn}/gamma", f"{bn}/beta", f"{bn}/moving_mean",
                               f"{bn}/moving_variance")


def read_checkpoint(path: str, use_ema: bool) -> dict[str, np.ndarray]:
  """The MobileNet tensors of a TF checkpoint, each its EMA copy where there is one."""
  import tensorflow as tf  # only this source needs TensorFlow

  try:
    reader = tf.train.load_checkpoint(path)
  except (tf.errors.OpError, ValueError) as error:
    raise common.ConversionError(f"{path} is not a TensorFlow checkpoint ({error})") from error
  names = set(reader.get_variable_to_shape_map())
  model_names = [name for name in names
                 if name.startswith(SCOPE) and not name.endswith(EMA_SUFFIX)
                 and name.rsplit("/", 1)[-1] not in OPTIMIZER_SLOTS]
  if not model_names:
    raise common.ConversionError(
        f"checkpoint {path} has no {SCOPE} tensors: not a TF-slim MobileNet v1 checkpoint "
        f"(it holds {common.listed(names) or 'nothing'})")
  return {name: reader.get_tensor(name + EMA_SUFFIX if use_ema and name + EMA_SUFFIX in names
                                  else name)
          for name in model_names}


def convert_tf_slim(path: str, *, alpha: float | None = None, num_classes: int | None = None,
                    drop_background: bool = True, use_ema: bool = True,
                    image_size: int | None = None) -> common.Converted:
  """A TF-slim checkpoint (prefix, or directory with a `checkpoint` file): alpha and classes
  from the shapes, checked against the given ones. `drop_background` removes logit 0, so
  a 1001-class release becomes the 1000 ImageNet classes."""
  arrays = read_checkpoint(path, use_ema)
  if not any(name.endswith("/BatchNorm/gamma") for name in arrays):
    # slim's batch_norm(scale=False) has no gamma: the scale is one.
    arrays.update({name.removesuffix("beta") + "gamma": np.ones_like(beta)
                   for name, beta in arrays.items() if name.endswith("/BatchNorm/beta")})
  tensors = common.SourceTensors(arrays, f"checkpoint {path}")
  stem_shape = tensors.shape(STEM)
  alpha = common.mobilenet_alpha(alpha, stem_shape[-1],
                                 f"tensor {STEM!r} has shape {stem_shape}", min_depth=8)
  biases = tensors.shape(LOGITS + "biases")
  num_classes = common.check_option(
      "num_classes", num_classes, biases[-1] - int(drop_background),
      f"tensor {LOGITS + 'biases'!r} has shape {biases}, drop_background={drop_background}")

  def head(x: np.ndarray) -> np.ndarray:
    return x[..., 1:] if drop_background else x

  model_options = dict(alpha=alpha, num_classes=num_classes, activation="relu6",
                       padding="same", bn_epsilon=1e-3, bn_momentum=0.9997,
                       dropout_rate=1e-3, min_depth=8)
  table = common.conv_bn_table(common.mobilenet_modules(), source_names, common.tf_kernel)
  table += [common.Entry("params/classifier/kernel", LOGITS + "weights",
                         common.then(common.conv1x1_as_dense, head)),
            common.Entry("params/classifier/bias", LOGITS + "biases", head)]
  return common.assemble(
      "tf-slim", tensors, table, model_name="mobilenet_v1", model_options=model_options,
      preprocessing=common.preprocessing("minus_one_one", "rgb",
                                         common.image_size_from_name(path, image_size)))
