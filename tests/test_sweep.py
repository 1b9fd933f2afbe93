"""The ablation sweep: an interrupted sweep completes only its missing cells, and its printed
commands parse as train.py configs (the tiny 2x2 grid of conftest's `finished_root`)."""

import json
import os
import shlex

from absl import flags
from ml_collections import config_flags

from mobileshuffle_jax import sweep
from tests.conftest import SWEEP_CELLS as CELLS
from tests.conftest import SWEEP_STEPS as STEPS


def test_interrupted_sweep_completes_only_missing_cells(finished_root, sweep_file):
  root, sessions = finished_root
  assert sessions == [[CELLS[1]], CELLS[1:], []]
  for cell in CELLS:
    result = sweep.read_result(os.path.join(root, cell))
    assert result["step"] == result["total_steps"] == STEPS
    assert 0.0 <= result["eval"]["top1"] <= 1.0 and result["eval"]["num_examples"] == 360
  # The killed cell resumed at its final checkpoint: no step trained twice.
  with open(os.path.join(root, CELLS[1], "metrics.jsonl")) as f:
    train_steps = [r["step"] for r in map(json.loads, f) if "train/loss" in r]
  assert train_steps == [2, 4]
  # A changed config is not the finished cell's.
  definition = sweep.load_sweep(sweep_file)
  config = sweep.cell_config(definition.cells[0])
  assert sweep.is_finished(os.path.join(root, CELLS[0]), config)
  config.seed = 1
  assert not sweep.is_finished(os.path.join(root, CELLS[0]), config)


def test_print_commands_parse_as_train_py_configs(sweep_file, tmp_path, capsys):
  root = str(tmp_path / "root")
  assert sweep.main([sweep_file, "--workdir", root, "--print-commands",
                     "--config.seed=7"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == len(CELLS)
  assert not os.path.exists(root)  # printing trains and writes nothing
  for line, cell in zip(lines, sweep.load_sweep(sweep_file).cells):
    argv = shlex.split(line)
    assert argv[:2] == ["python", "train.py"]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                    sys_argv=argv[1:])
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    values(argv[1:])
    assert values.workdir == os.path.join(root, cell.name)
    expected = sweep.cell_config(cell, ["--config.seed=7"])
    assert values.config.to_dict() == expected.to_dict() and values.config.seed == 7
