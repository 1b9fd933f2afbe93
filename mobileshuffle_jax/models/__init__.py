"""Model registry: `build(name, lowering="auto", **options)` returns a Linen module.

    model = build("shufflenet_v1", groups=3, scale=0.5)
    model = build("mobilenet_v1", lowering="fast")  # see mobileshuffle_jax.lowering
    variables = model.init(jax.random.key(0), images, train=False)
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": key})
"""

from __future__ import annotations

import flax.linen as nn

from mobileshuffle_jax import lowering as conv_lowerings
from mobileshuffle_jax.models.mobilenet_v1 import MobileNetV1
from mobileshuffle_jax.models.shufflenet_v1 import ShuffleNetV1

MODELS = {
    "mobilenet_v1": MobileNetV1,
    "shufflenet_v1": ShuffleNetV1,
}


def build(name: str, lowering: str = "auto", **options) -> nn.Module:
  """The model `name` with `options` (the module's fields, e.g. alpha=0.5, groups=8).

  `lowering` names how its convolutions are computed ('auto', 'xla' or 'fast', see
  `lowering.conv_lowering`); it only sets the `conv_lowering` field, so an explicit
  `conv_lowering=` option (a callable, or None for XLA's own) wins over it.
  """
  if name not in MODELS:
    raise ValueError(f"model={name!r} is not supported; allowed values: "
                     f"{', '.join(repr(m) for m in MODELS)}")
  cls = MODELS[name]
  allowed = sorted(f for f in cls.__dataclass_fields__ if f not in ("parent", "name"))
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f"{name} has no option {', '.join(map(repr, unknown))}; allowed "
                     f"options: {', '.join(allowed)}")
  if "conv_lowering" not in options:
    options["conv_lowering"] = conv_lowerings.conv_lowering(lowering)
  return cls(**options)
