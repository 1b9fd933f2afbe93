"""The train step: mixed precision keeps every stored number and the loss in float32."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from mobileshuffle_jax import model_config, optim, train_step


def test_bfloat16_compute_keeps_parameters_statistics_optimizer_state_and_loss_float32():
  config = default.get_config()
  config.model = "shufflenet_v1"
  config.model_options = {"groups": 2, "scale": 0.25, "variant": "shallow"}
  config.compute_dtype = "bfloat16"
  config.ema_decay = 0.9
  config.data.image_size = 32
  model = model_config.build_model(config, num_classes=5)
  assert model.dtype == jnp.bfloat16
  schedule = optim.learning_rate_schedule(config, steps_per_epoch=10.0, total_steps=20)
  tx = optim.create_optimizer(config, schedule)
  state = jax.jit(train_step.make_init_fn(model, tx, config))(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {"images": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
           "labels": np.arange(4, dtype=np.int32) % 5}
  step = jax.jit(train_step.make_train_step(model, tx, schedule, config))
  for _ in range(2):
    before = state.batch_stats
    state, metrics = step(state, batch, jax.random.key(1))
  stored = {"params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state, "ema_params": state.ema_params}
  dtypes = {str(leaf.dtype) for leaf in jax.tree.leaves(stored)
            if jnp.issubdtype(leaf.dtype, jnp.floating)}
  assert dtypes == {"float32"}
  assert metrics["loss"].dtype == jnp.float32 and bool(jnp.isfinite(metrics["loss"]))
  # The statistics really were updated from bfloat16 activations.
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                      jax.tree.leaves(state.batch_stats)))
