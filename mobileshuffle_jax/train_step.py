"""The train step: one definition, used by training and by the benchmark.

`make_train_step` is the normalization of the batch's uint8 pixels, forward, backward, the
optimizer update, the BN statistics and EMA updates and the step's metrics, as one function
of (state, batch, rng); `jit_train_step`
compiles it over a 'data' mesh with the state replicated and donated. Nothing here reads
data, so importing it imports no TensorFlow.

With a teacher (knowledge distillation, `distill.py`) the step is a function of (state,
batch, rng, teacher_variables): the teacher's variables are an argument, replicated and
not donated, so they are never trained and never part of the state that checkpoints
save. Without one the step is exactly the one above.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mobileshuffle_jax import model_config, optim, parallel, predict, preprocessing, timing


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


def distillation_loss(student_logits, teacher_logits, labels, *, alpha: float,
                      temperature: float, label_smoothing: float = 0.0):
  """Per-example alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
  + (1 - alpha) * cross-entropy against the labels, in float32.

  T^2 keeps the soft term's gradient, T * (softmax(student / T) - softmax(teacher / T)),
  on the scale of the hard term's as T grows (Hinton et al. 2015). The KL is the
  cross-entropy against the teacher's probabilities less their entropy, which does not
  depend on the student: the same gradient, and zero when the student matches.
  """
  student_logits = student_logits.astype(jnp.float32)
  teacher_log_probs = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
  student_log_probs = jax.nn.log_softmax(student_logits / temperature)
  kl = jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), -1)
  hard = cross_entropy(student_logits, labels, label_smoothing)
  return alpha * temperature ** 2 * kl + (1 - alpha) * hard


def make_train_step(model, tx, schedule, config, teacher: predict.Predictor | None = None):
  """The step of (state, batch, rng); with a `teacher` (its model and recorded
  preprocessing; `config.distill` gives alpha and T), of (state, batch, rng,
  teacher_variables), trained on `distillation_loss`."""

  def update(state: TrainState, batch, rng, per_example_loss):
    step_rng = jax.random.fold_in(rng, state.step)

    # Batches cross to the devices as uint8 pixels, a quarter of float32's bytes.
    images = preprocessing.normalize(batch["images"], config.data.normalization)

    def loss_fn(params):
      logits, updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True,
          mutable=["batch_stats"], rngs={"dropout": step_rng})
      loss = jnp.mean(per_example_loss(logits))
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

  def train_step(state: TrainState, batch, rng):
    return update(state, batch, rng, lambda logits: cross_entropy(
        logits, batch["labels"], config.label_smoothing))

  def distill_step(state: TrainState, batch, rng, teacher_variables):
    # The teacher in inference mode, on the same uint8 pixels with its own normalization.
    teacher_logits = jax.lax.stop_gradient(predict.preprocess_and_apply(
        teacher.model, teacher_variables, batch["images"],
        teacher.preprocessing["normalization"]))
    new_state, metrics = update(state, batch, rng, lambda logits: distillation_loss(
        logits, teacher_logits, batch["labels"], alpha=config.distill.alpha,
        temperature=config.distill.temperature, label_smoothing=config.label_smoothing))
    # A teacher fed the wrong pixels would teach noise: its accuracy shows it.
    metrics["teacher_top1"] = jnp.mean(jnp.argmax(teacher_logits, -1) == batch["labels"])
    return new_state, metrics

  return train_step if teacher is None else distill_step


def jit_train_step(model, tx, schedule, config, mesh, teacher: predict.Predictor | None = None):
  """The train step over `mesh`: state replicated and donated, batch split on 'data'; the
  teacher's variables (with a `teacher`) replicated and not donated."""
  replicated = parallel.replicated(mesh)
  in_shardings = (replicated, parallel.batch_sharded(mesh), replicated)
  if teacher is not None:
    in_shardings += (replicated,)
  return jax.jit(make_train_step(model, tx, schedule, config, teacher),
                 in_shardings=in_shardings, out_shardings=(replicated, replicated),
                 donate_argnums=(0,))


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
                                           model.input_channels), jnp.uint8),
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
