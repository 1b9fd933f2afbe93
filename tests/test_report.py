"""The ablation report of a finished tiny sweep (conftest's `finished_root`): rows that
match the complexity counter, the tables and the plots; cells matched to the papers' rows."""

import json
import os

from PIL import Image

from mobileshuffle_jax import complexity, models, report
from tests.conftest import SWEEP_CELLS as CELLS
from tests.conftest import SWEEP_STEPS as STEPS


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
