r"""Ablation sweeps: a grid or a list of training runs ("cells"), each run once per seed.

A sweep definition is a Python file (see configs/sweeps/) whose `get_sweep()` returns a
ConfigDict with:

  config        the base training config as train.py's --config takes it, 'path[:argument]'
  overrides     optional [(dotted config field, value), ...] applied to every cell
  axes          [(dotted config field, values[, label]), ...]: one cell per combination,
                named 'label=value,label=value' (label: the field's last component), or
  cells         [{'name', 'overrides'[, 'config']}, ...]: cells listed one by one, each
                with its own overrides (pairs as above) and optionally its own config
  seeds         optional [int, ...] (default [0]): every cell trains once per seed, which
                sets both `seed` (initialization) and `data.seed` (example order and
                augmentation); the report gives each cell's mean and confidence interval
  name          optional (default: the file's name without .py)
  description   optional one line: what the sweep reproduces, for the report's heading
  paper_tables  optional: the papers' tables whose printed rows the report sets beside
                ours when a cell's model matches several ('6', '7', ...)

Overrides are (field, value) pairs rather than a dict because a ConfigDict refuses dotted
keys. A cell's overrides come after the sweep's, so they win; the seed fields belong to
`seeds` alone.

  python -m mobileshuffle_jax.sweep configs/sweeps/mobilenet_width_resolution.py \
      --workdir ROOT [--only NAME ...] [--seeds 0,1,2] [--print-commands] \
      [--config.FIELD=VALUE ...]

Each run (a cell at one seed) trains in ROOT/<cell name>/seed=<seed> through
`training.train_and_evaluate`, so an interrupted run resumes from its last checkpoint when
the sweep is run again. A run is finished when its workdir holds `result.json`, written
atomically once training has returned, for the same resolved config, and the checkpoint of
the final step it names still exists; finished runs are skipped. Runs go seed by seed
(every cell at the first seed, then every cell at the next), so that a sweep stopped
half-way has whole tables. `--seeds` replaces the definition's seeds (more seeds later
add runs; finished ones stay). `--config.FIELD=VALUE` flags override every run exactly as
they would train.py's config (e.g. `--config.data.manual_dir=DIR`).
`--print-commands` prints instead one train.py command per run, for a cluster.
ROOT/sweep.json records the sweep's cells and seeds for `mobileshuffle_jax.report`.
The seeds of a cell compile the same programs, so the sweep keeps JAX's persistent
compilation cache in ROOT/.jax_cache (unless JAX_COMPILATION_CACHE_DIR names another):
the later seeds skip compiling.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import shlex
import sys
import time
from typing import Any, Sequence

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from mobileshuffle_jax import checkpointing, runtime

log = logging.getLogger("mobileshuffle_jax")

RESULT_FILE = "result.json"
SWEEP_FILE = "sweep.json"
# What a run's seed sets: the initialization, and the example order and augmentation.
SEED_FIELDS = ("seed", "data.seed")
SEED_DIRECTORY_PREFIX = "seed="  # a run's workdir: ROOT/<cell name>/seed=<seed>
COMPILATION_CACHE = ".jax_cache"  # in ROOT, unless JAX_COMPILATION_CACHE_DIR names another


class Preempted(Exception):
  """Training stopped early on a preemption signal, its checkpoint saved: stop the sweep."""


@dataclasses.dataclass(frozen=True)
class Cell:
  """One training run of a sweep: a base config plus field overrides."""
  name: str
  config: str  # 'path[:argument]', as train.py's --config
  overrides: dict[str, Any]  # dotted field -> value, applied in order


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  description: str
  paper_tables: tuple[str, ...]
  cells: tuple[Cell, ...]
  seeds: tuple[int, ...]

  def as_json(self) -> dict:
    return {"name": self.name, "description": self.description,
            "paper_tables": list(self.paper_tables), "seeds": list(self.seeds),
            "cells": [dataclasses.asdict(cell) for cell in self.cells]}


def runs(cells: Sequence[Cell], seeds: Sequence[int]) -> list[tuple[Cell, int]]:
  """(cell, seed) of every run, seed by seed: a sweep stopped half-way has whole tables."""
  return [(cell, seed) for seed in seeds for cell in cells]


def run_workdir(root: str, cell_name: str, seed: int) -> str:
  return os.path.join(root, cell_name, f"{SEED_DIRECTORY_PREFIX}{seed}")


def parse_run_workdir(workdir: str) -> tuple[str, str, int | None]:
  """(sweep root, cell name, seed) of a run's workdir; the seed is None for a workdir
  outside the seed layout (a train.py run), which is then a cell of its parent."""
  workdir = os.path.normpath(workdir)
  base = os.path.basename(workdir)
  digits = base[len(SEED_DIRECTORY_PREFIX):]
  if base.startswith(SEED_DIRECTORY_PREFIX) and digits.isdigit():
    cell_dir = os.path.dirname(workdir)
    return os.path.dirname(cell_dir), os.path.basename(cell_dir), int(digits)
  return os.path.dirname(workdir), base, None


def seed_overrides(seed: int) -> dict[str, int]:
  return {field: seed for field in SEED_FIELDS}


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
  """{dotted field: value} of every leaf of `config`."""
  out = {}
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def parse_seeds(text: str) -> tuple[int, ...]:
  """'0,1,2' -> (0, 1, 2): distinct non-negative integers, at least one."""
  try:
    seeds = tuple(int(word) for word in text.split(","))
  except ValueError:
    raise ValueError(f"seeds {text!r}: expected integers separated by commas") from None
  return _checked_seeds(seeds, f"seeds {text!r}")


def _checked_seeds(seeds: tuple[int, ...], where: str) -> tuple[int, ...]:
  if not seeds or any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
    raise ValueError(f"{where}: expected distinct non-negative seeds, at least one")
  return seeds


def _load_module(path: str):
  """The Python file at `path` as a fresh module (configs import `configs.*`: run from
  the repository root, as train.py is)."""
  name = "_sweep_" + hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or not os.path.isfile(path):
    raise ValueError(f"{path} is not a Python file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of 'path[:argument]', as train.py's --config loads it."""
  path, has_argument, argument = spec.partition(":")
  module = _load_module(path)
  return module.get_config(argument) if has_argument else module.get_config()


def format_value(value: Any) -> str:
  """`value` as config_flags parses it back on train.py's command line."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return str(value)


def _leaf(path: str) -> str:
  return path.rsplit(".", 1)[-1]


def sweep_from_definition(definition: ml_collections.ConfigDict, name: str) -> Sweep:
  """The cells of a `get_sweep()` ConfigDict (see the module docstring)."""
  base = definition.config
  common = dict(definition.get("overrides", ()))
  axes, listed = definition.get("axes"), definition.get("cells")
  if (axes is None) == (listed is None):
    raise ValueError(f"sweep {name!r} must define exactly one of 'axes' and 'cells'")
  if axes is not None:
    axes = [(axis[0], tuple(axis[1]), axis[2] if len(axis) > 2 else _leaf(axis[0]))
            for axis in axes]
    cells = [Cell(",".join(f"{label}={format_value(v)}" for (_, _, label), v in
                           zip(axes, values)),
                  base, {**common, **{path: v for (path, _, _), v in zip(axes, values)}})
             for values in itertools.product(*(axis[1] for axis in axes))]
  else:
    cells = [Cell(cell["name"], cell.get("config", base),
                  {**common, **dict(cell.get("overrides", ()))}) for cell in listed]
  for cell in cells:
    fixed = [field for field in SEED_FIELDS if field in cell.overrides]
    if fixed:
      raise ValueError(f"sweep {name!r}, cell {cell.name}: {', '.join(fixed)} belong to the "
                       "sweep's `seeds`, not to overrides or axes")
  seeds = _checked_seeds(tuple(int(seed) for seed in definition.get("seeds", (0,))),
                         f"sweep {name!r}")
  names = [cell.name for cell in cells]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"sweep {name!r} has cells of the same name: {', '.join(duplicates)}")
  bad = [n for n in names
         if not n or "/" in n or n.startswith(".") or n.startswith(SEED_DIRECTORY_PREFIX)]
  if bad:
    raise ValueError(f"sweep {name!r}: cell names must be plain directory names: {bad}")
  return Sweep(definition.get("name", name), definition.get("description", ""),
               tuple(definition.get("paper_tables", ())), tuple(cells), seeds)


def load_sweep(path: str) -> Sweep:
  """The sweep defined by the file at `path` (its `get_sweep()`)."""
  stem = os.path.splitext(os.path.basename(path))[0]
  return sweep_from_definition(_load_module(path).get_sweep(), stem)


def _set_field(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  *parents, leaf = path.split(".")
  target = config
  for parent in parents:
    target = target.get(parent)
    if not isinstance(target, ml_collections.ConfigDict):
      break
  if not isinstance(target, ml_collections.ConfigDict) or leaf not in target:
    # train.py's --config.FIELD flags cannot add fields either: the base config must
    # define every field a sweep varies.
    raise ValueError(f"the config has no field {path!r} to override; define it in the "
                     "base config")
  target[leaf] = value  # ConfigDict keeps the field's type (an int may become a float)


def cell_config(cell: Cell, seed: int, flag_args: Sequence[str] = ()
                ) -> ml_collections.ConfigDict:
  """The resolved config of `cell` at `seed`, then `--config.FIELD=VALUE` flags as train.py
  reads them."""
  config = load_config(cell.config)
  for path, value in {**cell.overrides, **seed_overrides(seed)}.items():
    _set_field(config, path, value)
  if not flag_args:
    return config
  argv = ["sweep", *flag_args]
  values = flags.FlagValues()
  config_flags.DEFINE_config_dict("config", config, flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


def run_configs(planned: Sequence[tuple[Cell, int]], flag_args: Sequence[str] = ()
                ) -> list[ml_collections.ConfigDict]:
  """Every run's config, built before any run trains so that a typo fails at once."""
  seed_flags = [arg for arg in flag_args
                if arg.split("=", 1)[0] in {f"--config.{field}" for field in SEED_FIELDS}]
  if seed_flags:
    raise ValueError(f"{', '.join(seed_flags)}: a sweep sets the seeds of its runs; give "
                     "--seeds instead")
  configs = []
  for cell, seed in planned:
    try:
      configs.append(cell_config(cell, seed, flag_args))
    except (ValueError, TypeError, KeyError, AttributeError, flags.Error) as error:
      raise ValueError(f"cell {cell.name}: {error}") from error
  return configs


def config_sha256(config: ml_collections.ConfigDict) -> str:
  return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str)
                        .encode()).hexdigest()


def train_command(cell: Cell, seed: int, workdir: str, flag_args: Sequence[str] = ()) -> str:
  """The train.py command line that trains `cell` at `seed` in `workdir`."""
  words = ["python", "train.py", "--config", cell.config, "--workdir", workdir]
  words += [f"--config.{path}={format_value(value)}"
            for path, value in {**cell.overrides, **seed_overrides(seed)}.items()]
  words += list(flag_args)
  return " ".join(shlex.quote(word) for word in words)


def _write_json(path: str, value: dict) -> None:
  """Write atomically: a reader sees the old file or the whole new one, never a part."""
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def read_result(workdir: str) -> dict | None:
  path = os.path.join(workdir, RESULT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def is_finished(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Whether `workdir` holds the final result of `config` (see the module docstring)."""
  result = read_result(workdir)
  if result is None or result.get("config_sha256") != config_sha256(config):
    return False
  store = checkpointing.CheckpointStore(workdir, read_only=True)
  try:
    return result["step"] == result["total_steps"] and result["step"] in store.all_steps()
  finally:
    store.close()


def run_cell(cell: Cell, seed: int, config: ml_collections.ConfigDict, workdir: str,
             sweep_name: str) -> dict:
  """Train (or resume) `cell` at `seed` to its end, then record its result atomically."""
  # Imported here, as in train.py, so that the CLI sets up the runtime first.
  from mobileshuffle_jax import data, training  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  metrics = training.train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - start
  if "preempted_at_step" in metrics:
    raise Preempted(f"{workdir}: preempted at step {metrics['preempted_at_step']}, "
                    "checkpoint saved; run the sweep again to resume")
  info = data.prepare(config.data)  # already prepared by training: cheap
  total_steps, _ = training.train_duration(config, info.num_train_examples)
  store = checkpointing.CheckpointStore(workdir, read_only=True)
  try:
    step = store.latest_step()
  finally:
    store.close()
  if step != total_steps:
    raise RuntimeError(f"{workdir}: training returned at checkpoint step {step}, not at "
                       f"the final step {total_steps}")
  result = {"sweep": sweep_name, "cell": cell.name, "seed": seed,
            "config_sha256": config_sha256(config),
            "step": step, "total_steps": total_steps, "num_classes": info.num_classes,
            "eval": metrics, "seconds_this_run": seconds}
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, RESULT_FILE), result)
  return result


def select(sweep: Sweep, only: Sequence[str] | None) -> list[Cell]:
  if not only:
    return list(sweep.cells)
  names = {cell.name for cell in sweep.cells}
  unknown = [name for name in only if name not in names]
  if unknown:
    raise ValueError(f"--only {', '.join(unknown)}: no such cell in sweep {sweep.name!r}; "
                     f"its cells: {', '.join(sorted(names))}")
  return [cell for cell in sweep.cells if cell.name in only]


def run_name(cell: Cell, seed: int) -> str:
  return f"{cell.name} seed {seed}"


def run_sweep(sweep: Sweep, root: str, only: Sequence[str] | None = None,
              flag_args: Sequence[str] = ()) -> list[str]:
  """Run the unfinished runs of `sweep` under `root`; the names of the runs that failed.

  A run that raises an Exception is logged and the next one runs (one diverging run
  should not cost the rest of the night); a preemption (`Preempted`) or an interruption
  (KeyboardInterrupt) stops the sweep.
  """
  planned = runs(select(sweep, only), sweep.seeds)
  configs = run_configs(planned, flag_args)
  if jax.process_index() == 0:
    os.makedirs(root, exist_ok=True)
    _write_json(os.path.join(root, SWEEP_FILE), sweep.as_json())
  failed = []
  for index, ((cell, seed), config) in enumerate(zip(planned, configs), start=1):
    workdir = run_workdir(root, cell.name, seed)
    name = run_name(cell, seed)
    if is_finished(workdir, config):
      log.info("run %d/%d %s: finished earlier, skipped", index, len(planned), name)
      continue
    log.info("run %d/%d %s: training in %s", index, len(planned), name, workdir)
    try:
      result = run_cell(cell, seed, config, workdir, sweep.name)
    except Preempted:
      raise
    except Exception as error:  # pylint: disable=broad-except
      log.error("run %s failed: %s", name, error, exc_info=flags.FLAGS.verbose)
      failed.append(name)
      continue
    log.info("run %s: top1 %.4f after %d steps (%.0f s)", name, result["eval"]["top1"],
             result["step"], result["seconds_this_run"])
  return failed


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m mobileshuffle_jax.sweep", description=__doc__.split("\n\n")[0],
      epilog="Any --config.FIELD=VALUE flag overrides that field in every run (the seeds "
             "excepted: --seeds); the runtime's flags (--coordinator_address, ...) are "
             "accepted as by train.py.")
  parser.add_argument("sweep", help="a sweep definition file, e.g. configs/sweeps/*.py")
  parser.add_argument("--workdir", required=True,
                      help="root: one directory per cell, one below it per seed")
  parser.add_argument("--only", action="append", metavar="NAME",
                      help="run only this cell (repeatable)")
  parser.add_argument("--seeds", metavar="S,S,...",
                      help="run every cell at these seeds instead of the sweep's")
  parser.add_argument("--print-commands", action="store_true",
                      help="print one train.py command per run instead of training")
  args, rest = parser.parse_known_args(argv)
  flag_args = [arg for arg in rest if arg.startswith("--config.")]
  try:  # the runtime's own flags, e.g. --coordinator_address for a multi-process sweep
    flags.FLAGS([parser.prog] + [arg for arg in rest if not arg.startswith("--config.")])
  except flags.Error as error:
    parser.error(str(error))
  runtime.initialize()
  try:
    sweep = load_sweep(args.sweep)
    if args.seeds is not None:
      sweep = dataclasses.replace(sweep, seeds=parse_seeds(args.seeds))
    if args.print_commands:
      planned = runs(select(sweep, args.only), sweep.seeds)
      run_configs(planned, flag_args)  # print no command that train.py would refuse
      for cell, seed in planned:
        print(train_command(cell, seed, run_workdir(args.workdir, cell.name, seed),
                            flag_args))
      return 0
    if not jax.config.jax_compilation_cache_dir:
      # The seeds of a cell compile the same programs: the later seeds load them.
      jax.config.update("jax_compilation_cache_dir",
                        os.path.join(args.workdir, COMPILATION_CACHE))
    failed = run_sweep(sweep, args.workdir, args.only, flag_args)
  except ValueError as error:
    parser.error(str(error))
  except Preempted as preempted:
    log.warning("%s", preempted)
    return 1
  if failed:
    log.error("%d run(s) failed: %s (run the sweep again to retry them)", len(failed),
              ", ".join(failed))
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
