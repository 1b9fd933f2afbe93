"""Training: `train_and_evaluate(config, workdir)`, importable and driven by train.py.

One jit-compiled step over a 'data' mesh: state replicated, batch sharded, state buffers
donated. The same code runs on one CPU or on every device of every host.
"""

from __future__ import annotations

import itertools
import logging
import math
import signal
import sys
import threading
import time

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from mobileshuffle_jax import (allocator, checkpointing, data, distill, evaluation,
                               model_config, models, optim, parallel, progress, workdir_lock)
from mobileshuffle_jax.train_step import (TrainState, bare_step_images_per_second,
                                          bn_group_size, jit_train_step, make_init_fn)

log = logging.getLogger("mobileshuffle_jax")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Clear errors for config values that would fail later or silently misbehave."""
  def require(condition: bool, field: str, allowed: str) -> None:
    if not condition:
      raise ValueError(f"config.{field}={config[field]!r} is invalid: {allowed}")

  require((config.num_train_steps > 0) != (config.num_epochs > 0), "num_train_steps",
          "give exactly one of num_train_steps and num_epochs (the other -1)")
  require(config.learning_rate > 0, "learning_rate", "must be > 0")
  require(config.base_batch_size > 0, "base_batch_size", "must be > 0")
  require(config.weight_decay >= 0, "weight_decay", "must be >= 0")
  require(0 <= config.ema_decay < 1, "ema_decay", "must be in [0, 1)")
  require(0 <= config.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
  require(config.grad_clip_norm >= 0, "grad_clip_norm", "must be >= 0 (0 turns it off)")
  require(config.compute_dtype in model_config.COMPUTE_DTYPES, "compute_dtype",
          f"allowed values: {', '.join(model_config.COMPUTE_DTYPES)}")
  for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                "keep_checkpoints"):
    require(config[field] > 0, field, "must be a positive integer")
  require(config.bn_group_size >= -1, "bn_group_size",
          "0 per device, -1 the whole global batch, or a positive group size")
  require(config.model in models.MODELS, "model",
          f"allowed values: {', '.join(models.MODELS)}")
  parallel.check_batch_size("global_batch_size", config.global_batch_size)
  require(config.eval_batch_size > 0, "eval_batch_size", "must be > 0")
  require(config.loop_efficiency_steps >= 0, "loop_efficiency_steps", "must be >= 0 (0: off)")
  distill.check_config(config.distill)


def train_duration(config, num_train_examples: int) -> tuple[int, float]:
  """(total steps, steps per epoch) from num_train_steps or num_epochs."""
  steps_per_epoch = num_train_examples / config.global_batch_size
  if config.num_train_steps > 0:
    return int(config.num_train_steps), steps_per_epoch
  return int(math.ceil(config.num_epochs * steps_per_epoch)), steps_per_epoch


def saved_state(state: TrainState) -> dict:
  """Everything a checkpoint holds of `state` (variables and optimizer state), on the host:
  what `train_state_sha256` fingerprints."""
  return jax.device_get({"variables": state.variables_item(), "opt_state": state.opt_state})


def checkpoint_meta(config, model, state: TrainState, data_info,
                    teacher_record: dict | None = None) -> dict:
  host = saved_state(state)
  meta = {
      "step": int(state.step),
      "model": config.model,
      "model_options": {**dict(config.model_options), "num_classes": model.num_classes},
      "param_shapes": checkpointing.param_shapes(state.params),
      "params_sha256": checkpointing.params_sha256(
          checkpointing.evaluation_variables(host["variables"])),
      # Resuming restores the optimizer state too: a corruption there must not pass.
      "train_state_sha256": checkpointing.tree_sha256(host),
      "has_ema": state.ema_params is not None,
      "dataset": data_info.name,
      "class_names": list(data_info.class_names),
      "preprocessing": checkpointing.preprocessing_of(config.data),
  }
  if teacher_record is not None:
    meta["distill_teacher"] = teacher_record  # which teacher, never its tensors
  return meta


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train per `config` in `workdir` (resuming from its last checkpoint); final eval metrics.

  A run that stops early on SIGTERM, a preemption notice or Ctrl-C saves a checkpoint and
  returns {'preempted_at_step': step, 'signal': name}. Only one run at a time may train
  into a workdir (`workdir_lock`).
  """
  validate_config(config)
  lock = workdir_lock.WorkdirLock(workdir)
  refusal = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except workdir_lock.WorkdirInUseError as error:
      refusal = error
  if jax.process_count() > 1:  # every process stops if process 0 could not take the lock
    parallel.barrier("workdir lock")  # the broadcast is a collective: start it together
    refused = multihost_utils.broadcast_one_to_all(np.int32(refusal is not None))
    if refused and refusal is None:
      refusal = workdir_lock.WorkdirInUseError(f"{workdir} is in use by another training run")
  if refusal is not None:
    raise refusal
  try:
    return _train_and_evaluate(config, workdir)
  finally:
    lock.release()


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  data_info = data.prepare(config.data)
  model = model_config.build_model(config, data_info.num_classes,
                                   bn_group_size=bn_group_size(config))
  total_steps, steps_per_epoch = train_duration(config, data_info.num_train_examples)
  schedule = optim.learning_rate_schedule(config, steps_per_epoch, total_steps)
  tx = optim.create_optimizer(config, schedule)

  mesh = parallel.create_mesh()
  allocator.announce()
  replicated = parallel.replicated(mesh)
  init = make_init_fn(model, tx, config)
  rng = jax.random.key(config.seed)
  abstract_state = jax.eval_shape(init, rng)

  store = checkpointing.CheckpointStore(workdir, keep=config.keep_checkpoints,
                                        async_save=config.async_checkpointing)
  config_json = config.to_dict()
  start_step = store.latest_step()
  teacher, teacher_record = None, None
  if config.distill.teacher and (start_step or 0) < total_steps:  # refused before any work
    teacher = distill.load_teacher(config.distill.teacher, data_info, config.data.image_size)
    teacher_record = distill.teacher_record(config.distill.teacher, teacher)
    log.info("Distilling from %s (step %d, %s, normalization %s) at %d px: alpha %g, "
             "temperature %g.", config.distill.teacher, teacher.step, teacher.config.model,
             teacher.preprocessing["normalization"], config.data.image_size,
             config.distill.alpha, config.distill.temperature)
  if start_step is not None:
    meta = store.restore_meta(start_step)
    checkpointing.check_same_model(meta, config.model,
                                   checkpointing.param_shapes(abstract_state.params), workdir)
    if teacher_record is not None:
      distill.warn_if_other_teacher(meta, teacher_record, workdir)
    state = restore_train_state(store, start_step, abstract_state, replicated)
    verify_restored_state(state, meta, store.step_path(start_step))
    log.info("Resumed from %s at step %d.", store.directory, start_step)
  else:
    start_step = 0
    state = jax.jit(init, out_shardings=replicated)(rng)
    if config.init_from:
      state = initialize_from(state, config.init_from, config.init_from_drop_classifier,
                              replicated)
  is_chief = jax.process_index() == 0

  def evaluate_now():
    return evaluation.evaluate(model, checkpointing.evaluation_variables(state.variables_item()),
                               config.data, config.eval_batch_size, mesh)

  if start_step >= total_steps:
    # A finished run: report its result, and leave its config as the run that made it.
    log.info("%s already holds step %d of %d: nothing to train; evaluating it.", workdir,
             start_step, total_steps)
    store.close()
    return evaluate_now()
  if is_chief:
    checkpointing.write_config_json(workdir, config_json)

  batches = data.train_batches(config.data, global_batch_size=config.global_batch_size,
                               start_step=start_step, mesh=mesh)
  first_batch = next(batches)
  batches = itertools.chain([first_batch], batches)
  step_rng = jax.random.fold_in(rng, 1)
  jitted_step = jit_train_step(model, tx, schedule, config, mesh, teacher)
  if teacher is None:
    train_step = parallel.compiled_on_every_process(jitted_step, state, first_batch, step_rng)
  else:
    # An argument of every call, replicated once: compiled as an input, not a constant.
    teacher_variables = jax.device_put(teacher.variables, replicated)
    compiled_step = parallel.compiled_on_every_process(jitted_step, state, first_batch,
                                                       step_rng, teacher_variables)

    def train_step(state, batch, rng):
      return compiled_step(state, batch, rng, teacher_variables)
  writer = progress.MetricWriter(workdir, start_step, enabled=is_chief)
  reporter = progress.StepReporter(total_steps, steps_per_epoch, config.global_batch_size,
                                   start_step, enabled=is_chief)
  preemption = PreemptionWatch()
  pending_metrics = []  # of the steps since the last summary
  unlogged = None  # (step, its steps' metrics): a summary read once the next step is queued
  eval_metrics: dict = {}
  loop_start = None  # after the first step, whose buffers are new

  def log_summary(step, step_metrics):
    summary = summarize(step_metrics, step)
    writer.write(step, {f"train/{k}": v for k, v in summary.items()})
    reporter.report(step, summary)
    store.check_for_errors()  # a failed background save stops the run here

  try:
    for step in range(start_step + 1, total_steps + 1):
      state, metrics = train_step(state, next(batches), step_rng)
      if unlogged is not None:
        # Read one step late: the device has this step queued while the host waits for the
        # metrics and writes them, so logging never leaves it idle.
        log_summary(*unlogged)
        unlogged = None
      pending_metrics.append(metrics)
      if loop_start is None:
        jax.block_until_ready(state)
        loop_start = time.perf_counter()
      preempted = preemption.reached(step)
      is_last = step == total_steps or preempted
      eval_now = step % config.eval_every_steps == 0 or (is_last and not preempted)
      save_now = step % config.checkpoint_every_steps == 0 or is_last or eval_now
      if step % config.log_every_steps == 0 or is_last:
        unlogged = (step, pending_metrics)
        pending_metrics = []
      if unlogged is not None and (is_last or save_now):
        log_summary(*unlogged)  # never save state from steps whose loss was not checked
        unlogged = None
      eval_metrics = {}
      if eval_now:
        eval_metrics = evaluate_now()
        writer.write(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
        reporter.report_eval(step, eval_metrics)
      if save_now:
        if pending_metrics:  # never save state from steps whose loss was not checked
          summarize(pending_metrics, step)
        store.save(step, variables=state.variables_item(), opt_state=state.opt_state,
                   meta=checkpoint_meta(config, model, state, data_info, teacher_record),
                   config_json=config_json,
                   metrics={"top1": eval_metrics["top1"]} if eval_metrics else None)
      if preempted:
        store.wait()
        log.info("Stopped by %s: saved step %d to %s; rerun the same command to resume.",
                 preemption.signal_name, step, store.directory)
        return {"preempted_at_step": step, "signal": preemption.signal_name}
    timed_steps = total_steps - start_step - 1
    if config.loop_efficiency_steps > 0 and timed_steps > 0:
      jax.block_until_ready(state)
      loop = timed_steps * config.global_batch_size / (time.perf_counter() - loop_start)
      bare = bare_step_images_per_second(train_step, state, next(batches), step_rng,
                                         config.loop_efficiency_steps)
      reporter.report_loop_efficiency(loop, bare, timed_steps)
    return eval_metrics or evaluate_now()
  finally:
    preemption.close()
    already_failing = sys.exc_info()[0] is not None
    try:
      store.wait()
    except checkpointing.CheckpointSaveError:
      if not already_failing:
        raise  # else the error in flight says more than the save it cut short
    store.close()
    writer.close()


def verify_restored_state(state: TrainState, meta: dict, where: str) -> None:
  """CorruptCheckpointError unless the restored state matches the fingerprints saved
  with it (checkpoints written before `train_state_sha256` have only `params_sha256`)."""
  host = saved_state(state)
  step = int(state.step)
  checkpointing.verify_fingerprint(
      "params_sha256", checkpointing.evaluation_variables(host["variables"]), meta, step=step,
      where=where)
  if "train_state_sha256" in meta:
    checkpointing.verify_fingerprint("train_state_sha256", host, meta, step=step, where=where)


def summarize(step_metrics: list[dict], step: int) -> dict:
  """Mean of the steps' metrics; stops the run on a non-finite loss."""
  host = jax.device_get(step_metrics)
  finite = np.array([m["finite"] for m in host])
  if not finite.all():
    bad = step - len(host) + 1 + int(np.argmin(finite))
    raise FloatingPointError(
        f"non-finite loss or gradient at step {bad}: training stopped. The parameters "
        f"of that step were not applied and no checkpoint after the last good one was "
        f"written; lower config.learning_rate or set config.grad_clip_norm.")
  return {k: float(np.mean([m[k] for m in host])) for k in host[0] if k != "finite"}


def restore_train_state(store, step: int, abstract_state: TrainState, sharding) -> TrainState:
  on_devices = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
  variables, opt_state = store.restore(
      step, abstract_variables=on_devices(abstract_state.variables_item()),
      abstract_opt_state=on_devices(abstract_state.opt_state))
  return TrainState(step=jnp.asarray(step, jnp.int32), params=variables["params"],
                    batch_stats=variables["batch_stats"], opt_state=opt_state,
                    ema_params=variables.get("ema_params"))


class PreemptionWatch:
  """Whether to stop at a step, saving a checkpoint, because the job is being preempted or
  the user pressed Ctrl-C.

  One process: SIGTERM or a first Ctrl-C (SIGINT) sets a flag and the run stops after the
  step in flight; a second Ctrl-C interrupts at once. Several processes: JAX's preemption
  sync service (started by `jax.distributed.initialize`, which also catches SIGTERM) makes
  every process stop at the same step.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self._multi_process = jax.process_count() > 1
    self.signal_name: str | None = None
    self._previous_handlers = {}
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

  def _on_signal(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      if self.signal_name == "SIGINT":  # the second Ctrl-C: stop now, save nothing more
        raise KeyboardInterrupt
      log.info("Ctrl-C: saving a checkpoint after this step (press again to stop at once).")
    self.signal_name = signal.Signals(signum).name

  def reached(self, step: int) -> bool:
    if self._multi_process:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = "SIGTERM"
        return True
      return False
    return self.signal_name is not None

  def close(self) -> None:
    for signum, handler in self._previous_handlers.items():
      signal.signal(signum, handler)
    self._previous_handlers = {}


def initialize_from(state: TrainState, directory: str, drop_classifier: bool,
                    sharding) -> TrainState:
  """`state` with the parameters and BN statistics of `directory`'s latest checkpoint.

  Every tensor must match by name and shape, except the classifier when
  `drop_classifier` (fine-tuning to a new number of classes keeps a fresh one).
  """
  try:
    restored = checkpointing.restore_for_inference(directory)
  except checkpointing.CorruptCheckpointError:
    raise  # its message names the checkpoint
  except ValueError as error:
    raise ValueError(f"config.init_from={directory!r}: {error}") from error
  loaded, step = restored.variables, restored.step
  ours = {"params": state.params, "batch_stats": state.batch_stats}
  loaded_flat = flax.traverse_util.flatten_dict(loaded, sep="/")
  merged = {}
  for path, fresh in flax.traverse_util.flatten_dict(ours, sep="/").items():
    if drop_classifier and "/classifier/" in f"/{path}":
      merged[path] = fresh
    elif path not in loaded_flat:
      raise ValueError(f"config.init_from={directory!r} has no tensor {path!r}")
    elif tuple(loaded_flat[path].shape) != tuple(fresh.shape):
      hint = (" (a new number of classes? set config.init_from_drop_classifier=True)"
              if "classifier" in path else "")
      raise ValueError(f"config.init_from={directory!r}: tensor {path!r} has shape "
                       f"{tuple(loaded_flat[path].shape)}, the model needs "
                       f"{tuple(fresh.shape)}{hint}")
    else:
      merged[path] = jax.device_put(np.asarray(loaded_flat[path], fresh.dtype), sharding)
  merged = flax.traverse_util.unflatten_dict(merged, sep="/")
  log.info("Initialized from %s (step %d)%s.", directory, step,
           ", classifier dropped" if drop_classifier else "")
  return state.replace(params=merged["params"], batch_stats=merged["batch_stats"],
                       ema_params=None if state.ema_params is None else merged["params"])
