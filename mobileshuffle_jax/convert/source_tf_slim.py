"""TF-slim MobileNet v1 checkpoints -> MobileNetV1 (relu6, SAME padding, BN eps 1e-3).

Tensors under `MobilenetV1/`: `Conv2d_0/weights`, `Conv2d_{i}_depthwise/depthwise_weights`,
`Conv2d_{i}_pointwise/weights`, each with `BatchNorm/{gamma,beta,moving_mean,moving_variance}`
(no gamma anywhere when slim's batch norm ran with scale=False: gamma is then ones), and
`Logits/Conv2d_1c_1x1/{weights,biases}`: the releases' head has 1001 classes, index 0
being background, which the import drops; a fine-tuned head keeps all its classes.
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
# The releases' head: the 1000 ImageNet classes after logit 0, background.
PUBLISHED_CLASSES = 1001


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


def checkpoint_prefix(path: str) -> str:
  """The checkpoint `path` names: itself (a prefix), or for a directory the prefix its
  `checkpoint` file names, whose file name carries the resolution."""
  import tensorflow as tf  # only this source needs TensorFlow

  if not tf.io.gfile.isdir(path):
    return path
  prefix = tf.train.latest_checkpoint(path)
  if prefix is None:
    raise common.ConversionError(f"directory {path} has no `checkpoint` file naming a "
                                 f"TensorFlow checkpoint that exists")
  return prefix


def read_checkpoint(prefix: str, use_ema: bool) -> dict[str, np.ndarray]:
  """The MobileNet tensors of a TF checkpoint, each its EMA copy where there is one."""
  import tensorflow as tf

  try:
    reader = tf.train.load_checkpoint(prefix)
  except tf.errors.NotFoundError as error:
    raise common.ConversionError(f"no TensorFlow checkpoint {prefix}: no such file, directory "
                                 f"or checkpoint prefix ({prefix}.index)") from error
  except tf.errors.OpError as error:
    raise common.ConversionError(f"{prefix} is not a TensorFlow checkpoint ({error})") from error
  names = set(reader.get_variable_to_shape_map())
  model_names = [name for name in names
                 if name.startswith(SCOPE) and not name.endswith(EMA_SUFFIX)
                 and name.rsplit("/", 1)[-1] not in OPTIMIZER_SLOTS]
  if not model_names:
    raise common.ConversionError(
        f"checkpoint {prefix} has no {SCOPE} tensors: not a TF-slim MobileNet v1 checkpoint "
        f"(it holds {common.listed(names) or 'nothing'})")
  return {name: reader.get_tensor(name + EMA_SUFFIX if use_ema and name + EMA_SUFFIX in names
                                  else name)
          for name in model_names}


def background_dropped(drop_background: bool | None, classes: int, evidence: str) -> bool:
  """Whether logit 0 goes: by default only from the releases' 1001-class head, where it is
  background; a head of other classes (fine-tuned) keeps every class."""
  if drop_background is None:
    return classes == PUBLISHED_CLASSES
  if drop_background and classes != PUBLISHED_CLASSES:
    raise common.ConversionError(
        f"drop_background=True drops logit 0 (background) of the releases' "
        f"{PUBLISHED_CLASSES}-class head, but {evidence}: a head of {classes} classes, whose "
        f"logit 0 is a real class")
  return drop_background


def convert_tf_slim(path: str, *, alpha: float | None = None, num_classes: int | None = None,
                    drop_background: bool | None = None, use_ema: bool = True,
                    image_size: int | None = None) -> common.Converted:
  """A TF-slim checkpoint (prefix, or directory with a `checkpoint` file): alpha and classes
  from the shapes, checked against the given ones. `drop_background` removes logit 0;
  by default (None) only from a 1001-class head, so a release becomes the 1000 ImageNet
  classes and a fine-tuned head keeps all its classes."""
  prefix = checkpoint_prefix(path)
  arrays = read_checkpoint(prefix, use_ema)
  if not any(name.endswith("/BatchNorm/gamma") for name in arrays):
    # slim's batch_norm(scale=False) has no gamma: the scale is one.
    arrays.update({name.removesuffix("beta") + "gamma": np.ones_like(beta)
                   for name, beta in arrays.items() if name.endswith("/BatchNorm/beta")})
  tensors = common.SourceTensors(arrays, f"checkpoint {prefix}")
  stem_shape = tensors.shape(STEM)
  alpha = common.mobilenet_alpha(alpha, stem_shape[-1],
                                 f"tensor {STEM!r} has shape {stem_shape}", min_depth=8)
  biases = tensors.shape(LOGITS + "biases")
  evidence = f"tensor {LOGITS + 'biases'!r} has shape {biases}"
  drop_background = background_dropped(drop_background, biases[-1], evidence)
  num_classes = common.check_option(
      "num_classes", num_classes, biases[-1] - int(drop_background),
      f"{evidence}, drop_background={drop_background}")
  notes = ()
  if drop_background:
    notes = (f"dropped logit 0 (background) of the {PUBLISHED_CLASSES}-class head: "
             f"{num_classes} ImageNet classes; --keep-background (drop_background=False) "
             f"keeps it",)

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
                                         common.image_size_from_name(prefix, image_size)),
      notes=notes)
