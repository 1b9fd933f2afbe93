"""Evaluation: masked, sharded metric sums so every example counts exactly once.

`evaluate_checkpoint(workdir, config=None, step=None)` restores any saved step (the
latest by default) and returns top-1, top-5, loss, the example count, the step and the
fingerprint of the evaluated parameters; eval.py prints it as one JSON line.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax
import tqdm

from mobileshuffle_jax import checkpointing, input_pipeline, model_config, parallel

log = logging.getLogger("mobileshuffle_jax")


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy against integer labels."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


@functools.partial(jax.jit, static_argnums=0)
def _metric_sums(model, variables, batch):
  logits = model.apply(variables, batch["images"], train=False).astype(jnp.float32)
  labels, mask = batch["labels"], batch["mask"]
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  return {
      "loss": jnp.sum(cross_entropy(logits, labels) * mask),
      "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
      "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
      "num_examples": jnp.sum(mask),
  }


def evaluate(model, variables, data_config, eval_batch_size: int, mesh) -> dict:
  """Metrics of `variables` on the eval split; padded examples are masked out."""
  sums = None
  # Any batch size works: it is rounded up to a multiple of the device count, and the
  # padding is masked out like that of the last batch.
  eval_batch_size = -(-eval_batch_size // jax.device_count()) * jax.device_count()
  batches = input_pipeline.eval_batches(
      data_config, global_batch_size=eval_batch_size, process_index=jax.process_index(),
      process_count=jax.process_count())
  for local_batch in tqdm.tqdm(batches, desc="eval", leave=False, unit="batch",
                               disable=jax.process_index() != 0):
    batch_sums = _metric_sums(model, variables, parallel.global_batch(local_batch, mesh))
    sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
  if sums is None:
    raise ValueError(f"the eval split {data_config.eval_split!r} of {data_config.name!r} "
                     "is empty")
  sums = jax.device_get(sums)
  count = float(sums["num_examples"])
  return {"top1": float(sums["top1"]) / count, "top5": float(sums["top5"]) / count,
          "loss": float(sums["loss"]) / count, "num_examples": int(round(count))}


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, checkpointing.CONFIG_FILE)
  if not os.path.exists(path):
    raise ValueError(f"{workdir} has no {checkpointing.CONFIG_FILE}: pass --config, or "
                     "point --workdir at a directory written by train.py or convert")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def evaluate_checkpoint(workdir: str, config: ml_collections.ConfigDict | None = None,
                        step: int | None = None) -> dict:
  """Restore `step` (default: the latest) from `workdir` and evaluate it."""
  config = config if config is not None else load_workdir_config(workdir)
  store = checkpointing.CheckpointStore(workdir, read_only=True)
  try:
    step = store.saved_step(step)
    meta = store.restore_meta(step)
    model = model_config.build_model(config, meta["model_options"]["num_classes"])
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(
            (1, config.data.image_size, config.data.image_size, model.input_channels)),
            train=False))
    checkpointing.check_same_model(meta, config.model,
                                   checkpointing.param_shapes(abstract["params"]), workdir)
    mesh = parallel.create_mesh()
    sharding = parallel.replicated(mesh)
    abstract_item = {"params": abstract["params"], "batch_stats": abstract["batch_stats"]}
    if meta.get("has_ema", config.get("ema_decay", 0.0) > 0):
      abstract_item["ema_params"] = abstract["params"]
    abstract_item = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_item)
    variables_item, _ = store.restore(step, abstract_variables=abstract_item)
  finally:
    store.close()
  variables = checkpointing.evaluation_variables(variables_item)
  fingerprint = checkpointing.params_sha256(variables)
  if fingerprint != meta.get("params_sha256"):
    log.error("params_sha256 %s does not match the checkpoint metadata's %s: the "
                  "checkpoint was modified after it was written", fingerprint,
                  meta.get("params_sha256"))
  input_pipeline.prepare(config.data)
  metrics = evaluate(model, variables, config.data, config.eval_batch_size, mesh)
  return {**metrics, "step": step, "params_sha256": fingerprint,
          "params_sha256_verified": fingerprint == meta.get("params_sha256")}
