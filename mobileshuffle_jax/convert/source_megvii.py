"""The ShuffleNet authors' ShuffleNetV1 release (megvii-model/ShuffleNet-Series) -> ShuffleNetV1.

State dict keys: `first_conv.{0: conv, 1: BN}`, `features.{k}.branch_main_1.{0: 1x1 conv,
1: BN, 3: depthwise conv, 4: BN}`, `features.{k}.branch_main_2.{0: 1x1 conv, 1: BN}` for
the 16 units in order, `classifier.0.weight` (Linear without bias); the release saves
them under 'state_dict' with nn.DataParallel's `module.` prefix.

The release differs from the paper in three ways the model reproduces with options:
- its shuffle reshapes the channels to (C/g, g) and swaps: the inverse of the paper's
  permutation (`shuffle_order="inverse"`);
- it shuffles after the depthwise conv and its BN rather than before. Both act channel by
  channel, so shuffling first and permuting their parameters the same way is identical:
  the converter permutes the depthwise kernel and BN by the shuffle;
- the stride-2 concat is [pooled shortcut, main] (`concat_order="shortcut_first"`), with
  the ReLU on the main branch only, which is the same as after the concat since the
  pooled input of a unit is already non-negative.
Symmetric padding, average pools that count the padding, BN eps 1e-5. Input: BGR 0..255,
not normalized.
"""

from __future__ import annotations

import numpy as np

from mobileshuffle_jax import layers, models
from mobileshuffle_jax.convert import common

STEM = "first_conv"
# Our ConvBN kinds -> (Sequential, conv index, BN index) of a release unit.
UNIT_LAYERS = {"compress": ("branch_main_1", 0, 1), "depthwise": ("branch_main_1", 3, 4),
               "expand": ("branch_main_2", 0, 1)}
CLASSIFIER = "classifier.0.weight"


def bn_names(prefix: str) -> tuple[str, str, str, str]:
  return (f"{prefix}.weight", f"{prefix}.bias", f"{prefix}.running_mean",
          f"{prefix}.running_var")


def source_names(module: str, unit_index: dict[str, int]) -> tuple[str, tuple]:
  if module == "stem":
    return f"{STEM}.0.weight", bn_names(f"{STEM}.1")
  unit, kind = module.split("/")
  branch, conv, bn = UNIT_LAYERS[kind]
  prefix = f"features.{unit_index[unit]}.{branch}"
  return f"{prefix}.{conv}.weight", bn_names(f"{prefix}.{bn}")


def shuffled(groups: int):
  """The transform of a depthwise parameter (channels last) that moves the release's
  shuffle from after the depthwise conv to before it: channel o takes channel perm[o] of
  the inverse shuffle, the permutation the model now applies to the conv's input."""

  def transform(x: np.ndarray) -> np.ndarray:
    channels = x.shape[-1]
    if channels % groups:
      return x  # misshapen: `assemble` reports the tensor
    return x[..., np.asarray(layers.inverse_channel_shuffle(np.arange(channels), groups))]

  return transform


def bgr_to_rgb(kernel):
  """A stem kernel (kh, kw, 3, out) for BGR input, rewritten for RGB input."""
  return kernel[:, :, ::-1, :]


def convert_megvii(path: str, *, groups: int | None = None, scale: float | None = None,
                   num_classes: int | None = None) -> common.Converted:
  """A ShuffleNetV1 checkpoint of the authors' release (g=3 or 8, 0.5x-2.0x); groups,
  scale and classes come from the shapes and are checked against the given ones."""
  tensors = common.SourceTensors(
      common.read_torch_state_dict(path, "the authors' ShuffleNetV1"),
      f"ShuffleNetV1 state dict {path}")
  if f"{STEM}.0.weight" not in tensors:
    raise common.ConversionError(
        f"{path} is not a state dict of the authors' ShuffleNetV1: it has no "
        f"'{STEM}.0.weight' (it holds {common.listed(tensors.names())})")
  tensors.ignore(name for name in tensors.names() if name.endswith(".num_batches_tracked"))
  model_options = common.shufflenet_options(
      tensors, stem=f"{STEM}.0.weight", first_compress="features.0.branch_main_1.0.weight",
      first_expand="features.0.branch_main_2.0.weight", groups=groups, scale=scale)
  classifier = tensors.shape(CLASSIFIER)
  model_options.update(
      num_classes=common.check_option("num_classes", num_classes, classifier[0],
                                      f"tensor {CLASSIFIER!r} has shape {classifier}"),
      padding="symmetric", bn_epsilon=1e-5, bn_momentum=0.9, dropout_rate=0.0,
      concat_order="shortcut_first", shuffle_order="inverse", classifier_bias=False)
  model = models.build("shufflenet_v1", **model_options)
  unit_index = {name: k for k, (name, *_) in enumerate(model.unit_specs())}
  table = common.conv_bn_table(common.shufflenet_modules(model_options),
                               lambda module: source_names(module, unit_index),
                               lambda module: common.torch_conv)
  if model.groups > 1:  # the model shuffles only then, as the release does
    permute = shuffled(model.groups)
    table = [common.Entry(entry.path, entry.source, common.then(entry.transform, permute))
             if "/depthwise/" in entry.path else entry for entry in table]
  # The release reads BGR images; reversing the stem's input channels makes the converted
  # model read RGB like every other checkpoint of this package, at no cost.
  table = [common.Entry(entry.path, entry.source, common.then(entry.transform, bgr_to_rgb))
           if entry.path == "params/stem/conv/kernel" else entry for entry in table]
  table.append(common.Entry("params/classifier/kernel", CLASSIFIER, common.torch_linear))
  return common.assemble("megvii", tensors, table, model_name="shufflenet_v1",
                         model_options=model_options,
                         preprocessing=common.preprocessing("none", "rgb",
                                                            common.DEFAULT_IMAGE_SIZE))
