"""Helpers shared by the sweep definitions."""

from __future__ import annotations

from typing import Any

import ml_collections

from configs import default

# Steps of every demo cell: about 9 epochs of the 1,437 training digits at batch 64.
DEMO_TRAIN_STEPS = 200


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """{dotted field: value} of every leaf of `config`."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def digits_recipe(base: ml_collections.ConfigDict) -> list[tuple[str, Any]]:
  """The overrides that give `base` configs/default.py's digits recipe (data, optimizer,
  schedule, durations) while keeping its model and model options.

  Read from configs/default.py itself, so that a demo cell of either family trains exactly
  as `make train` does; only the fields that differ are listed, which keeps the printed
  train.py commands short.
  """
  recipe = flatten(default.get_config())
  ours = flatten(base)
  return [(path, value) for path, value in recipe.items()
          if path != "model" and not path.startswith("model_options.")
          and ours.get(path) != value]


def demo_overrides(num_train_steps: int = DEMO_TRAIN_STEPS) -> list[tuple[str, Any]]:
  """A demo cell's duration: short, with one intermediate evaluation and checkpoint."""
  return [("num_train_steps", num_train_steps),
          ("eval_every_steps", num_train_steps // 2),
          ("checkpoint_every_steps", num_train_steps // 2),
          ("log_every_steps", num_train_steps // 4)]
