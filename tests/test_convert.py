"""Checkpoint conversion: every source's converted model reproduces the source framework.

For each source, a network of the real source code (Keras applications, pytorchcv, and for
the authors' ShuffleNetV1 release a faithful PyTorch re-implementation of its network.py /
blocks.py below) gets random weights and random BN parameters and statistics (near those of
each BN's input, so that the logits depend on the image), is saved in the source's file
layout, converted, and both sides classify the same random 0..255 RGB images, each
prepared by its own framework's preprocessing. TF-slim checkpoints are written by
TensorFlow from a Keras MobileNet (Keras' MobileNet weights are TF-slim's: same layers,
padding, ReLU6 and BN epsilon). Small widths, 64x64 images and a batch of two keep it fast.
"""

from __future__ import annotations

import functools

import flax.traverse_util
import h5py
import jax
import numpy as np
import pytest

from mobileshuffle_jax import convert, models
from mobileshuffle_jax.convert import ConversionError

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
pytorchcv_mobilenet = pytest.importorskip("pytorchcv.models.mobilenet")
pytorchcv_shufflenet = pytest.importorskip("pytorchcv.models.shufflenet")

# Keras 3's own savers trip numpy 2's deprecation of `__array__` without `copy`.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

RESOLUTION = 64
TOLERANCE = 1e-4  # max |ours - theirs| / max |theirs| over the logits, float32
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def images():
  """Two random RGB images, 0..255, NHWC."""
  return np.random.default_rng(0).uniform(0, 255, (2, RESOLUTION, RESOLUTION, 3)).astype(
      np.float32)


@functools.lru_cache(maxsize=None)
def jitted_apply(model_name: str, options: tuple):
  return jax.jit(models.build(model_name, **dict(options)).apply)


def our_logits(converted: convert.Converted, images: np.ndarray) -> np.ndarray:
  """The converted model on `images` prepared as `converted.preprocessing` says."""
  prep = converted.preprocessing
  x = images[..., ::-1] if prep["channel_order"] == "bgr" else images
  if prep["normalization"] == "minus_one_one":
    x = x / 127.5 - 1.0
  elif prep["normalization"] == "imagenet":
    x = (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  else:
    assert prep["normalization"] == "none"
  apply = jitted_apply(converted.model_name, tuple(sorted(converted.model_options.items())))
  return np.asarray(apply(converted.variables, np.ascontiguousarray(x, np.float32)))


def assert_same_logits(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
  assert ours.shape == theirs.shape
  scale = np.abs(theirs).max()
  # Non-trivial logits: the two images must be told apart, else the check proves little.
  assert np.abs(theirs[0] - theirs[1]).max() > 1e-2 * scale
  difference = np.abs(ours - theirs).max() / scale
  print(f"{what}: max relative logit difference {difference:.2e}")
  assert difference <= TOLERANCE


def assert_same_tree(a, b) -> None:
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


def assert_matches_init(converted: convert.Converted) -> None:
  """Variables with exactly the paths, shapes and dtype of `models.build(...).init`."""
  model = models.build(converted.model_name, **converted.model_options)
  init = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                           np.zeros((1, 32, 32, 3), np.float32), train=False))
  shapes = jax.tree_util.tree_map(lambda v: (v.shape, v.dtype), converted.variables)
  assert shapes == jax.tree_util.tree_map(lambda v: (v.shape, v.dtype), init)


# Keras ------------------------------------------------------------------------------------

def calibration_images(seed: int) -> np.ndarray:
  """Other random 0..255 RGB images, for setting BN statistics."""
  return np.random.default_rng(seed).uniform(0, 255, (4, RESOLUTION, RESOLUTION, 3)).astype(
      np.float32)


def keras_mobilenet(alpha: float, classes: int, include_top: bool = True, seed: int = 0):
  """Keras applications' MobileNet, random weights and BN parameters, logits out.

  Random BN statistics alone leave a deep random network's logits blind to its input (the
  signal fades layer by layer), so each BN first gets the statistics of its input on
  calibration images (one training-mode pass with momentum 0), then perturbed ones.
  """
  keras.utils.set_random_seed(seed)
  model = keras.applications.MobileNet(
      weights=None, alpha=alpha, input_shape=(RESOLUTION, RESOLUTION, 3),
      include_top=include_top, classes=classes, classifier_activation=None)
  norms = [layer for layer in model.layers
           if isinstance(layer, keras.layers.BatchNormalization)]
  for layer in norms:
    layer.momentum = 0.0
  model(keras.applications.mobilenet.preprocess_input(calibration_images(seed)),
        training=True)
  rng = np.random.default_rng(seed)
  for layer in norms:
    _, _, mean, var = layer.get_weights()
    c = mean.shape[0]
    layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c),
                       mean + rng.normal(0, 0.2, c) * np.sqrt(var),
                       var * rng.uniform(0.5, 2.0, c)])
  if include_top:
    kernel, bias = model.get_layer("conv_preds").get_weights()
    model.get_layer("conv_preds").set_weights([kernel, rng.normal(0, 0.1, bias.shape)])
  return model


def keras_logits(model, images: np.ndarray) -> np.ndarray:
  x = keras.applications.mobilenet.preprocess_input(images.copy())
  return np.asarray(model(x, training=False))


def write_keras2_h5(model, path: str, include_top: bool = True) -> None:
  """The Keras 2 weights layout of the published `mobilenet_*_tf.h5` files: attribute
  `layer_names`, one group per layer with attribute `weight_names` ('<layer>/<var>:0',
  depthwise kernels named `depthwise_kernel`) and a dataset per name. Without the top,
  the layers end where `include_top=False` ends them (the `_no_top.h5` files)."""
  layers = model.layers
  if not include_top:
    layers = layers[:layers.index(model.get_layer("conv_pw_13_relu")) + 1]
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = np.array([layer.name.encode() for layer in layers])
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.1.4"
    for layer in layers:
      group = f.create_group(layer.name)
      names = []
      for variable in layer.weights:
        short = variable.name
        if isinstance(layer, keras.layers.DepthwiseConv2D) and short == "kernel":
          short = "depthwise_kernel"
        names.append(f"{layer.name}/{short}:0")
        group.create_dataset(names[-1], data=variable.numpy())
      group.attrs["weight_names"] = np.array([n.encode() for n in names])


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
  """One Keras MobileNet 0.25 saved in every Keras layout the converter reads."""
  directory = tmp_path_factory.mktemp("keras")
  model = keras_mobilenet(alpha=0.25, classes=10)
  files = dict(keras2=str(directory / "mobilenet_2_5_128_tf.h5"),
               keras3_model_h5=str(directory / "model.h5"),
               keras3_weights=str(directory / "model.weights.h5"),
               keras3_archive=str(directory / "model.keras"))
  write_keras2_h5(model, files["keras2"])
  model.save(files["keras3_model_h5"])  # Keras 3's own (legacy) HDF5 model writer
  model.save_weights(files["keras3_weights"])
  model.save(files["keras3_archive"])
  return model, files


def test_keras_matches_keras(keras_files, images):
  model, files = keras_files
  converted = convert.convert("keras", files["keras2"])
  assert converted.model_name == "mobilenet_v1"
  assert converted.model_options["alpha"] == 0.25
  assert converted.model_options["num_classes"] == 10
  assert converted.preprocessing == dict(normalization="minus_one_one", channel_order="rgb",
                                         image_size=128, eval_crop_ratio=0.875)
  assert converted.initialized == ()
  assert_matches_init(converted)
  assert_same_logits(our_logits(converted, images), keras_logits(model, images), "keras")


@pytest.mark.parametrize("layout", ["keras3_model_h5", "keras3_weights", "keras3_archive"])
def test_keras3_layouts_give_the_same_variables(keras_files, layout):
  _, files = keras_files
  reference = convert.convert_keras(files["keras2"], alpha=0.25, num_classes=10)
  converted = convert.convert_keras(files[layout])
  assert converted.model_options == reference.model_options
  assert_same_tree(converted.variables, reference.variables)


def test_keras3_weights_without_layer_names(keras_files, tmp_path):
  """Keras 3 files whose `vars` groups carry no layer name are read by layer order."""
  _, files = keras_files
  path = str(tmp_path / "unnamed.weights.h5")
  with open(files["keras3_weights"], "rb") as src, open(path, "wb") as dst:
    dst.write(src.read())
  with h5py.File(path, "r+") as f:
    for group in f["layers"].values():
      if "vars" in group:
        group["vars"].attrs.pop("name", None)
  assert_same_tree(convert.convert_keras(path).variables,
                   convert.convert_keras(files["keras2"]).variables)


def test_keras_without_top(keras_files, tmp_path):
  """A no-top file (include_top=False) gets a fresh classifier of the given classes."""
  model, files = keras_files
  path = str(tmp_path / "mobilenet_2_5_224_tf_no_top.h5")
  write_keras2_h5(model, path, include_top=False)
  with pytest.raises(ConversionError, match="num_classes"):
    convert.convert_keras(path)
  converted = convert.convert_keras(path, num_classes=7)
  assert converted.initialized == ("params/classifier/kernel", "params/classifier/bias")
  assert converted.preprocessing["image_size"] == 224
  assert_matches_init(converted)
  classifier = converted.variables["params"]["classifier"]
  np.testing.assert_array_equal(classifier["bias"], 0.0)
  assert 0.005 < classifier["kernel"].std() < 0.02  # the model's normal(0.01) initializer
  full = convert.convert_keras(files["keras2"])
  for collection in ("params", "batch_stats"):
    ours = {k: v for k, v in converted.variables[collection].items() if k != "classifier"}
    theirs = {k: v for k, v in full.variables[collection].items() if k != "classifier"}
    assert_same_tree(ours, theirs)


def test_keras_bad_input(keras_files, tmp_path):
  _, files = keras_files
  with pytest.raises(ConversionError, match=r"alpha=0\.5 does not match.*'conv1/kernel'"):
    convert.convert_keras(files["keras2"], alpha=0.5)
  with pytest.raises(ConversionError, match=r"num_classes=1000 does not match.*conv_preds"):
    convert.convert_keras(files["keras2"], num_classes=1000)
  text = tmp_path / "notes.txt"
  text.write_text("not weights")
  with pytest.raises(ConversionError, match="not a Keras HDF5 file"):
    convert.convert_keras(str(text))
  broken = str(tmp_path / "broken.h5")
  with open(files["keras2"], "rb") as src, open(broken, "wb") as dst:
    dst.write(src.read())
  with h5py.File(broken, "r+") as f:
    del f["conv_pw_7_bn"]["conv_pw_7_bn"]["moving_variance:0"]
    f["conv_pw_7_bn"].attrs["weight_names"] = np.array(
        [b"conv_pw_7_bn/gamma:0", b"conv_pw_7_bn/beta:0", b"conv_pw_7_bn/moving_mean:0"])
  with pytest.raises(ConversionError, match="missing.*'conv_pw_7_bn/moving_variance'"):
    convert.convert_keras(broken)


# TF-slim ----------------------------------------------------------------------------------

def slim_name(keras_layer: str, variable: str) -> str:
  """A Keras MobileNet variable's TF-slim name (the Keras weights were ported from slim)."""
  bn_variables = dict(gamma="gamma", beta="beta", moving_mean="moving_mean",
                      moving_variance="moving_variance")
  if keras_layer == "conv_preds":
    return "MobilenetV1/Logits/Conv2d_1c_1x1/" + dict(kernel="weights", bias="biases")[variable]
  base = keras_layer.removesuffix("_bn")
  if base == "conv1":
    scope = "MobilenetV1/Conv2d_0"
  else:
    kind, index = base.split("_")[1:]
    scope = f"MobilenetV1/Conv2d_{index}_{dict(dw='depthwise', pw='pointwise')[kind]}"
  if keras_layer.endswith("_bn"):
    return f"{scope}/BatchNorm/{bn_variables[variable]}"
  return f"{scope}/{'depthwise_weights' if base.startswith('conv_dw') else 'weights'}"


def write_tf_checkpoint(tensors: dict[str, np.ndarray], prefix: str) -> str:
  """A TF1-style checkpoint, by name, written by TensorFlow's own Saver."""
  variables = {name: tf.Variable(value) for name, value in tensors.items()}
  return tf.compat.v1.train.Saver(var_list=variables).save(None, prefix)


@pytest.fixture(scope="module")
def slim_checkpoint(tmp_path_factory):
  """A Keras MobileNet 0.5 over 1001 classes as a TF-slim training checkpoint: every
  weight and BN parameter also has an EMA copy holding the evaluated value while the raw
  variable holds other numbers; the BN moving statistics have none; RMSProp slots."""
  model = keras_mobilenet(alpha=0.5, classes=1001, seed=1)
  rng = np.random.default_rng(1)
  tensors = {"global_step": np.int64(1234)}
  for layer in model.layers:
    for variable in layer.weights:
      name = slim_name(layer.name, variable.name)
      value = variable.numpy()
      if "moving_" in name:
        tensors[name] = value
        continue
      tensors[name] = rng.normal(size=value.shape).astype(np.float32)
      tensors[name + "/ExponentialMovingAverage"] = value
      tensors[name + "/RMSProp"] = rng.uniform(size=value.shape).astype(np.float32)
      tensors[name + "/RMSProp_1"] = rng.normal(size=value.shape).astype(np.float32)
  directory = tmp_path_factory.mktemp("slim")
  prefix = write_tf_checkpoint(tensors, str(directory / "mobilenet_v1_0.5_160.ckpt"))
  return model, tensors, prefix


def test_tf_slim_matches_keras(slim_checkpoint, images):
  model, _, prefix = slim_checkpoint
  converted = convert.convert("tf-slim", prefix)
  assert converted.model_options["alpha"] == 0.5
  assert converted.model_options["num_classes"] == 1000
  assert converted.preprocessing["image_size"] == 160
  assert_matches_init(converted)
  # Index 0 of the 1001 slim classes is background; the converter drops it, and says so.
  assert_same_logits(our_logits(converted, images), keras_logits(model, images)[:, 1:],
                     "tf-slim")
  assert len(converted.notes) == 1
  assert "dropped logit 0 (background) of the 1001-class head" in converted.notes[0]


def test_tf_slim_options(slim_checkpoint, tmp_path):
  _, tensors, prefix = slim_checkpoint
  default = convert.convert_tf_slim(prefix)
  kept = convert.convert_tf_slim(prefix, drop_background=False)
  assert kept.model_options["num_classes"] == 1001
  assert kept.notes == ()
  assert_same_tree(convert.convert_tf_slim(prefix, drop_background=True).variables,
                   default.variables)
  np.testing.assert_array_equal(kept.variables["params"]["classifier"]["kernel"][:, 1:],
                                default.variables["params"]["classifier"]["kernel"])
  raw = convert.convert_tf_slim(prefix, use_ema=False)
  np.testing.assert_array_equal(raw.variables["params"]["stem"]["conv"]["kernel"],
                                tensors["MobilenetV1/Conv2d_0/weights"])
  # slim's batch_norm(scale=False) saves no gamma at all: the scale is then one.
  without_gamma = {name: value for name, value in tensors.items() if "/gamma" not in name}
  converted = convert.convert_tf_slim(
      write_tf_checkpoint(without_gamma, str(tmp_path / "no_gamma" / "model.ckpt")))
  scales = [value for path, value in flax.traverse_util.flatten_dict(
      converted.variables["params"]).items() if path[-1] == "scale"]
  assert len(scales) == 27 and all(np.all(s == 1.0) for s in scales)
  assert_same_tree(converted.variables["batch_stats"], default.variables["batch_stats"])


@pytest.fixture(scope="module")
def slim_five_classes(slim_checkpoint, tmp_path_factory):
  """The slim checkpoint fine-tuned to 5 classes: its head cut to the first 5 of the 1001
  (a class's logit depends on its own classifier column only, so the Keras model's first 5
  logits are the reference), saved under a `_128` prefix in a directory whose name carries
  no resolution. Returns (Keras model, directory, prefix)."""
  model, tensors, _ = slim_checkpoint
  head = {name: value[..., :5] for name, value in tensors.items()
          if name.startswith("MobilenetV1/Logits/")}
  directory = tmp_path_factory.mktemp("finetuned")
  prefix = write_tf_checkpoint(dict(tensors, **head),
                               str(directory / "mobilenet_v1_0.5_128.ckpt"))
  return model, str(directory), prefix


def test_tf_slim_other_head_keeps_every_class(slim_five_classes, images):
  """Only the releases' 1001-class head has a background logit 0 to drop."""
  model, _, prefix = slim_five_classes
  converted = convert.convert_tf_slim(prefix)
  assert converted.model_options["num_classes"] == 5
  assert converted.notes == ()
  assert_same_logits(our_logits(converted, images), keras_logits(model, images)[:, :5],
                     "tf-slim 5 classes")
  assert_same_tree(convert.convert_tf_slim(prefix, drop_background=False).variables,
                   converted.variables)
  with pytest.raises(ConversionError, match=r"drop_background=True .*\(5,\).*5 classes"):
    convert.convert_tf_slim(prefix, drop_background=True)


def test_tf_slim_directory_resolution_from_its_checkpoint(slim_five_classes):
  """A directory is read as the prefix its `checkpoint` file names, resolution included."""
  _, directory, prefix = slim_five_classes
  converted = convert.convert("tf-slim", directory)
  assert converted.preprocessing["image_size"] == 128
  assert_same_tree(converted.variables, convert.convert_tf_slim(prefix).variables)
  assert convert.convert_tf_slim(directory, image_size=192).preprocessing["image_size"] == 192


def test_tf_slim_bad_input(slim_checkpoint, keras_files, tmp_path):
  _, tensors, prefix = slim_checkpoint
  with pytest.raises(ConversionError, match=r"alpha=1\.0 does not match.*Conv2d_0/weights"):
    convert.convert_tf_slim(prefix, alpha=1.0)
  with pytest.raises(ConversionError, match="not a TensorFlow checkpoint"):
    convert.convert_tf_slim(keras_files[1]["keras2"])
  cases = {
      "missing": ({k: v for k, v in tensors.items()
                   if not k.startswith("MobilenetV1/Conv2d_5_depthwise/depthwise_weights")},
                  "missing.*'MobilenetV1/Conv2d_5_depthwise/depthwise_weights'"),
      "extra": (dict(tensors, **{"MobilenetV1/Conv2d_14_pointwise/weights":
                                 np.zeros((1, 1, 512, 512), np.float32)}),
                "unexpected.*'MobilenetV1/Conv2d_14_pointwise/weights'"),
      "one_gamma_missing": ({k: v for k, v in tensors.items()
                             if not k.startswith("MobilenetV1/Conv2d_3_pointwise/BatchNorm/gamma")},
                            "missing.*'MobilenetV1/Conv2d_3_pointwise/BatchNorm/gamma'"),
      "shape": (dict(tensors, **{"MobilenetV1/Conv2d_2_pointwise/BatchNorm/moving_mean":
                                 np.zeros(5, np.float32)}),
                r"'MobilenetV1/Conv2d_2_pointwise/BatchNorm/moving_mean' has shape \(5,\)"),
  }
  for case, (case_tensors, message) in cases.items():
    path = write_tf_checkpoint(case_tensors, str(tmp_path / case / "model.ckpt"))
    with pytest.raises(ConversionError, match=message):
      convert.convert_tf_slim(path)


# pytorchcv --------------------------------------------------------------------------------

def randomize_torch_batch_norm(net, x_nhwc: np.ndarray, seed: int) -> None:
  """Random BN parameters and statistics near those of the BN inputs on `x_nhwc` (as for
  Keras above), and a random classifier bias; `net` ends in eval mode."""
  for module in net.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.momentum = None  # a cumulative average: one pass sets the batch statistics
      module.reset_running_stats()
  net.train()
  torch_logits(net, x_nhwc)
  net.eval()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        c = module.num_features
        module.weight.copy_(0.5 + torch.rand(c, generator=generator))
        module.bias.copy_(0.2 * torch.randn(c, generator=generator))
        module.running_mean.add_(0.2 * torch.randn(c, generator=generator)
                                 * module.running_var.sqrt())
        module.running_var.mul_(0.5 + 1.5 * torch.rand(c, generator=generator))
      elif isinstance(module, torch.nn.Linear) and module.bias is not None:
        module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))


def torch_logits(net, x_nhwc: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return net(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def pytorchcv_net(name: str):
  """A pytorchcv model with random weights and BN statistics. Its final 7x7 average pool is
  the global pool at 224x224; an adaptive one keeps that meaning at our 64x64."""
  torch.manual_seed(0)
  module = pytorchcv_mobilenet if name.startswith("mobilenet") else pytorchcv_shufflenet
  net = getattr(module, name)()
  net.features.final_pool = torch.nn.AdaptiveAvgPool2d(1)
  randomize_torch_batch_norm(
      net, (calibration_images(0) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD, seed=0)
  return net


@pytest.fixture(scope="module")
def pytorchcv_files(tmp_path_factory):
  directory = tmp_path_factory.mktemp("pytorchcv")
  nets, files = {}, {}
  for name in ("mobilenet_wd4", "shufflenet_g3_wd4", "shufflenet_g8_w1"):
    nets[name] = pytorchcv_net(name)
    files[name] = str(directory / f"{name}.pth")
    torch.save(nets[name].state_dict(), files[name])
  return nets, files


@pytest.mark.parametrize("name, expected", [
    ("mobilenet_wd4", dict(alpha=0.25, activation="relu")),
    ("shufflenet_g3_wd4", dict(groups=3, scale=0.25, conv1_channels=6)),
    ("shufflenet_g8_w1", dict(groups=8, scale=1.0, conv1_channels=24)),
])
def test_pytorchcv_matches_pytorchcv(pytorchcv_files, images, name, expected):
  nets, files = pytorchcv_files
  converted = convert.convert("pytorchcv", files[name])
  assert expected.items() <= converted.model_options.items()
  assert converted.model_options["padding"] == "symmetric"
  assert_matches_init(converted)
  x = (images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  assert_same_logits(our_logits(converted, images), torch_logits(nets[name], x),
                     f"pytorchcv {name}")


def test_pytorchcv_bad_input(pytorchcv_files, keras_files, tmp_path):
  nets, files = pytorchcv_files
  path = files["shufflenet_g3_wd4"]
  with pytest.raises(ConversionError, match=r"groups=8 does not match.*stage1\.unit1\.expand"):
    convert.convert_pytorchcv(path, groups=8)
  with pytest.raises(ConversionError, match=r"scale=0\.5 does not match"):
    convert.convert_pytorchcv(path, scale=0.5)
  with pytest.raises(ConversionError, match="alpha=0.5 does not match.*init_block"):
    convert.convert_pytorchcv(files["mobilenet_wd4"], alpha=0.5)
  with pytest.raises(ConversionError, match="not a PyTorch state dict"):
    convert.convert_pytorchcv(keras_files[1]["keras2"])
  state = nets["shufflenet_g3_wd4"].state_dict()
  cases = {
      "missing": ({k: v for k, v in state.items() if k != "features.stage2.unit3.dw_conv2.weight"},
                  r"missing.*'features\.stage2\.unit3\.dw_conv2\.weight'"),
      "extra": (dict(state, **{"features.stage3.unit5.dw_conv2.weight": torch.zeros(3)}),
                r"unexpected.*'features\.stage3\.unit5\.dw_conv2\.weight'"),
      "shape": (dict(state, **{"features.stage2.unit1.expand_bn3.running_mean": torch.zeros(3)}),
                r"'features\.stage2\.unit1\.expand_bn3\.running_mean' has shape \(3,\)"),
  }
  for case, (case_state, message) in cases.items():
    case_path = str(tmp_path / f"{case}.pth")
    torch.save(case_state, case_path)
    with pytest.raises(ConversionError, match=message):
      convert.convert_pytorchcv(case_path)


# The ShuffleNet authors' release ----------------------------------------------------------
# A re-implementation of megvii-model/ShuffleNet-Series ShuffleNetV1/blocks.py and
# network.py: same modules, same state_dict names, same forward.

class AuthorsShuffleV1Block(torch.nn.Module):

  def __init__(self, inp, oup, *, group, first_group, mid_channels, ksize, stride):
    super().__init__()
    self.stride = stride
    self.group = group
    outputs = oup - inp if stride == 2 else oup
    self.branch_main_1 = torch.nn.Sequential(
        torch.nn.Conv2d(inp, mid_channels, 1, 1, 0, groups=1 if first_group else group,
                        bias=False),
        torch.nn.BatchNorm2d(mid_channels),
        torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(mid_channels, mid_channels, ksize, stride, ksize // 2,
                        groups=mid_channels, bias=False),
        torch.nn.BatchNorm2d(mid_channels),
    )
    self.branch_main_2 = torch.nn.Sequential(
        torch.nn.Conv2d(mid_channels, outputs, 1, 1, 0, groups=group, bias=False),
        torch.nn.BatchNorm2d(outputs),
    )
    if stride == 2:
      self.branch_proj = torch.nn.AvgPool2d(kernel_size=3, stride=2, padding=1)

  def channel_shuffle(self, x):
    batch, channels, height, width = x.shape
    x = x.reshape(batch, channels // self.group, self.group, height, width)
    return x.permute(0, 2, 1, 3, 4).reshape(batch, channels, height, width)

  def forward(self, old_x):
    x = self.branch_main_1(old_x)
    if self.group > 1:
      x = self.channel_shuffle(x)
    x = self.branch_main_2(x)
    if self.stride == 1:
      return torch.nn.functional.relu(x + old_x)
    return torch.cat((self.branch_proj(old_x), torch.nn.functional.relu(x)), 1)


AUTHORS_CHANNELS = {
    3: {"0.5x": [12, 120, 240, 480], "1.0x": [24, 240, 480, 960],
        "1.5x": [24, 360, 720, 1440], "2.0x": [48, 480, 960, 1920]},
    8: {"0.5x": [16, 192, 384, 768], "1.0x": [24, 384, 768, 1536],
        "1.5x": [24, 576, 1152, 2304], "2.0x": [48, 768, 1536, 3072]},
}


class AuthorsShuffleNetV1(torch.nn.Module):
  """The release's network; its `AvgPool2d(7)` is the global pool of a 224 input, written
  as `input_size // 32` so that smaller inputs keep that meaning."""

  def __init__(self, input_size=224, n_class=1000, model_size="2.0x", group=None):
    super().__init__()
    self.stage_repeats = [4, 8, 4]
    self.stage_out_channels = [-1] + AUTHORS_CHANNELS[group][model_size]
    input_channel = self.stage_out_channels[1]
    self.first_conv = torch.nn.Sequential(
        torch.nn.Conv2d(3, input_channel, 3, 2, 1, bias=False),
        torch.nn.BatchNorm2d(input_channel),
        torch.nn.ReLU(inplace=True),
    )
    self.maxpool = torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    features = []
    for stage, repeats in enumerate(self.stage_repeats):
      output_channel = self.stage_out_channels[stage + 2]
      for i in range(repeats):
        features.append(AuthorsShuffleV1Block(
            input_channel, output_channel, group=group, first_group=stage == 0 and i == 0,
            mid_channels=output_channel // 4, ksize=3, stride=2 if i == 0 else 1))
        input_channel = output_channel
    self.features = torch.nn.Sequential(*features)
    self.globalpool = torch.nn.AvgPool2d(input_size // 32)
    self.classifier = torch.nn.Sequential(
        torch.nn.Linear(self.stage_out_channels[-1], n_class, bias=False))

  def forward(self, x):
    x = self.maxpool(self.first_conv(x))
    x = self.globalpool(self.features(x))
    return self.classifier(x.contiguous().view(-1, self.stage_out_channels[-1]))


@pytest.fixture(scope="module")
def megvii_files(tmp_path_factory):
  """Release-style checkpoints: {'state_dict': ...} saved from nn.DataParallel."""
  directory = tmp_path_factory.mktemp("megvii")
  nets, files = {}, {}
  for group in (3, 8):
    torch.manual_seed(group)
    net = AuthorsShuffleNetV1(input_size=RESOLUTION, model_size="0.5x", group=group)
    randomize_torch_batch_norm(net, calibration_images(group)[..., ::-1], seed=group)
    nets[group] = net
    files[group] = str(directory / f"shufflenetv1_g{group}_0.5x.pth.tar")
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
               files[group])
  return nets, files


@pytest.mark.parametrize("group", [3, 8])
def test_megvii_matches_authors_network(megvii_files, images, group):
  nets, files = megvii_files
  converted = convert.convert("megvii", files[group])
  assert dict(groups=group, scale=0.5, conv1_channels=AUTHORS_CHANNELS[group]["0.5x"][0],
              concat_order="shortcut_first", shuffle_order="inverse",
              classifier_bias=False).items() <= converted.model_options.items()
  # The stem reads RGB: the release's BGR order is folded into its kernel.
  assert converted.preprocessing["channel_order"] == "rgb"
  assert_matches_init(converted)
  # The release's own input: BGR, 0..255, not normalized.
  assert_same_logits(our_logits(converted, images),
                     torch_logits(nets[group], images[..., ::-1]), f"megvii g{group}")


def test_megvii_bad_input(megvii_files, pytorchcv_files, tmp_path):
  nets, files = megvii_files
  with pytest.raises(ConversionError, match=r"scale=1\.0 does not match"):
    convert.convert_megvii(files[3], scale=1.0)
  with pytest.raises(ConversionError, match="groups=3 does not match"):
    convert.convert_megvii(files[8], groups=3)
  with pytest.raises(ConversionError, match="not a state dict of the authors' ShuffleNetV1"):
    convert.convert_megvii(pytorchcv_files[1]["shufflenet_g3_wd4"])
  with pytest.raises(ConversionError, match="not a pytorchcv MobileNet or ShuffleNet"):
    convert.convert_pytorchcv(files[3])
  state = dict(nets[3].state_dict())
  state["features.6.branch_main_1.3.weight"] = torch.zeros(9, 1, 3, 3)
  path = str(tmp_path / "shape.pth")
  torch.save(state, path)
  with pytest.raises(ConversionError, match=r"'features\.6\.branch_main_1\.3\.weight' has shape"):
    convert.convert_megvii(path)


def test_cli_refusals(keras_files, capsys):
  """The command line refuses options its source lacks and reports conversion errors
  (both before any checkpoint would be written)."""
  from mobileshuffle_jax.convert import __main__ as cli

  path = keras_files[1]["keras2"]
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["keras", path, "--out", "unused", "--groups", "3"])
  assert exit_info.value.code == 2
  assert "--groups: not an option of source 'keras'" in capsys.readouterr().err
  with pytest.raises(SystemExit, match=r"error: alpha=0\.5 does not match"):
    cli.main(["keras", path, "--out", "unused", "--alpha", "0.5"])


@pytest.mark.parametrize("source", ["keras", "tf-slim", "pytorchcv", "megvii"])
def test_cli_unreadable_path(source, tmp_path, capsys):
  """A missing path, or a directory that holds no checkpoint, is one line naming it and a
  non-zero exit, with nothing written."""
  from mobileshuffle_jax.convert import __main__ as cli

  out = tmp_path / "out"
  empty = tmp_path / "empty"
  empty.mkdir()
  for path in (str(tmp_path / "missing_file"), str(empty)):
    with pytest.raises(SystemExit) as exit_info:
      cli.main([source, path, "--out", str(out)])
    message = exit_info.value.code  # sys.exit(text) prints it and exits with status 1
    assert isinstance(message, str) and message.startswith("error: ")
    assert path in message and "\n" not in message
  assert not out.exists()
  assert capsys.readouterr().out == ""


def test_cli_reports_dropped_background(slim_checkpoint, tmp_path, capsys):
  from mobileshuffle_jax.convert import __main__ as cli

  _, _, prefix = slim_checkpoint
  cli.main(["tf-slim", prefix, "--out", str(tmp_path / "out")])
  assert ("dropped logit 0 (background) of the 1001-class head: 1000 ImageNet classes"
          in capsys.readouterr().out)


def test_unknown_source_and_shuffle_order():
  with pytest.raises(ValueError, match="source='caffe'"):
    convert.convert("caffe", "model.caffemodel")
  with pytest.raises(ValueError, match="shuffle_order"):
    models.build("shufflenet_v1", shuffle_order="reversed")
