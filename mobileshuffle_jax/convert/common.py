"""What every converter shares: the result type, the source tensors, the layout transforms
and the assembly of a table into model variables checked against the model's own shapes.

A converter reads a file into `{source name: array}` (`SourceTensors`), infers the model
options from a few shapes, lists `Entry(our path, source name, transform)` rows and calls
`assemble`, which takes every row's tensor, transforms it and compares it with the shape
`models.build(...).init` gives that path. Missing, unused and misshapen tensors are
`ConversionError`s that name the tensor.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from typing import Any, Callable, Iterable, Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from mobileshuffle_jax import models
from mobileshuffle_jax.models import mobilenet_v1, shufflenet_v1

# The smallest input both models take (output stride 32); shapes do not depend on it.
INIT_RESOLUTION = 32
# Every public release is evaluated on a centre crop of 224 / 256 of the resized image.
EVAL_CROP_RATIO = 0.875
# Resolutions the published MobileNet file names carry ("..._224_tf.h5", "..._0.5_160.ckpt").
PUBLISHED_RESOLUTIONS = (128, 160, 192, 224)
DEFAULT_IMAGE_SIZE = 224
# How many names an error message lists before it says "and N more".
LISTED_NAMES = 5


class ConversionError(ValueError):
  """A file that cannot be converted: wrong kind, wrong options, or a tensor that is
  missing, unexpected or of the wrong shape (the message names it)."""


@dataclasses.dataclass(frozen=True)
class Converted:
  """A converted network: `models.build(model_name, **model_options).apply(variables, x)`
  reproduces the source network on images prepared as `preprocessing` says.

  `preprocessing`: `normalization` ('imagenet' | 'minus_one_one' | 'none', applied to
  0..255 pixels), `channel_order` ('rgb' | 'bgr'), `image_size` and `eval_crop_ratio`.
  `initialized` names the variables the file does not hold (a Keras file without its
  classifier), set by the model's own initializer instead. `notes` are what the converter
  changed beyond layouts (TF-slim's dropped background class), for the user to see.
  """

  model_name: str
  model_options: dict[str, Any]
  variables: dict[str, Any]
  preprocessing: dict[str, Any]
  source: str
  initialized: tuple[str, ...] = ()
  notes: tuple[str, ...] = ()


def identity(x: np.ndarray) -> np.ndarray:
  return x


@dataclasses.dataclass(frozen=True)
class Entry:
  """One row of a conversion table: our variable `path` ('params/stem/conv/kernel') is
  `transform(source tensor)`."""

  path: str
  source: str
  transform: Callable[[np.ndarray], np.ndarray] = identity


# Layout transforms, each from a source layout to flax's.
def tf_depthwise(kernel: np.ndarray) -> np.ndarray:
  """TF/Keras depthwise kernel (kh, kw, C, 1) -> flax (kh, kw, 1, C)."""
  return kernel.transpose(0, 1, 3, 2)


def torch_conv(weight: np.ndarray) -> np.ndarray:
  """PyTorch conv weight (O, I/groups, kh, kw) -> flax (kh, kw, I/groups, O)."""
  return weight.transpose(2, 3, 1, 0)


def torch_linear(weight: np.ndarray) -> np.ndarray:
  """PyTorch Linear weight (O, I) -> flax Dense kernel (I, O)."""
  return weight.T


def conv1x1_as_dense(kernel: np.ndarray) -> np.ndarray:
  """A 1x1 conv classifier (1, 1, I, O) -> Dense kernel (I, O); other shapes pass through
  for `assemble` to report."""
  return kernel.reshape(kernel.shape[2:]) if kernel.shape[:2] == (1, 1) else kernel


def tf_kernel(module: str) -> Callable[[np.ndarray], np.ndarray]:
  """The kernel transform of our MobileNet ConvBN `module` from TF/Keras layout."""
  return tf_depthwise if module.endswith("depthwise") else identity


def then(first: Callable, second: Callable) -> Callable[[np.ndarray], np.ndarray]:
  """The transform `second(first(x))`."""
  return lambda x: second(first(x))


def listed(names: Iterable[str]) -> str:
  names = sorted(names)
  shown = ", ".join(repr(n) for n in names[:LISTED_NAMES])
  return shown + (f" and {len(names) - LISTED_NAMES} more" if len(names) > LISTED_NAMES else "")


def conv_bn_table(modules: Iterable[str],
                  source_names: Callable[[str], tuple[str, tuple[str, str, str, str]]],
                  transform: Callable[[str], Callable[[np.ndarray], np.ndarray]]) -> list[Entry]:
  """Rows of our ConvBN `modules`.

  `source_names(module)` gives the source's (conv kernel, (BN scale, bias, mean, variance))
  names and `transform(module)` the kernel's layout transform.
  """
  table = []
  for module in modules:
    kernel, (scale, bias, mean, var) = source_names(module)
    table.append(Entry(f"params/{module}/conv/kernel", kernel, transform(module)))
    table += [Entry(f"params/{module}/bn/scale", scale),
              Entry(f"params/{module}/bn/bias", bias),
              Entry(f"batch_stats/{module}/bn/mean", mean),
              Entry(f"batch_stats/{module}/bn/var", var)]
  return table


def mobilenet_modules() -> list[str]:
  """Our ConvBN modules of the paper's MobileNet v1, in network order."""
  return ["stem"] + [f"block{i}/{kind}" for i in range(1, len(mobilenet_v1.BLOCKS) + 1)
                     for kind in ("depthwise", "pointwise")]


def shufflenet_modules(model_options: dict[str, Any]) -> list[str]:
  """Our ConvBN modules of the ShuffleNet v1 that `model_options` builds, in network order."""
  model = models.build("shufflenet_v1", **model_options)
  return ["stem"] + [f"{name}/{kind}" for name, *_ in model.unit_specs()
                     for kind in ("compress", "depthwise", "expand")]


class SourceTensors:
  """The tensors of one file by name, remembering which the table used.

  `ignore` marks bookkeeping tensors (PyTorch's `num_batches_tracked`) as expected;
  whatever is neither used nor ignored is an error in `assemble`.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray], description: str):
    self.arrays = dict(arrays)
    self.description = description
    self.used: set[str] = set()

  def __contains__(self, name: str) -> bool:
    return name in self.arrays

  def names(self) -> list[str]:
    return list(self.arrays)

  def shape(self, name: str) -> tuple[int, ...]:
    """The shape of a tensor the converter reads to infer options (must exist)."""
    if name not in self.arrays:
      raise ConversionError(f"{self.description}: missing tensor {name!r}")
    return tuple(np.shape(self.arrays[name]))

  def ignore(self, names: Iterable[str]) -> None:
    self.used.update(names)

  def unused(self) -> list[str]:
    return [name for name in self.arrays if name not in self.used]


def check_option(name: str, given: Any, found: Any, evidence: str) -> Any:
  """The option value: `found` in the file, unless the caller gave one that contradicts it."""
  if given is not None and given != found:
    raise ConversionError(f"{name}={given!r} does not match the file: {evidence}, "
                          f"i.e. {name}={found!r}")
  return found


def mobilenet_alpha(alpha: float | None, stem_channels: int, evidence: str,
                    min_depth: int) -> float:
  """Width multiplier of a MobileNet whose stem has `stem_channels` filters.

  A given alpha is kept when it gives that stem (0.35 and 11/32 both give 11 filters).
  """
  found = stem_channels / mobilenet_v1.STEM_FILTERS
  if alpha is not None and mobilenet_v1.scaled_channels(
      mobilenet_v1.STEM_FILTERS, alpha, min_depth) == stem_channels:
    found = alpha
  return check_option("alpha", alpha, found, evidence)


def shufflenet_options(tensors: SourceTensors, *, stem: str, first_compress: str,
                       first_expand: str, groups: int | None,
                       scale: float | None) -> dict[str, Any]:
  """groups, scale and conv1_channels of a PyTorch ShuffleNet v1, from the stem conv and
  the first unit's two 1x1 convs (weights (O, I/groups, 1, 1)), checked against the
  given ones."""
  conv1 = tensors.shape(stem)[0]
  bottleneck = tensors.shape(first_compress)[0]
  expand = tensors.shape(first_expand)
  evidence = f"tensor {first_expand!r} has shape {expand} over {bottleneck} channels"
  found_groups = bottleneck // expand[1] if expand[1] else 0
  if found_groups not in shufflenet_v1.GROUPS:
    raise ConversionError(f"{tensors.description}: {evidence}, i.e. groups={found_groups}; "
                          f"the model supports {shufflenet_v1.GROUPS}")
  groups = check_option("groups", groups, found_groups, evidence)
  # The first unit concatenates Conv1's output with its branch: Stage 2 has both.
  stage2 = conv1 + expand[0]
  evidence = f"Stage 2 has {conv1} + {expand[0]} = {stage2} channels ({stem!r}, {first_expand!r})"
  found_scale = stage2 / shufflenet_v1.STAGE_CHANNELS[groups][0]
  if scale is not None and shufflenet_v1.stage_channels(groups, scale)[0] == stage2:
    found_scale = scale
  scale = check_option("scale", scale, found_scale, evidence)
  return dict(groups=groups, scale=scale, conv1_channels=conv1)


def image_size_from_name(path: str, image_size: int | None) -> int:
  """`image_size` if given, else the resolution a published file name ends with, else 224."""
  if image_size is not None:
    return image_size
  found = re.findall(r"_(\d+)(?=[_.]|$)", os.path.basename(os.path.normpath(path)))
  sizes = [int(size) for size in found if int(size) in PUBLISHED_RESOLUTIONS]
  return sizes[-1] if sizes else DEFAULT_IMAGE_SIZE


def preprocessing(normalization: str, channel_order: str, image_size: int) -> dict[str, Any]:
  return dict(normalization=normalization, channel_order=channel_order,
              image_size=image_size, eval_crop_ratio=EVAL_CROP_RATIO)


def require_readable_file(path: str) -> None:
  """Refuse a path that cannot be opened as a file (missing, a directory, no permission)
  before a reader turns it into its own exception (h5py's, torch's)."""
  try:
    with open(path, "rb"):
      pass
  except OSError as error:
    raise ConversionError(f"cannot read {path}: {error.strerror or error}") from error


def read_torch_state_dict(path: str, description: str) -> dict[str, np.ndarray]:
  """A PyTorch state dict as numpy: a bare one or under 'state_dict', and without the
  `module.` prefix (nn.DataParallel) on every key."""
  import torch  # only the PyTorch sources need it

  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
    raise ConversionError(f"{path} is not a PyTorch state dict ({error})") from error
  if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
    state = state["state_dict"]
  if not (isinstance(state, dict) and state
          and all(isinstance(value, torch.Tensor) for value in state.values())):
    raise ConversionError(f"{path} is not a PyTorch state dict of {description}")
  prefix = "module."
  if all(name.startswith(prefix) for name in state):
    state = {name.removeprefix(prefix): value for name, value in state.items()}
  return {name: value.detach().cpu().numpy() for name, value in state.items()}


def expected_shapes(model_name: str, model_options: dict[str, Any]) -> dict[str, tuple]:
  """{'params/...': shape} of `models.build(...).init`, traced without computing anything."""
  model = models.build(model_name, **model_options)
  images = jax.ShapeDtypeStruct((1, INIT_RESOLUTION, INIT_RESOLUTION,
                                 model.input_channels), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  return {path: tuple(leaf.shape)
          for path, leaf in flax.traverse_util.flatten_dict(shapes, sep="/").items()}


def initial_values(model_name: str, model_options: dict[str, Any], paths: Iterable[str],
                   seed: int) -> dict[str, np.ndarray]:
  """The model initializer's values for `paths` (variables a file does not hold).

  Under jit, XLA drops the forward pass `init` traces, since only these outputs are kept.
  """
  model = models.build(model_name, **model_options)
  images = jnp.zeros((1, INIT_RESOLUTION, INIT_RESOLUTION, model.input_channels))
  paths = list(paths)

  @jax.jit
  def init(key):
    flat = flax.traverse_util.flatten_dict(model.init(key, images, train=False), sep="/")
    return [flat[path] for path in paths]

  return {path: np.asarray(value, np.float32)
          for path, value in zip(paths, init(jax.random.key(seed)))}


def assemble(source: str, tensors: SourceTensors, table: list[Entry], *, model_name: str,
             model_options: dict[str, Any], preprocessing: dict[str, Any],
             initialize: tuple[str, ...] = (), seed: int = 0,
             notes: tuple[str, ...] = ()) -> Converted:
  """Variables from `table` rows, checked tensor by tensor against the model's shapes.

  `initialize`: our paths the file has no tensor for, taken from the model's initializer
  with `seed`. `notes` go to `Converted.notes`.
  """
  missing = [entry.source for entry in table if entry.source not in tensors]
  if missing:
    raise ConversionError(f"{tensors.description}: missing tensor(s) {listed(missing)}")
  tensors.ignore(entry.source for entry in table)
  if tensors.unused():
    raise ConversionError(f"{tensors.description}: unexpected tensor(s) "
                          f"{listed(tensors.unused())}; is this the right source and model?")

  expected = expected_shapes(model_name, model_options)
  # The table must cover the model exactly; a difference is a bug in the converter's table.
  stray = {entry.path for entry in table} - set(expected)
  uncovered = set(expected) - {entry.path for entry in table} - set(initialize)
  if stray or uncovered:
    raise AssertionError(f"{source} table: paths not in the model {listed(stray)}; "
                         f"model paths not set {listed(uncovered)}")
  flat = {}
  for entry in table:
    raw = np.asarray(tensors.arrays[entry.source])
    value = np.ascontiguousarray(entry.transform(raw), dtype=np.float32)
    if value.shape != expected[entry.path]:
      raise ConversionError(
          f"{tensors.description}: tensor {entry.source!r} has shape {raw.shape}, which gives "
          f"{entry.path} the shape {value.shape}; {model_name} with {model_options} needs "
          f"{expected[entry.path]}")
    flat[entry.path] = value
  if initialize:
    flat.update(initial_values(model_name, model_options, initialize, seed))
  return Converted(model_name=model_name, model_options=dict(model_options),
                   variables=flax.traverse_util.unflatten_dict(flat, sep="/"),
                   preprocessing=preprocessing, source=source, initialized=tuple(initialize),
                   notes=tuple(notes))
