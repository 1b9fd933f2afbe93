"""Ablation sweeps end to end: a 2x2 grid of tiny MobileNets through sweep, then report."""

import json
import os
import shlex

import pytest
from absl import flags
from ml_collections import config_flags
from PIL import Image

from mobileshuffle_jax import checkpointing, complexity, models, report, sweep, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELLS = ["alpha=0.25,res=32", "alpha=0.25,res=40", "alpha=0.5,res=32", "alpha=0.5,res=40"]
STEPS = 4

SWEEP_DEFINITION = '''
import ml_collections


def get_sweep():
  sweep = ml_collections.ConfigDict()
  sweep.description = "tiny width x resolution grid"
  sweep.config = {config!r}
  sweep.overrides = [
      ("data.data_dir", {data_dir!r}), ("lowering", "xla"), ("num_train_steps", {steps}),
      ("global_batch_size", 32), ("base_batch_size", 32), ("eval_batch_size", 128),
      ("schedule", "constant"), ("warmup_epochs", 0.0), ("log_every_steps", 2),
      ("eval_every_steps", {steps}), ("checkpoint_every_steps", {steps})]
  sweep.axes = [("model_options.alpha", (0.25, 0.5)), ("data.image_size", (32, 40), "res")]
  return sweep
'''


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
  directory = tmp_path_factory.mktemp("sweep")
  path = directory / "tiny.py"
  path.write_text(SWEEP_DEFINITION.format(config=os.path.join(REPO, "configs/default.py"),
                                          data_dir=str(directory / "tfds"), steps=STEPS))
  return str(path)


def _mtime(root, cell):
  return os.stat(os.path.join(root, cell, sweep.RESULT_FILE)).st_mtime_ns


def _checkpoint_steps(workdir):
  store = checkpointing.CheckpointStore(workdir, read_only=True)
  try:
    return sorted(store.all_steps())
  finally:
    store.close()


@pytest.fixture(scope="module")
def finished_root(sweep_file, tmp_path_factory):
  """A sweep run in four sessions: one cell (--only); a run killed right after its first
  cell's training returned, before the sweep recorded it; the rest; nothing left.

  Returns the root and the cells that each later session trained.
  """
  root = str(tmp_path_factory.mktemp("root"))
  assert sweep.main([sweep_file, "--workdir", root, "--only", CELLS[0]]) == 0
  assert sorted(os.listdir(root)) == sorted([CELLS[0], sweep.SWEEP_FILE])
  first_result = _mtime(root, CELLS[0])
  first_checkpoints = _checkpoint_steps(os.path.join(root, CELLS[0]))

  real_train = training.train_and_evaluate
  sessions = []

  def killed_after_training(config, workdir):
    sessions[-1].append(os.path.basename(workdir))
    real_train(config, workdir)
    raise KeyboardInterrupt

  def counted(config, workdir):
    sessions[-1].append(os.path.basename(workdir))
    return real_train(config, workdir)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(training, "train_and_evaluate", killed_after_training)
    sessions.append([])
    with pytest.raises(KeyboardInterrupt):
      sweep.main([sweep_file, "--workdir", root])
    assert sweep.read_result(os.path.join(root, CELLS[1])) is None
    killed_checkpoints = _checkpoint_steps(os.path.join(root, CELLS[1]))
    patch.setattr(training, "train_and_evaluate", counted)
    for _ in range(2):
      sessions.append([])
      assert sweep.main([sweep_file, "--workdir", root]) == 0
  assert _mtime(root, CELLS[0]) == first_result
  assert _checkpoint_steps(os.path.join(root, CELLS[0])) == first_checkpoints
  assert _checkpoint_steps(os.path.join(root, CELLS[1])) == killed_checkpoints
  return root, sessions


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


def test_report_rows_match_complexity_and_plots_are_png(finished_root, tmp_path):
  root, _ = finished_root
  out = str(tmp_path / "report")
  assert report.main([root, "--out", out, "--speed-batch", "8", "--speed-seconds", "0.1"]) == 0
  with open(os.path.join(out, "report.json")) as f:
    written = json.load(f)
  [group] = written["groups"]
  assert group["name"] == "tiny" and group["missing"] == []
  assert [row["cell"] for row in group["rows"]] == CELLS
  with open(os.path.join(out, "report.md")) as f:
    markdown = f.read()
  for row, (alpha, resolution) in zip(group["rows"], [(0.25, 32), (0.25, 40), (0.5, 32),
                                                      (0.5, 40)]):
    counts = complexity.count(models.build("mobilenet_v1", alpha=alpha, num_classes=10),
                              resolution)
    assert (row["mult_adds"], row["params"]) == (counts.mult_adds, counts.params)
    assert row["label"] == f"{alpha:g} MobileNet-{resolution}"
    assert row["step"] == STEPS and row["finished"] and row["images_per_second"] > 0
    assert row["paper"] is None  # 10 classes at 32-40 px: no paper model
    assert (f"| {row['label']} | {100 * row['top1']:.1f} | {100 * row['top5']:.1f} | "
            f"{counts.mult_adds / 1e6:.2f} | {counts.params / 1e6:.2f} |") in markdown
  assert written["plots"] == ["accuracy_vs_mult_adds.png", "accuracy_vs_params.png"]
  for name in written["plots"]:
    with open(os.path.join(out, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(os.path.join(out, name)) as image:
      image.verify()
      assert image.size[0] > 500 and image.size[1] > 400


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


def test_paper_match_finds_the_printed_row():
  row = report.paper_match("mobilenet_v1", {"alpha": 0.5}, 160, 1000)
  assert (row.table, row.top1, row.mult_adds_m) == ("9", 60.2, 76)
  row = report.paper_match("mobilenet_v1", {"alpha": 1.0}, 224, 1000, preferred_tables=("7",))
  assert (row.table, row.label) == ("7", "1.0 MobileNet-224")
  row = report.paper_match("shufflenet_v1", {"groups": 8, "scale": 0.5, "shuffle": False},
                           224, 1000)
  assert (row.table, row.top1) == ("3", 51.9)
  assert report.paper_match("mobilenet_v1", {"alpha": 0.5}, 160, 10) is None
  assert report.paper_match("mobilenet_v1", {"alpha": 0.5}, 96, 1000) is None
