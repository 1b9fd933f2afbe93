"""The train step: one definition, used by training and by the benchmark.

`make_train_step` is forward, backward, the optimizer update, the BN statistics and EMA
updates and the step's metrics, as one function of (state, batch, rng); `jit_train_step`
compiles it over a 'data' mesh with the state replicated and donated. Nothing here reads
data, so importing it imports no TensorFlow.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mobileshuffle_jax import model_config, optim, parallel, timing


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any  # None when config.ema_decay == 0

  def variables_item(self) -> dict:
    """What a checkpoint's `variables` item holds."""
    item = {"params": self.params, "batch_stats": self.batch_stats}
    if self.ema_params is not None:
      item["ema_params"] = self.ema_params
    return item


def bn_group_size(config) -> int | None:
  """Examples per BatchNorm statistics group in training (None: the whole global batch)."""
  if config.bn_group_size == -1:
    return None
  if config.bn_group_size == 0:
    return config.global_batch_size // jax.device_count()
  if config.global_batch_size % (config.bn_group_size * jax.device_count()):
    raise ValueError(f"config.bn_group_size={config.bn_group_size} must divide the per-device "
                     f"batch {config.global_batch_size // jax.device_count()}")
  return config.bn_group_size


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy against integer labels."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def make_init_fn(model, tx, config):
  image_shape = (1, config.data.image_size, config.data.image_size, model.input_channels)

  def init(rng):
    variables = model.init({"params": rng}, jnp.zeros(image_shape, jnp.float32), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                      ema_params=params if config.ema_decay > 0 else None)
  return init


def make_train_step(model, tx, schedule, config):
  def train_step(state: TrainState, batch, rng):
    step_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      logits, updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, batch["images"], train=True,
          mutable=["batch_stats"], rngs={"dropout": step_rng})
      loss = jnp.mean(cross_entropy(logits, batch["labels"], config.label_smoothing))
      return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
      decay = optim.ema_decay_at(state.step, config.ema_decay)
      ema_params = optax.incremental_update(params, ema_params, step_size=1.0 - decay)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updated = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state,
                            ema_params=ema_params)
    # A non-finite step changes nothing but the counter: NaNs never reach the state, so
    # no checkpoint can hold them; the host stops the run when it sees `finite == 0`.
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    metrics = {
        "loss": loss,
        "top1": jnp.mean(jnp.argmax(logits, -1) == batch["labels"]),
        "grad_norm": grad_norm,
        "learning_rate": schedule(state.step),
        "finite": finite.astype(jnp.float32),
    }
    return new_state.replace(step=state.step + 1), metrics
  return train_step


def jit_train_step(model, tx, schedule, config, mesh):
  """The train step over `mesh`: state replicated and donated, batch split on 'data'."""
  replicated = parallel.replicated(mesh)
  return jax.jit(make_train_step(model, tx, schedule, config),
                 in_shardings=(replicated, parallel.batch_sharded(mesh), replicated),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def lower_train_step(config, num_classes: int, mesh=None) -> jax.stages.Lowered:
  """The train step of `config` lowered for one global batch (no data, nothing run).

  For inspecting what a step computes and communicates (`parallel.collectives`).
  """
  mesh = mesh or parallel.create_mesh()
  model = model_config.build_model(config, num_classes, bn_group_size=bn_group_size(config))
  schedule = optim.learning_rate_schedule(config, steps_per_epoch=1.0, total_steps=100)
  tx = optim.create_optimizer(config, schedule)
  abstract_state = jax.eval_shape(make_init_fn(model, tx, config), jax.random.key(0))
  size = config.data.image_size
  batch = {"images": jax.ShapeDtypeStruct((config.global_batch_size, size, size,
                                           model.input_channels), jnp.float32),
           "labels": jax.ShapeDtypeStruct((config.global_batch_size,), jnp.int32)}
  return jit_train_step(model, tx, schedule, config, mesh).lower(
      abstract_state, batch, jax.random.key(0))


def bare_step_images_per_second(step_fn, state: TrainState, batch, rng, steps: int) -> float:
  """Images/s of `steps` calls of the compiled `step_fn` back to back on one batch already
  on the devices, with nothing else: what the train loop around it is measured against.

  Runs on a copy of `state` (the step donates its input), so the run's state is untouched.
  """
  state = jax.tree.map(jnp.copy, state)

  def run_steps():
    nonlocal state
    for _ in range(steps):
      state, _ = step_fn(state, batch, rng)
    jax.block_until_ready(state)

  # The step is compiled and warm: the loop has just run it.
  return steps * batch["labels"].shape[0] / timing.measure(run_steps, 1, warmup=0).wall_s
