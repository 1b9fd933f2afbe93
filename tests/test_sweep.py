"""The ablation sweep: every cell runs once per seed, an interrupted sweep completes only its
missing runs, and its printed commands parse as train.py configs (the tiny 2x2 grid of
conftest's `finished_root`)."""

import json
import os
import shlex

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from mobileshuffle_jax import checkpointing, sweep
from tests.conftest import REPO
from tests.conftest import SWEEP_CELLS as CELLS
from tests.conftest import SWEEP_SECOND_SEED_CELLS as SECOND_SEED_CELLS
from tests.conftest import SWEEP_STEPS as STEPS


def test_interrupted_sweep_completes_only_missing_runs(finished_root, sweep_file):
  root, sessions = finished_root
  assert sessions == [[(CELLS[1], 0)], [(cell, 0) for cell in CELLS[1:]], [],
                      [(cell, 1) for cell in SECOND_SEED_CELLS]]
  runs = [(cell, 0) for cell in CELLS] + [(cell, 1) for cell in SECOND_SEED_CELLS]
  assert sorted(os.listdir(os.path.join(root, CELLS[1]))) == ["seed=0", "seed=1"]
  for cell, seed in runs:
    workdir = sweep.run_workdir(root, cell, seed)
    result = sweep.read_result(workdir)
    assert result["step"] == result["total_steps"] == STEPS
    assert (result["cell"], result["seed"]) == (cell, seed)
    assert 0.0 <= result["eval"]["top1"] <= 1.0 and result["eval"]["num_examples"] == 360
    config = checkpointing.read_config_json(workdir)
    assert (config.seed, config.data.seed) == (seed, seed)  # initialization and data order
  # The killed run resumed at its final checkpoint: no step trained twice.
  with open(os.path.join(sweep.run_workdir(root, CELLS[1], 0), "metrics.jsonl")) as f:
    train_steps = [r["step"] for r in map(json.loads, f) if "train/loss" in r]
  assert train_steps == [2, 4]
  # Another seed is another initialization.
  first, second = (jax.tree.leaves(checkpointing.restore_for_inference(
      sweep.run_workdir(root, CELLS[1], seed)).variables["params"]) for seed in (0, 1))
  assert not all(np.array_equal(a, b) for a, b in zip(first, second))
  # A changed config is not the finished run's.
  definition = sweep.load_sweep(sweep_file)
  config = sweep.cell_config(definition.cells[0], 0)
  assert sweep.is_finished(sweep.run_workdir(root, CELLS[0], 0), config)
  config.learning_rate = 0.01
  assert not sweep.is_finished(sweep.run_workdir(root, CELLS[0], 0), config)
  with open(os.path.join(root, sweep.SWEEP_FILE)) as f:
    assert json.load(f)["seeds"] == [0, 1]  # as the last session asked


def _definition(**fields) -> ml_collections.ConfigDict:
  definition = ml_collections.ConfigDict()
  definition.config = os.path.join(REPO, "configs/default.py")
  definition.axes = [("model_options.alpha", (0.25, 0.5))]
  for name, value in fields.items():
    definition[name] = value
  return definition


def test_seeds_expand_every_cell_and_set_initialization_and_data_seeds():
  definition = sweep.sweep_from_definition(_definition(seeds=(4, 1, 2)), "grid")
  assert definition.seeds == (4, 1, 2) and definition.as_json()["seeds"] == [4, 1, 2]
  planned = sweep.runs(definition.cells, definition.seeds)
  assert [(cell.name, seed) for cell, seed in planned] == [
      ("alpha=0.25", 4), ("alpha=0.5", 4), ("alpha=0.25", 1), ("alpha=0.5", 1),
      ("alpha=0.25", 2), ("alpha=0.5", 2)]
  for (cell, seed), config in zip(planned, sweep.run_configs(planned)):
    assert (config.seed, config.data.seed) == (seed, seed)
    assert config.model_options.alpha == float(cell.name.split("=")[1])
  workdir = sweep.run_workdir("/r", "alpha=0.5", 2)
  assert workdir == "/r/alpha=0.5/seed=2"
  assert sweep.parse_run_workdir(workdir) == ("/r", "alpha=0.5", 2)
  assert sweep.parse_run_workdir("/r/single_run") == ("/r", "single_run", None)
  # Without `seeds`: one run per cell, at seed 0.
  assert sweep.sweep_from_definition(_definition(), "grid").seeds == (0,)
  assert sweep.parse_seeds("0,1,2") == (0, 1, 2)


@pytest.mark.parametrize("fields, message", [
    (dict(seeds=(0, 0)), "distinct"),
    (dict(seeds=()), "at least one"),
    (dict(overrides=[("seed", 3)]), "belong to the sweep's `seeds`"),
    (dict(overrides=[("data.seed", 3)]), "belong to the sweep's `seeds`"),
])
def test_seeds_belong_to_the_seeds_axis(fields, message):
  with pytest.raises(ValueError, match=message):
    sweep.sweep_from_definition(_definition(**fields), "grid")


def test_seed_flags_and_bad_seeds_are_refused(sweep_file, tmp_path):
  definition = sweep.load_sweep(sweep_file)
  with pytest.raises(ValueError, match="give --seeds instead"):
    sweep.run_configs(sweep.runs(definition.cells, (0,)), ["--config.data.seed=3"])
  with pytest.raises(ValueError, match="integers"):
    sweep.parse_seeds("0,one")
  with pytest.raises(SystemExit):
    sweep.main([sweep_file, "--workdir", str(tmp_path), "--print-commands",
                "--config.seed=7"])


def test_print_commands_parse_as_train_py_configs(sweep_file, tmp_path, capsys):
  root = str(tmp_path / "root")
  assert sweep.main([sweep_file, "--workdir", root, "--print-commands", "--seeds", "0,3",
                     "--config.label_smoothing=0.1"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  planned = sweep.runs(sweep.load_sweep(sweep_file).cells, (0, 3))
  assert len(lines) == len(planned) == 2 * len(CELLS)
  assert not os.path.exists(root)  # printing trains and writes nothing
  for line, (cell, seed) in zip(lines, planned):
    argv = shlex.split(line)
    assert argv[:2] == ["python", "train.py"]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                    sys_argv=argv[1:])
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    values(argv[1:])
    assert values.workdir == sweep.run_workdir(root, cell.name, seed)
    expected = sweep.cell_config(cell, seed, ["--config.label_smoothing=0.1"])
    assert values.config.to_dict() == expected.to_dict()
    assert (values.config.seed, values.config.data.seed) == (seed, seed)
    assert values.config.label_smoothing == 0.1
