"""The ablation report: statistics over seeds against numpy and scipy, the comparisons'
pairing rules, and the report of a finished tiny sweep (conftest's `finished_root`): cells
that match the complexity counter, results.json, the tables and the plots."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from mobileshuffle_jax import complexity, models, report, sweep
from tests.conftest import SWEEP_CELLS as CELLS
from tests.conftest import SWEEP_SECOND_SEED_CELLS as SECOND_SEED_CELLS
from tests.conftest import SWEEP_STEPS as STEPS


def test_summarize_is_mean_sample_std_and_student_t_interval():
  values = [0.71, 0.745, 0.69, 0.752, 0.7]
  summary = report.summarize(values)
  assert summary["n"] == 5
  np.testing.assert_allclose(summary["mean"], np.mean(values), rtol=1e-12)
  np.testing.assert_allclose(summary["std"], np.std(values, ddof=1), rtol=1e-12)
  low, high = stats.t.interval(0.95, 4, loc=np.mean(values), scale=stats.sem(values))
  np.testing.assert_allclose(summary["ci95"], [low, high], rtol=1e-12)
  # Two values 0 and 1: mean 0.5, standard error 0.5, t(0.975, 1) = 12.7062 (printed tables).
  np.testing.assert_allclose(report.summarize([0.0, 1.0])["ci95"],
                             [0.5 - 12.7062047 * 0.5, 0.5 + 12.7062047 * 0.5], rtol=1e-7)
  # One seed: no spread, no interval.
  assert report.summarize([0.8]) == {"mean": 0.8, "std": None, "n": 1, "ci95": None}
  with pytest.raises(ValueError):
    report.summarize([])


def test_paired_difference_uses_the_common_seeds():
  treatment = {0: 0.80, 1: 0.70, 2: 0.90, 5: 0.10}
  baseline = {0: 0.60, 1: 0.65, 2: 0.82, 3: 0.20}
  difference = report.paired_difference(treatment, baseline)
  assert difference["seeds"] == [0, 1, 2] and difference["n"] == 3
  np.testing.assert_allclose(difference["diff"], np.mean([0.2, 0.05, 0.08]), rtol=1e-12)
  paired_test = stats.ttest_rel([0.80, 0.70, 0.90], [0.60, 0.65, 0.82])
  interval = paired_test.confidence_interval(0.95)
  np.testing.assert_allclose(difference["ci95"], [interval.low, interval.high], rtol=1e-12)
  single = report.paired_difference({4: 0.5}, {4: 0.25, 7: 0.3})
  assert (single["diff"], single["n"], single["ci95"]) == (0.25, 1, None)
  assert report.paired_difference({0: 0.5}, {1: 0.5}) is None


def _cell(name, model, architecture, resolution, mult_adds, seeds=(0, 1), **config):
  """A cell as `report.collect` builds it, with the fields the pairing rules read."""
  fields = {"model": model, "data.image_size": resolution, "learning_rate": 0.1,
            **{f"model_options.{key}": value for key, value in architecture.items()}, **config}
  return {"sweep": "demo", "cell": name, "label": name, "model": model,
          "architecture": architecture, "resolution": resolution, "mult_adds": mult_adds,
          "dataset": "digits", "num_classes": 10, "config": fields, "seeds": list(seeds),
          "runs": [{"seed": seed, "top1": 0.5 + 0.01 * seed, "top5": 0.9} for seed in seeds]}


def _shufflenet(name, groups, shuffle, mult_adds, **config):
  return _cell(name, "shufflenet_v1", {"groups": groups, "shuffle": shuffle, "scale": 0.5},
               32, mult_adds, **config)


def _mobilenet(name, alpha, resolution, mult_adds):
  return _cell(name, "mobilenet_v1", {"alpha": alpha}, resolution, mult_adds)


def test_comparisons_pair_the_papers_cells():
  cells = [_shufflenet("g8", 8, True, 0.82e6), _shufflenet("g8 no shuffle", 8, False, 0.82e6),
           _shufflenet("g3", 3, True, 0.76e6), _shufflenet("g1", 1, True, 0.78e6),
           _shufflenet("g8 other recipe", 8, False, 0.82e6, learning_rate=0.2),
           _mobilenet("0.25-32", 0.25, 32, 0.83e6), _mobilenet("0.5-32", 0.5, 32, 3.05e6),
           _mobilenet("0.25-64", 0.25, 64, 3.33e6), _mobilenet("0.5-48", 0.5, 48, 7.5e6)]
  taught = _mobilenet("0.25-32 taught", 0.25, 32, 0.83e6)
  taught["config"]["distill.teacher"] = "workdirs/teacher"
  cells.insert(0, taught)  # as close in mult-adds, and first: still no ShuffleNet's baseline
  pairs = {comparison.kind: [(a["cell"], b["cell"])
                             for a, b in report.comparison_pairs(comparison, cells)]
           for comparison in report.COMPARISONS}
  assert pairs == {
      # Same g and width; a different recipe is no baseline.
      "shuffle": [("g8", "g8 no shuffle")],
      "groups": [("g8", "g1"), ("g3", "g1")],
      # Each ShuffleNet with the MobileNet closest in mult-adds, within 25%.
      "family": [("g8", "0.25-32"), ("g3", "0.25-32"), ("g1", "0.25-32")],
      # 0.5-48 has no narrower cell at a higher resolution within 25% of its mult-adds.
      "width_vs_resolution": [("0.5-32", "0.25-64")],
      "distillation": [("0.25-32 taught", "0.25-32")],
  }
  compared = report.compare(cells)
  shuffle = [entry for entry in compared if entry["kind"] == "shuffle"]
  assert [entry["metric"] for entry in shuffle] == list(report.METRICS)
  assert shuffle[0]["seeds"] == [0, 1] and shuffle[0]["diff"] == 0.0


def test_distillation_is_one_comparison_entry_paired_by_seed():
  """The same student with and without a teacher (any distill.* settings), paired by seed."""
  (taught,) = [entry for entry in report.COMPARISONS if entry.kind == "distillation"]
  student = _mobilenet("student", 0.25, 32, 0.83e6)
  student["config"].update({"distill.teacher": None, "distill.alpha": 0.5})
  with_teacher = _mobilenet("with teacher", 0.25, 32, 0.83e6)
  with_teacher["config"].update({"distill.teacher": "workdirs/teacher", "distill.alpha": 0.9})
  with_teacher["runs"] = [{"seed": 0, "top1": 0.6, "top5": 0.9},
                          {"seed": 1, "top1": 0.7, "top5": 0.95}]
  [top1, top5] = report.compare([student, with_teacher], comparisons=(taught,))
  assert (top1["treatment"]["cell"], top1["baseline"]["cell"], top1["metric"]) == (
      "with teacher", "student", "top1")
  np.testing.assert_allclose(top1["diff"], np.mean([0.6 - 0.5, 0.7 - 0.51]), rtol=1e-12)
  np.testing.assert_allclose(top5["diff"], 0.025, rtol=1e-12)


def _run_top1(root, cell, seed):
  return sweep.read_result(sweep.run_workdir(root, cell, seed))["eval"]["top1"]


def test_report_of_a_sweep_with_seeds(finished_root, tmp_path):
  root, _ = finished_root
  out = str(tmp_path / "report")
  assert report.main([root, "--out", out, "--speed-batch", "8", "--speed-seconds", "0.1"]) == 0
  with open(os.path.join(out, "results.json")) as f:
    written = json.load(f)
  [group] = written["sweeps"]
  assert group["name"] == "tiny"
  # sweep.json asks for seeds 0 and 1 (the last session's --seeds) of every cell.
  assert group["missing"] == [f"{cell} (seed 1)" for cell in CELLS
                              if cell not in SECOND_SEED_CELLS]
  assert [cell["cell"] for cell in written["cells"]] == CELLS
  with open(os.path.join(out, "report.md")) as f:
    markdown = f.read()
  for cell, (alpha, resolution) in zip(written["cells"], [(0.25, 32), (0.25, 64), (0.5, 32),
                                                          (0.5, 64)]):
    counts = complexity.count(models.build("mobilenet_v1", alpha=alpha, num_classes=10),
                              resolution)
    assert (cell["mult_adds"], cell["params"]) == (counts.mult_adds, counts.params)
    assert cell["label"] == f"{alpha:g} MobileNet-{resolution}"
    assert cell["config"]["model_options.alpha"] == alpha and "seed" not in cell["config"]
    assert cell["step"] == STEPS and cell["finished"] and cell["images_per_second"] > 0
    assert cell["paper"] is None  # 10 classes at 32-64 px: no paper model
    seeds = [0, 1] if cell["cell"] in SECOND_SEED_CELLS else [0]
    assert cell["seeds"] == seeds and [run["seed"] for run in cell["runs"]] == seeds
    top1 = [_run_top1(root, cell["cell"], seed) for seed in seeds]
    for metric in report.METRICS:
      assert set(cell[metric]) == {"mean", "std", "n", "ci95"}
    np.testing.assert_allclose(cell["top1"]["mean"], np.mean(top1), rtol=1e-12)
    assert cell["top1"]["n"] == len(seeds)
    if len(seeds) == 1:
      assert cell["top1"]["std"] is None and cell["top1"]["ci95"] is None
      assert (f"| {cell['label']} | {100 * top1[0]:.1f} | n/a (1 seed) | "
              f"{100 * cell['top5']['mean']:.1f} | 1 | {counts.mult_adds / 1e6:.2f} | "
              f"{counts.params / 1e6:.2f} |") in markdown
    else:
      np.testing.assert_allclose(cell["top1"]["std"], np.std(top1, ddof=1), rtol=1e-9)
      low, high = cell["top1"]["ci95"]
      assert f"| {cell['label']} | {100 * np.mean(top1):.1f} ± " in markdown
      assert f"[{100 * low:.1f}, {100 * high:.1f}] | " in markdown
  # The one pair at equal mult-adds, paired on the seeds both cells have.
  [top1_difference] = [entry for entry in written["comparisons"] if entry["metric"] == "top1"]
  assert top1_difference["kind"] == "width_vs_resolution"
  assert [top1_difference[role]["cell"] for role in ("treatment", "baseline")] == [CELLS[2],
                                                                                  CELLS[1]]
  differences = [_run_top1(root, CELLS[2], seed) - _run_top1(root, CELLS[1], seed)
                 for seed in (0, 1)]
  assert top1_difference["seeds"] == [0, 1]
  np.testing.assert_allclose(top1_difference["diff"], np.mean(differences), atol=1e-12)
  if differences[0] != differences[1]:
    low, high = stats.t.interval(0.95, 1, loc=np.mean(differences),
                                 scale=stats.sem(differences))
    np.testing.assert_allclose(top1_difference["ci95"], [low, high], rtol=1e-9)
  assert "## Comparisons, paired by seed" in markdown
  row = f"| 0.5 MobileNet-32 | 0.25 MobileNet-64 | 2 | {100 * np.mean(differences):+.1f} |"
  assert row in markdown
  assert written["plots"] == ["accuracy_vs_mult_adds.png", "accuracy_vs_params.png"]
  for name in written["plots"]:
    with open(os.path.join(out, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(os.path.join(out, name)) as image:
      image.verify()
      assert image.size[0] > 500 and image.size[1] > 400


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
