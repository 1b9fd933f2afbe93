"""One checkpoint's evaluation variables as a single safetensors file, and back.

Tensors are named by their variable path ('params/stem/conv/kernel',
'batch_stats/stem/bn/mean', ...), so any safetensors reader (PyTorch, numpy, ...) reads
them. The string metadata holds `format`, `format_version`, and the record that rebuilds
and identifies the model: `model`, `model_options` (JSON), `preprocessing` (JSON),
`params_sha256`, `step`, `class_names` (JSON) and the run's `config` (JSON).
"""

from __future__ import annotations

import json
from typing import Any

import flax.traverse_util
import numpy as np

from mobileshuffle_jax import staging

FORMAT = "mobileshuffle_jax.safetensors"
FORMAT_VERSION = 1
# Metadata entries that hold JSON rather than a plain string.
JSON_METADATA = ("model_options", "preprocessing", "config", "class_names")
# Metadata entries `read` needs, besides format and format_version; files written before
# class names were recorded lack `class_names` and read back with none.
REQUIRED_METADATA = ("model", "params_sha256", "step", "model_options", "preprocessing",
                     "config")


def write(path: str, variables: dict[str, Any], record: dict[str, Any]) -> None:
  """`variables` (host arrays) and `record` (the metadata entries above) to `path`,
  through a temporary file renamed at the end."""
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top

  tensors = {name: np.ascontiguousarray(value) for name, value in
             flax.traverse_util.flatten_dict(variables, sep="/").items()}
  metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
  for key, value in record.items():
    metadata[key] = json.dumps(value, sort_keys=True) if key in JSON_METADATA else str(value)
  # Written by us rather than `save_file`, whose files are private (0600) whatever the umask.
  with staging.staged_file(path) as staged, open(staged, "wb") as f:
    f.write(safetensors_numpy.save(tensors, metadata=metadata))


def read(path: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  """(variables, checkpoint-style metadata, config JSON) of a file `write` wrote.

  The metadata has the keys of a checkpoint's `meta` item that `predict.load` reads:
  model, model_options, preprocessing, params_sha256, step, class_names. The caller
  verifies the fingerprint.
  """
  import safetensors  # pylint: disable=g-import-not-at-top

  try:
    with safetensors.safe_open(path, framework="numpy") as reader:
      metadata = reader.metadata() or {}
      flat = {name: reader.get_tensor(name) for name in reader.keys()}
  except (safetensors.SafetensorError, OSError) as error:
    raise ValueError(
        f"{path} is not a safetensors file ({error}). A --format jax export is run with "
        "jax.export.deserialize (see mobileshuffle_jax.export), not loaded") from error
  if metadata.get("format") != FORMAT:
    raise ValueError(f"{path} is a safetensors file, but not one written by "
                     f"mobileshuffle_jax.export: its metadata has no format={FORMAT!r}")
  if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
    raise ValueError(f"{path} has format_version {metadata['format_version']}; this version "
                     f"of mobileshuffle_jax reads up to {FORMAT_VERSION}: upgrade it")
  missing = [key for key in REQUIRED_METADATA if key not in metadata]
  if missing:
    raise ValueError(f"{path}: metadata {', '.join(missing)} missing")
  variables = flax.traverse_util.unflatten_dict(flat, sep="/")
  if set(variables) != {"params", "batch_stats"}:
    raise ValueError(f"{path} holds the collections {sorted(variables)}; expected "
                     "'batch_stats' and 'params'")
  try:
    meta = {key: json.loads(metadata[key]) if key in JSON_METADATA else metadata[key]
            for key in (*REQUIRED_METADATA, "class_names") if key in metadata}
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: metadata that is not valid JSON ({error})") from error
  config_json = meta.pop("config")
  meta["step"] = int(meta["step"])
  return variables, meta, config_json
