"""Keras applications MobileNet weights -> MobileNetV1 (relu6, SAME padding, BN eps 1e-3).

Reads, with h5py only (no Keras needed):
- Keras 2 HDF5 weight files, as published (`mobilenet_1_0_224_tf.h5`, `..._no_top.h5`): one
  group per layer name whose `weight_names` attribute lists datasets `<layer>/<var>:0`;
  also the `model_weights` group of a whole model saved by `model.save('x.h5')`;
- Keras 3 `model.save_weights('x.weights.h5')` files and `.keras` archives: groups
  `layers/<class>[_k]/vars/<index>`, in the order the layer creates its variables.

Keras pads a stride-2 depthwise conv by (0, 1) explicitly and then convolves VALID; that is
TensorFlow's SAME whenever the layer's input size is even, i.e. at every resolution that
is a multiple of 32. Input: RGB scaled to [-1, 1].
"""

from __future__ import annotations

import io
import re
import zipfile

import h5py
import numpy as np

from mobileshuffle_jax.convert import common
from mobileshuffle_jax.models import mobilenet_v1

CLASSIFIER = "conv_preds"
# Keras 3 names a layer's variables only by their index; these are the creation orders.
KERAS3_VARIABLES = {
    "conv2d": ("kernel", "bias"),
    "depthwise_conv2d": ("kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}
BLOCK_COUNT = len(mobilenet_v1.BLOCKS)
# Layer names in the order MobileNet creates the layers of each class: a Keras 3 file
# without the layer-name attribute (Keras itself loads by this order) is read with it.
KERAS3_LAYER_ORDER = {
    "conv2d": ["conv1"] + [f"conv_pw_{i}" for i in range(1, BLOCK_COUNT + 1)] + [CLASSIFIER],
    "depthwise_conv2d": [f"conv_dw_{i}" for i in range(1, BLOCK_COUNT + 1)],
    "batch_normalization": ["conv1_bn"] + [f"conv_{kind}_{i}_bn"
                                           for i in range(1, BLOCK_COUNT + 1)
                                           for kind in ("dw", "pw")],
}
KERAS3_WEIGHTS_IN_ARCHIVE = "model.weights.h5"


def layer_name(module: str) -> str:
  """The Keras layer of our ConvBN module: stem -> conv1, block3/depthwise -> conv_dw_3."""
  if module == "stem":
    return "conv1"
  block, kind = module.split("/")
  return f"conv_{'dw' if kind == 'depthwise' else 'pw'}_{block.removeprefix('block')}"


def source_names(module: str) -> tuple[str, tuple[str, str, str, str]]:
  layer = layer_name(module)
  bn = f"{layer}_bn"
  return f"{layer}/kernel", (f"{bn}/gamma", f"{bn}/beta", f"{bn}/moving_mean",
                             f"{bn}/moving_variance")


def decoded(names) -> list[str]:
  return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def read_legacy(group: h5py.Group) -> dict[str, np.ndarray]:
  """Keras 2 layout: {'<layer>/<var>': array}, with Keras 2's `depthwise_kernel` as `kernel`."""
  tensors = {}
  for layer in decoded(group.attrs["layer_names"]):
    for weight in decoded(group[layer].attrs.get("weight_names", [])):
      variable = weight.rsplit("/", 1)[-1].split(":")[0]
      variable = "kernel" if variable == "depthwise_kernel" else variable
      tensors[f"{layer}/{variable}"] = group[layer][weight][()]
  return tensors


def read_keras3(layers: h5py.Group) -> dict[str, np.ndarray]:
  """Keras 3 layout: {'<layer>/<var>': array}, the layer named by the `name` attribute of
  its `vars` group, else by its class and ordinal in MobileNet's layer order."""
  tensors = {}
  for key, group in layers.items():
    variables = group.get("vars")
    if variables is None or not len(variables):
      continue
    match = re.fullmatch(r"(.*?)(?:_(\d+))?", key)
    kind, ordinal = match.group(1), int(match.group(2) or 0)
    order = KERAS3_LAYER_ORDER.get(kind, [])
    name = variables.attrs.get("name") or (order[ordinal] if ordinal < len(order) else key)
    name = decoded([name])[0]
    names = KERAS3_VARIABLES.get(kind, ())
    for index in sorted(variables, key=int):
      variable = names[int(index)] if int(index) < len(names) else index
      tensors[f"{name}/{variable}"] = variables[index][()]
  return tensors


def read_hdf5(weights: h5py.File, path: str) -> dict[str, np.ndarray]:
  if "layer_names" in weights.attrs:
    return read_legacy(weights)
  if "model_weights" in weights and "layer_names" in weights["model_weights"].attrs:
    return read_legacy(weights["model_weights"])
  if "layers" in weights:
    return read_keras3(weights["layers"])
  raise common.ConversionError(f"{path} is an HDF5 file of neither Keras 2 (`layer_names`) "
                               f"nor Keras 3 (`layers/`) weights")


def read_weights(path: str) -> dict[str, np.ndarray]:
  """{'<layer>/<variable>': array} of any of the Keras layouts in the module docstring."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      if KERAS3_WEIGHTS_IN_ARCHIVE not in archive.namelist():
        raise common.ConversionError(f"{path} is a zip archive without "
                                     f"{KERAS3_WEIGHTS_IN_ARCHIVE}: not a .keras model")
      data = io.BytesIO(archive.read(KERAS3_WEIGHTS_IN_ARCHIVE))
    with h5py.File(data, "r") as weights:
      return read_hdf5(weights, path)
  try:
    weights = h5py.File(path, "r")
  except FileNotFoundError:
    raise
  except OSError as error:
    raise common.ConversionError(f"{path} is not a Keras HDF5 file ({error})") from error
  with weights:
    return read_hdf5(weights, path)


def convert_keras(path: str, *, alpha: float | None = None, num_classes: int | None = None,
                  image_size: int | None = None, seed: int = 0) -> common.Converted:
  """A Keras MobileNet file: alpha and classes from the shapes (checked against the given
  ones). A file without the classifier (include_top=False) needs `num_classes`: the
  classifier then comes from the model's initializer with `seed`."""
  tensors = common.SourceTensors(read_weights(path), f"Keras file {path}")
  stem = "conv1/kernel"
  if stem not in tensors:
    raise common.ConversionError(
        f"Keras file {path} has no tensor {stem!r}: not a Keras MobileNet v1 file (it holds "
        f"{common.listed(tensors.names()) or 'no weights'})")
  stem_shape = tensors.shape(stem)
  alpha = common.mobilenet_alpha(alpha, stem_shape[-1],
                                 f"tensor {stem!r} has shape {stem_shape}", min_depth=1)
  classifier = f"{CLASSIFIER}/kernel"
  has_top = classifier in tensors
  if has_top:
    shape = tensors.shape(classifier)
    num_classes = common.check_option("num_classes", num_classes, shape[-1],
                                      f"tensor {classifier!r} has shape {shape}")
  elif num_classes is None:
    raise common.ConversionError(
        f"Keras file {path} has no classifier ({classifier!r}; saved with "
        f"include_top=False): give num_classes for a freshly initialised one")
  model_options = dict(alpha=alpha, num_classes=num_classes, activation="relu6",
                       padding="same", bn_epsilon=1e-3, bn_momentum=0.99, dropout_rate=1e-3,
                       min_depth=1)  # Keras thins layers by int(d * alpha), no minimum
  table = common.conv_bn_table(common.mobilenet_modules(), source_names, common.tf_kernel)
  head = ["params/classifier/kernel", "params/classifier/bias"]
  if has_top:
    table += [common.Entry(head[0], classifier, common.conv1x1_as_dense),
              common.Entry(head[1], f"{CLASSIFIER}/bias")]
  return common.assemble(
      "keras", tensors, table, model_name="mobilenet_v1", model_options=model_options,
      preprocessing=common.preprocessing("minus_one_one", "rgb",
                                         common.image_size_from_name(path, image_size)),
      initialize=() if has_top else tuple(head), seed=seed)
