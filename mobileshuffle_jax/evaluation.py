"""Evaluation: masked, sharded metric sums so every example counts exactly once.

`evaluate_checkpoint(workdir, config=None, step=None)` restores any saved step (the
latest by default), refuses it if its parameters do not match their recorded fingerprint,
and returns top-1, top-5, loss, the example count, the step and that fingerprint; eval.py
prints it as one JSON line.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import ml_collections
import tqdm

from mobileshuffle_jax import allocator, checkpointing, data, model_config, parallel
from mobileshuffle_jax.predict import preprocess_and_apply
from mobileshuffle_jax.train_step import cross_entropy


@functools.partial(jax.jit, static_argnums=(0, 3))
def _metric_sums(model, variables, batch, normalization: str):
  logits = preprocess_and_apply(model, variables, batch["images"], normalization)
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
  batches = data.eval_batches(data_config, global_batch_size=eval_batch_size, mesh=mesh)
  # A progress bar only on a terminal: in a log file it is noise that shares lines.
  show_progress = jax.process_index() == 0 and sys.stderr.isatty()
  metric_sums = None
  for batch in tqdm.tqdm(batches, desc="eval", leave=False, unit="batch",
                         disable=not show_progress):
    if metric_sums is None:  # every batch has the same shape: the last one is padded
      metric_sums = parallel.compiled_on_every_process(
          _metric_sums, model, variables, batch, data_config.normalization)
    batch_sums = metric_sums(variables, batch)
    sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
  if sums is None:
    raise ValueError(f"the eval split {data_config.eval_split!r} of {data_config.name!r} "
                     "is empty")
  sums = jax.device_get(sums)
  count = float(sums["num_examples"])
  return {"top1": float(sums["top1"]) / count, "top5": float(sums["top5"]) / count,
          "loss": float(sums["loss"]) / count, "num_examples": int(round(count))}


def evaluate_checkpoint(workdir: str, config: ml_collections.ConfigDict | None = None,
                        step: int | None = None) -> dict:
  """Restore `step` (default: the latest) of `workdir`, verified against its fingerprint
  (CorruptCheckpointError, a ValueError, otherwise), and evaluate it."""
  config = config if config is not None else checkpointing.read_config_json(workdir)
  restored = checkpointing.restore_for_inference(workdir, step)
  meta = restored.meta
  model = model_config.build_model(config, meta["model_options"]["num_classes"])
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(
          (1, config.data.image_size, config.data.image_size, model.input_channels)),
          train=False))
  checkpointing.check_same_model(meta, config.model,
                                 checkpointing.param_shapes(abstract["params"]), workdir)
  mesh = parallel.create_mesh()
  allocator.announce()
  variables = jax.device_put(restored.variables, parallel.replicated(mesh))
  data.prepare(config.data)
  metrics = evaluate(model, variables, config.data, config.eval_batch_size, mesh)
  return {**metrics, "step": restored.step, "params_sha256": meta["params_sha256"],
          "params_sha256_verified": True}
