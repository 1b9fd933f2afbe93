"""The model a config describes."""

from __future__ import annotations

import jax.numpy as jnp

from mobileshuffle_jax import models

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config, num_classes: int, **overrides):
  """`config.model` with `config.model_options` (and `overrides`, e.g. a BN grouping that
  depends on the device count); an invalid option raises ValueError naming it."""
  options = {**config.model_options, **overrides, "num_classes": num_classes}
  return models.build(config.model, lowering=config.get("lowering", "auto"),
                      dtype=COMPUTE_DTYPES[config.get("compute_dtype", "float32")], **options)
