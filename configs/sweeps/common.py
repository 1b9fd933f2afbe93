"""Helpers shared by the sweep definitions."""

from __future__ import annotations

from typing import Any

import ml_collections

from configs import default
from mobileshuffle_jax.sweep import flatten

# Steps of every demo run: about 9 epochs of the 1,437 training digits at batch 64.
DEMO_TRAIN_STEPS = 200
# Seeds of every demo cell: at 200 steps two runs of one cell differ by several points of
# top-1, which only a mean over seeds and its confidence interval can put in proportion.
DEMO_SEEDS = (0, 1, 2)


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
  """A demo run's duration: short, one evaluation at the end, a checkpoint half-way (for an
  interrupted demo to resume from), and no loop-efficiency timing (minutes over a demo)."""
  return [("num_train_steps", num_train_steps),
          ("eval_every_steps", num_train_steps),
          ("checkpoint_every_steps", num_train_steps // 2),
          ("log_every_steps", num_train_steps // 4),
          ("loop_efficiency_steps", 0)]
