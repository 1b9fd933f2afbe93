"""Orbax checkpoints of a workdir: layout, identity checks and fingerprints.

A workdir holds `config.json` (the resolved config of the run) and `checkpoints/<step>/`
with four items:

  variables  {'params', 'batch_stats'[, 'ema_params']}: all that inference needs
  opt_state  the optax state (absent in imported checkpoints)
  meta       JSON: step, model name and options, parameter shapes, preprocessing,
             `params_sha256` of the variables evaluation uses
  config     JSON: the resolved config

The last `keep` checkpoints are kept, plus the best by validation top-1.

Every reader verifies what it restores against the fingerprints in `meta` and refuses a
mismatch (`CorruptCheckpointError`); a save that fails raises `CheckpointSaveError` naming
the path and the operating system's error, leaving the checkpoints saved before it whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from typing import Any, Iterator

import flax.traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp

from mobileshuffle_jax import data_defaults, staging

CHECKPOINT_SUBDIR = "checkpoints"
CONFIG_FILE = "config.json"
# How often a reader starts over when a training run deletes the checkpoint it was reading.
READ_ATTEMPTS = 5

log = logging.getLogger("mobileshuffle_jax")


class CorruptCheckpointError(ValueError):
  """Restored tensors whose fingerprint differs from the one recorded when they were saved."""


class CheckpointSaveError(OSError):
  """A checkpoint that could not be written (read-only or full file system, ...)."""


def _sha256(named_arrays) -> str:
  """SHA-256 over (name, array) pairs, in the order given: names, dtypes, shapes, bytes."""
  digest = hashlib.sha256()
  for name, array in named_arrays:
    value = np.ascontiguousarray(array)
    digest.update(f"{name}:{value.dtype.str}:{value.shape};".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def params_sha256(variables: dict[str, Any]) -> str:
  """A fingerprint of parameters: SHA-256 over sorted paths, dtypes, shapes and bytes."""
  flat = flax.traverse_util.flatten_dict(jax.device_get(variables), sep="/")
  return _sha256((path, flat[path]) for path in sorted(flat))


def tree_sha256(tree) -> str:
  """A fingerprint of any pytree of arrays (an optimizer state): SHA-256 over its key
  paths, dtypes, shapes and bytes, in flattening order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
  return _sha256((jax.tree_util.keystr(path), leaf) for path, leaf in leaves)


def verify_fingerprint(name: str, tensors, meta: dict, *, step: int, where: str) -> str:
  """`tensors`' fingerprint, after checking it against `meta[name]` (CorruptCheckpointError):
  `params_sha256` of evaluation variables, or `tree_sha256` of any other state.

  `where`: the file or directory the tensors were read from, for the message.
  """
  fingerprint = (params_sha256 if name == "params_sha256" else tree_sha256)(tensors)
  recorded = meta.get(name)
  if fingerprint != recorded:
    raise CorruptCheckpointError(
        f"step {step} in {where} is corrupted: its tensors have {name} {fingerprint}, the "
        f"metadata recorded {recorded} when they were saved. Nothing was restored; use "
        f"an intact copy or another step")
  return fingerprint


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
        enable_async_checkpointing=async_save, save_interval_steps=0 if read_only else 1,
        # A writer removes what a failed or killed save left half written.
        cleanup_tmp_directories=not read_only)
    with _quiet_absl_warnings():  # orbax warns that a read-only manager is read-only
      self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._unfinished_save: int | None = None

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

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
    # Orbax reports an asynchronous save's failure at the next call: name that save.
    with self._reporting_save_errors(self._unfinished_save or step):
      self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    self._unfinished_save = step

  def check_for_errors(self) -> None:
    """CheckpointSaveError if a save running in the background has failed."""
    if self._unfinished_save is not None:
      with self._reporting_save_errors(self._unfinished_save):
        self.manager.check_for_errors()

  @contextlib.contextmanager
  def _reporting_save_errors(self, step: int) -> Iterator[None]:
    try:
      yield
    except Exception as error:  # pylint: disable=broad-except
      saved = [s for s in self.all_steps() if s != step]
      raise CheckpointSaveError(
          f"could not save step {step} to {self.directory}: {_failure_of(error)}. The "
          f"checkpoints saved before it are intact (latest: "
          f"{max(saved) if saved else 'none'}); fix the file system and rerun the same "
          f"command to resume") from error

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
    """Until the save in flight is on disk; CheckpointSaveError if it failed."""
    if self._unfinished_save is not None:
      with self._reporting_save_errors(self._unfinished_save):
        self.manager.wait_until_finished()
      self._unfinished_save = None

  def close(self) -> None:
    self.manager.close()


def _failure_of(error: BaseException) -> str:
  """The operating system's error behind a failed save, as 'reason: path' where it can be
  found: an OSError in `error`'s causes, or TensorStore's '[os_error_code=N]' message."""
  chain = []
  seen = error
  while seen is not None and seen not in chain:
    chain.append(seen)
    seen = seen.__cause__ or seen.__context__
  for cause in chain:
    if isinstance(cause, OSError) and cause.strerror:
      return f"{cause.strerror}: {cause.filename}" if cause.filename else cause.strerror
  for cause in chain:
    found = re.search(r'Failed writing: "([^"]+)".*: ([^:\[]+?) \[os_error_code', str(cause))
    if found:
      return f"{found.group(2)}: {found.group(1)}"
  text = str(chain[-1]).strip()
  return text.splitlines()[0] if text else type(chain[-1]).__name__


@contextlib.contextmanager
def _quiet_absl_warnings() -> Iterator[None]:
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    absl_logger.setLevel(level)


@dataclasses.dataclass(frozen=True)
class RestoredCheckpoint:
  """One checkpoint read for inference: its step, metadata, evaluation variables (host
  arrays) and directory."""

  step: int
  meta: dict
  variables: dict
  path: str


def restore_for_inference(workdir: str, step: int | None = None) -> RestoredCheckpoint:
  """The evaluation variables of `step` (default: the latest) of `workdir`, on one local
  device whatever the topology that saved them, verified against their fingerprint.

  The one restore path of evaluation, `load`, export and `init_from`. A training run
  beside the reader may delete the checkpoint it chose (it keeps the last K): the latest
  is then chosen again; a `step` asked for by number is refused once it is gone.
  Raises ValueError (CorruptCheckpointError for a fingerprint mismatch).
  """
  for attempt in range(READ_ATTEMPTS):
    store = CheckpointStore(workdir, read_only=True)
    chosen = None
    try:
      chosen = store.saved_step(step)
      meta = store.restore_meta(chosen)
      variables = evaluation_variables(jax.device_get(store.restore_as_saved(chosen)))
    except Exception as error:  # pylint: disable=broad-except
      if chosen is None or os.path.isdir(store.step_path(chosen)):
        raise  # not a deletion: the checkpoint is there and could not be read
      if step is not None:
        raise ValueError(f"step {step} of {workdir} was deleted while it was being read "
                         "(the training run keeps only its last checkpoints)") from error
      log.info("Checkpoint step %d of %s was deleted while being read; reading the latest "
               "again (attempt %d).", chosen, workdir, attempt + 2)
      time.sleep(0.1 * (attempt + 1))
      continue
    finally:
      store.close()
    path = store.step_path(chosen)
    verify_fingerprint("params_sha256", variables, meta, step=chosen, where=path)
    return RestoredCheckpoint(step=chosen, meta=meta, variables=variables, path=path)
  raise ValueError(f"{workdir}: its checkpoints kept being deleted while being read "
                   f"({READ_ATTEMPTS} attempts); read a finished run or raise its "
                   "keep_checkpoints")


def read_config_json(workdir: str):
  """The run's resolved config (`workdir/config.json`) as a ConfigDict; ValueError naming
  the file when it is missing or not JSON."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isdir(workdir):
    raise ValueError(f"{workdir} is not a directory written by train.py or convert")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except FileNotFoundError:
    raise ValueError(f"{workdir} has no {CONFIG_FILE}: pass --config, or point at a "
                     "directory written by train.py or convert") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise ValueError(f"{path} is not valid JSON ({error}): restore it from a copy, or "
                     "pass --config") from error


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
  at the end (`staging.staged_directory`), so a failure leaves no partial `out_dir`; an
  existing non-empty `out_dir` is refused rather than mixed with.
  """
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise ValueError(f"--out {out_dir} exists and is not empty; choose a new directory")
  preprocessing = dict(converted.preprocessing)
  if preprocessing.get("channel_order", "rgb") != "rgb":
    raise ValueError(f"{converted.source}: checkpoints of this package read RGB images; "
                     f"got channel_order={preprocessing['channel_order']!r}")
  data = data_defaults.default_data_config()
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
  os.makedirs(os.path.dirname(out_dir), exist_ok=True)
  with staging.staged_directory(out_dir) as staged:
    store = CheckpointStore(staged, keep=1, async_save=False)
    store.save(0, variables=variables, opt_state=None, meta=meta, config_json=config_json)
    store.wait()
    store.close()
    write_config_json(staged, config_json)
