"""`fast.ShuffleUnit` computes what XLA:CPU would otherwise compute twice only once.

Its results and variables are the paper unit's: tests/test_layers.py holds both to the
same float64 reference, and tests/test_fast.py whole models.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobileshuffle_jax import fast
from mobileshuffle_jax.models import common


def test_shuffle_units_compute_each_residual_sum_once():
  """In a stack of stride-1 units, no fused loop adds the residuals of two units: left to
  itself XLA:CPU recomputes each unit's output inside the next one's."""
  conv, norm = common.conv_and_norm(fast.Conv, fast.BatchNorm, train=False,
                                    dtype=jnp.float32, bn_momentum=0.9, bn_epsilon=1e-3)
  unit = functools.partial(fast.ShuffleUnit, 24, 1, 3, conv=conv, norm=norm)

  class Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
      for index in range(3):
        x = unit(name=f"unit{index}")(x)
      return x

  x = jax.ShapeDtypeStruct((2, 8, 8, 24), jnp.float32)
  variables = jax.eval_shape(Stack().init, jax.random.key(0), x)
  compiled = jax.jit(Stack().apply).lower(variables, x).compile().as_text()
  fused = [body for body in compiled.split("\n\n") if not body.startswith("ENTRY")]
  units_added = [set(re.findall(r'op_name="[^"]*/(unit\d)/add"', body)) for body in fused]
  assert {"unit0", "unit1", "unit2"} <= set().union(*units_added)
  assert max(len(units) for units in units_added) == 1
