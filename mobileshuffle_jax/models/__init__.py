"""Model registry: `build(name, lowering="auto", **options)` returns a Linen module.

    model = build("shufflenet_v1", groups=3, scale=0.5)
    model = build("mobilenet_v1", lowering="fast")  # see mobileshuffle_jax.fast
    variables = model.init(jax.random.key(0), images, train=False)
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": key})

The models are the papers' (`mobilenet_v1.py`, `shufflenet_v1.py`, `layers.py`); a
lowering only chooses the factories they are built from, never their variables.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax

from mobileshuffle_jax import fast, layers
from mobileshuffle_jax.models.mobilenet_v1 import MobileNetV1
from mobileshuffle_jax.models.shufflenet_v1 import ShuffleNetV1

MODELS = {
    "mobilenet_v1": MobileNetV1,
    "shufflenet_v1": ShuffleNetV1,
}
LOWERINGS = ("auto", "xla", "fast")


@dataclasses.dataclass(frozen=True)
class Factories:
  """What a lowering injects into a model: its conv, norm and (ShuffleNet) unit modules,
  (ShuffleNet) pooling function and how inference runs a batch."""

  conv: Any
  norm: Any
  unit: Any
  pool: Any
  batching: Any


FACTORIES = {
    "xla": Factories(conv=nn.Conv, norm=layers.BatchNorm, unit=layers.ShuffleUnit,
                     pool=layers.pool, batching=layers.whole_batch),
    "fast": Factories(conv=fast.Conv, norm=fast.BatchNorm, unit=fast.ShuffleUnit,
                      pool=fast.pool, batching=fast.InCacheChunks()),
}


def resolve_lowering(name: str, backend: str) -> str:
  """The concrete lowering ('xla' or 'fast') that `name` means on `backend` ('cpu', ...)."""
  check_lowering(name)
  return fast.AUTO.get(backend, fast.AUTO_DEFAULT) if name == "auto" else name


def check_lowering(name: str) -> None:
  if name not in LOWERINGS:
    raise ValueError(f"lowering={name!r} is not supported; allowed values: "
                     f"{', '.join(repr(n) for n in LOWERINGS)}")


def _decided_when_traced(part: str):
  """The 'auto' factory of `part`: the default backend's choice, made when the model is
  traced, so that building a model never initializes JAX's backends."""
  def factory(*args, **kwargs):
    lowering = resolve_lowering("auto", jax.default_backend())
    return getattr(FACTORIES[lowering], part)(*args, **kwargs)
  factory.__qualname__ = factory.__name__ = f"auto_{part}"
  return factory


FACTORIES["auto"] = Factories(**{part.name: _decided_when_traced(part.name)
                                 for part in dataclasses.fields(Factories)})


def factories(model_class: type[nn.Module], lowering: str) -> dict[str, Any]:
  """The fields of `model_class` that `lowering` sets (conv, norm, batching, and unit and
  pool where it has them)."""
  check_lowering(lowering)
  # Not `dataclasses.asdict`: it would turn a factory that is a dataclass into a dict.
  chosen = FACTORIES[lowering]
  return {part.name: getattr(chosen, part.name) for part in dataclasses.fields(chosen)
          if part.name in model_class.__dataclass_fields__}


def with_lowering(model: nn.Module, lowering: str) -> nn.Module:
  """`model` with the factories of `lowering`: the same variables, computed another way."""
  return model.clone(**factories(type(model), lowering))


def build(name: str, lowering: str = "auto", **options) -> nn.Module:
  """The model `name` with `options` (the module's fields, e.g. alpha=0.5, groups=8).

  `lowering` ('auto', 'xla' or 'fast'; see `mobileshuffle_jax.fast`) sets the `conv`,
  `norm`, `unit`, `pool` and `batching` factory fields; a factory given explicitly in
  `options` wins.
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
  return cls(**{**factories(cls, lowering), **options})
