"""Orbax checkpoints of a workdir: layout, identity checks and fingerprints.

A workdir holds `config.json` (the resolved config of the run) and `checkpoints/<step>/`
with four items:

  variables  {'params', 'batch_stats'[, 'ema_params']}: all that inference needs
  opt_state  the optax state (absent in imported checkpoints)
  meta       JSON: step, model name and options, parameter shapes, preprocessing,
             `params_sha256` of the variables evaluation uses
  config     JSON: the resolved config

The last `keep` checkpoints are kept, plus the best by validation top-1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

import flax.traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = "checkpoints"
CONFIG_FILE = "config.json"


def params_sha256(variables: dict[str, Any]) -> str:
  """A fingerprint of parameters: SHA-256 over sorted paths, dtypes, shapes and bytes."""
  digest = hashlib.sha256()
  flat = flax.traverse_util.flatten_dict(jax.device_get(variables), sep="/")
  for path in sorted(flat):
    value = np.ascontiguousarray(flat[path])
    digest.update(f"{path}:{value.dtype.str}:{value.shape};".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def param_shapes(params) -> dict[str, list[int]]:
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  return {path: list(leaf.shape) for path, leaf in sorted(flat.items())}


def check_same_model(saved_meta: dict, model_name: str, shapes: dict[str, list[int]],
                     where: str) -> None:
  """Refuse, with a clear message, a checkpoint of another architecture."""
  saved_shapes = saved_meta.get("param_shapes", {})
  if saved_meta.get("model") == model_name and saved_shapes == shapes:
    return
  mismatch = next((p for p in sorted(set(saved_shapes) | set(shapes))
                   if saved_shapes.get(p) != shapes.get(p)), None)
  raise ValueError(
      f"{where} holds a checkpoint of a different model: it has {saved_meta.get('model')} "
      f"{saved_meta.get('model_options')}, the config asks for {model_name}; first "
      f"differing tensor {mismatch!r}: saved {saved_shapes.get(mismatch)}, config "
      f"{shapes.get(mismatch)}. Use another --workdir (nothing was changed here).")


class CheckpointStore:
  """An orbax CheckpointManager over `workdir/checkpoints` with this project's items."""

  def __init__(self, workdir: str, *, keep: int = 2, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=keep),
        ocp.checkpoint_managers.BestN(get_metric_fn=lambda metrics: metrics["top1"], n=1,
                                      keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def saved_step(self, step: int | None = None) -> int:
    """`step`, or the latest one when None; ValueError unless it is saved here."""
    steps = self.all_steps()
    if not steps:
      raise ValueError(f"{self.directory} holds no checkpoint")
    step = max(steps) if step is None else step
    if step not in steps:
      raise ValueError(f"step {step} is not saved in {self.directory}; saved steps: "
                       f"{sorted(steps)}")
    return step

  def save(self, step: int, *, variables, opt_state, meta: dict, config_json: dict,
           metrics: dict | None = None) -> None:
    items = dict(variables=ocp.args.StandardSave(variables),
                 meta=ocp.args.JsonSave(meta), config=ocp.args.JsonSave(config_json))
    if opt_state is not None:
      items["opt_state"] = ocp.args.StandardSave(opt_state)
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, *, abstract_variables, abstract_opt_state=None):
    """Variables (and the optimizer state if an abstract one is given) at `step`."""
    items = dict(variables=ocp.args.StandardRestore(abstract_variables))
    if abstract_opt_state is not None:
      items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["variables"], restored.get("opt_state") if abstract_opt_state else None

  def restore_as_saved(self, step: int) -> dict:
    """The `variables` item at `step` with the structure it was saved with, on one local
    device, whatever the devices and hosts that saved it (e.g. a pod run, read on one GPU)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return self.manager.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(fallback_sharding=device)))["variables"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def write_config_json(workdir: str, config_json: dict) -> None:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(config_json, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def evaluation_variables(variables_item: dict) -> dict:
  """The variables evaluation uses: the weight EMA when the checkpoint has one."""
  return {"params": variables_item.get("ema_params", variables_item["params"]),
          "batch_stats": variables_item["batch_stats"]}


def preprocessing_of(data_config) -> dict:
  """What a user of the checkpoint must do to an RGB 0..255 image before the model."""
  return {"image_size": data_config.image_size, "normalization": data_config.normalization,
          "eval_crop_ratio": data_config.eval_crop_ratio, "channel_order": "rgb"}


def write_converted(out_dir: str, converted) -> None:
  """Write an imported checkpoint (`convert.Converted`) as a workdir eval.py can run.

  Everything is written into a sibling temporary directory that is renamed into place
  at the end, so a failure leaves no partial `out_dir`; an existing non-empty `out_dir`
  is refused rather than mixed with.
  """
  from mobileshuffle_jax import input_pipeline  # pylint: disable=g-import-not-at-top

  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise ValueError(f"--out {out_dir} exists and is not empty; choose a new directory")
  preprocessing = dict(converted.preprocessing)
  if preprocessing.get("channel_order", "rgb") != "rgb":
    raise ValueError(f"{converted.source}: checkpoints of this package read RGB images; "
                     f"got channel_order={preprocessing['channel_order']!r}")
  data = input_pipeline.default_data_config()
  data.image_size = preprocessing["image_size"]
  data.normalization = preprocessing["normalization"]
  data.eval_crop_ratio = preprocessing["eval_crop_ratio"]
  config_json = {"model": converted.model_name,
                 "model_options": dict(converted.model_options),
                 "lowering": "auto", "compute_dtype": "float32", "ema_decay": 0.0,
                 "eval_batch_size": 256, "data": data.to_dict(),
                 "imported_from": converted.source}
  variables = jax.tree.map(np.asarray, converted.variables)
  meta = {"step": 0, "model": converted.model_name,
          "model_options": dict(converted.model_options),
          "param_shapes": param_shapes(variables["params"]),
          "params_sha256": params_sha256(evaluation_variables(variables)),
          "has_ema": False, "dataset": "imported:" + converted.source,
          "preprocessing": preprocessing}
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".partial-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would keep a shared checkpoint private
  try:
    store = CheckpointStore(staging, keep=1, async_save=False)
    store.save(0, variables=variables, opt_state=None, meta=meta, config_json=config_json)
    store.wait()
    store.close()
    write_config_json(staging, config_json)
    if os.path.exists(out_dir):
      os.rmdir(out_dir)  # empty, checked above
    os.rename(staging, out_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
