"""pytorchcv `mobilenet_*` and `shufflenet_*` state dicts -> MobileNetV1 / ShuffleNetV1.

pytorchcv pads symmetrically (padding=1 on every 3x3 conv and pool), uses BN eps 1e-5 and
plain ReLU in MobileNet, shuffles in the paper's order before the depthwise conv and puts
the main branch first in the stride-2 concat; its classifier is a Linear with bias. Widths
are `int(c * s)` for every layer, Conv1 included (our `conv1_channels`). Its final 7x7
average pool is the global pool at 224x224. Input: RGB normalized by ImageNet mean/std.
"""

from __future__ import annotations

from typing import Any

from mobileshuffle_jax.convert import common

# Units per pytorchcv MobileNet stage: blocks 1, 2-3, 4-5, 6-11 and 12-13 of paper Table 1.
MOBILENET_STAGE_UNITS = (1, 2, 2, 6, 2)
MOBILENET_PROBE = "features.stage1.unit1.dw_conv.conv.weight"
SHUFFLENET_PROBE = "features.stage1.unit1.compress_conv1.weight"
MOBILENET_LAYERS = {"depthwise": "dw_conv", "pointwise": "pw_conv"}
SHUFFLENET_LAYERS = {"compress": ("compress_conv1", "compress_bn1"),
                     "depthwise": ("dw_conv2", "dw_bn2"),
                     "expand": ("expand_conv3", "expand_bn3")}
STEM = "features.init_block"


def bn_names(prefix: str) -> tuple[str, str, str, str]:
  return (f"{prefix}.weight", f"{prefix}.bias", f"{prefix}.running_mean",
          f"{prefix}.running_var")


def mobilenet_unit(block: int) -> str:
  """pytorchcv's `features.stage{s}.unit{u}` of MobileNet block `block` (1-based)."""
  for stage, units in enumerate(MOBILENET_STAGE_UNITS, start=1):
    if block <= units:
      return f"features.stage{stage}.unit{block}"
    block -= units
  raise AssertionError("MobileNet v1 has 13 blocks")


def mobilenet_names(module: str) -> tuple[str, tuple[str, str, str, str]]:
  if module == "stem":
    return f"{STEM}.conv.weight", bn_names(f"{STEM}.bn")
  block, kind = module.split("/")
  layer = f"{mobilenet_unit(int(block.removeprefix('block')))}.{MOBILENET_LAYERS[kind]}"
  return f"{layer}.conv.weight", bn_names(f"{layer}.bn")


def shufflenet_names(module: str) -> tuple[str, tuple[str, str, str, str]]:
  if module == "stem":
    return f"{STEM}.conv.weight", bn_names(f"{STEM}.bn")
  unit_name, kind = module.split("/")  # 'stage2_unit1', 'compress'
  stage, unit = unit_name.removeprefix("stage").split("_unit")
  prefix = f"features.stage{int(stage) - 1}.unit{unit}"
  conv, bn = SHUFFLENET_LAYERS[kind]
  return f"{prefix}.{conv}.weight", bn_names(f"{prefix}.{bn}")


def convert_pytorchcv(path: str, *, alpha: float | None = None, groups: int | None = None,
                      scale: float | None = None,
                      num_classes: int | None = None) -> common.Converted:
  """A pytorchcv MobileNet (width `alpha`) or ShuffleNet (`groups`, `scale`) state dict;
  the widths come from the shapes and are checked against the given ones."""
  tensors = common.SourceTensors(
      common.read_torch_state_dict(path, "pytorchcv MobileNet or ShuffleNet"),
      f"pytorchcv state dict {path}")
  tensors.ignore(name for name in tensors.names() if name.endswith(".num_batches_tracked"))
  common_options: dict[str, Any] = dict(padding="symmetric", bn_epsilon=1e-5, bn_momentum=0.9,
                                        dropout_rate=0.0)
  if MOBILENET_PROBE in tensors:
    if groups is not None or scale is not None:
      raise common.ConversionError(f"{path} holds a MobileNet: give alpha, not groups/scale")
    model_name = "mobilenet_v1"
    stem = tensors.shape(f"{STEM}.conv.weight")
    model_options = dict(
        alpha=common.mobilenet_alpha(alpha, stem[0], f"tensor '{STEM}.conv.weight' has shape "
                                     f"{stem}", min_depth=1),
        activation="relu", min_depth=1, **common_options)
    modules, names = common.mobilenet_modules(), mobilenet_names
  elif SHUFFLENET_PROBE in tensors:
    if alpha is not None:
      raise common.ConversionError(f"{path} holds a ShuffleNet: give groups/scale, not alpha")
    model_name = "shufflenet_v1"
    model_options = dict(
        common.shufflenet_options(tensors, stem=f"{STEM}.conv.weight",
                                  first_compress=SHUFFLENET_PROBE,
                                  first_expand="features.stage1.unit1.expand_conv3.weight",
                                  groups=groups, scale=scale),
        concat_order="main_first", shuffle_order="paper", classifier_bias=True,
        **common_options)
    modules, names = common.shufflenet_modules(model_options), shufflenet_names
  else:
    raise common.ConversionError(
        f"{path} is not a pytorchcv MobileNet or ShuffleNet state dict: it has neither "
        f"{MOBILENET_PROBE!r} nor {SHUFFLENET_PROBE!r}")
  classifier = tensors.shape("output.weight")
  model_options["num_classes"] = common.check_option(
      "num_classes", num_classes, classifier[0],
      f"tensor 'output.weight' has shape {classifier}")
  table = common.conv_bn_table(modules, names, lambda module: common.torch_conv)
  table += [common.Entry("params/classifier/kernel", "output.weight", common.torch_linear),
            common.Entry("params/classifier/bias", "output.bias")]
  return common.assemble("pytorchcv", tensors, table, model_name=model_name,
                         model_options=model_options,
                         preprocessing=common.preprocessing("imagenet", "rgb",
                                                            common.DEFAULT_IMAGE_SIZE))
