"""Console and result lines: the JSON result is strict and on a line of its own."""

import json
import math

from mobileshuffle_jax import progress


def test_result_line_is_strict_json(capsys):
  progress.print_result({"top1": 0.5, "loss": math.nan, "step": 3, "per_class": [math.inf]})
  line = capsys.readouterr().out
  assert line.endswith("\n") and line.count("\n") == 1

  def refuse(constant):
    raise ValueError(f"non-standard JSON constant {constant}")

  assert json.loads(line, parse_constant=refuse) == {"top1": 0.5, "loss": None, "step": 3,
                                                     "per_class": [None]}


def test_drop_lines_after_keeps_earlier_steps_and_drops_a_cut_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "tr')
  progress.drop_lines_after(str(path), 2)
  assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
  before = path.stat().st_mtime_ns
  progress.drop_lines_after(str(path), 2)  # nothing to drop: the file is left alone
  assert path.stat().st_mtime_ns == before
