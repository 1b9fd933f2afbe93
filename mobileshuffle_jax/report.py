r"""Ablation report: the papers' tables and accuracy-vs-cost plots from sweep workdirs.

  python -m mobileshuffle_jax.report ROOT --out DIR [--speed-batch 32] [--speed-seconds 1]

Every directory under ROOT that holds a training run's config.json is a cell. Cells are
grouped by the directory above them (a sweep root of `mobileshuffle_jax.sweep`, ordered
and titled by its sweep.json when there is one), and DIR receives:

  report.md    one table per sweep in the papers' layout: model, top-1, top-5, million
               mult-adds, million parameters, inference images/s measured here; where a
               cell is a model the papers printed (same architecture options, same input
               size, 1000 classes) the paper's table, top-1 and mult-adds beside ours
  report.json  the same rows with exact counts
  accuracy_vs_mult_adds.png, accuracy_vs_params.png
               top-1 against cost (log scale), one line per family, every point labelled;
               with a `_<dataset>` suffix when ROOT holds cells of several data sets

Accuracy is the cell's final evaluation from its result.json (written by the sweep) or,
for a cell trained otherwise (the sweep's printed train.py commands) or still training,
the last `eval/*` record of its metrics.jsonl; the table gives the step evaluated.
Mult-adds and parameters are `complexity.count` of the cell's model at its input size,
classifier included, for its number of classes. Images/s: inference of the cell's model
with its latest weights (its conv lowering and compute dtype) on random images of its
input size, batch `--speed-batch`, the median of timed calls after a warm-up call, on
this process's default device. `mobileshuffle_jax.bench` measures more (a training step,
peers) and therefore compiles twice per model; the report needs inference only.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
from typing import Any, Sequence

import jax
import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or assumed
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
from matplotlib import ticker  # pylint: disable=wrong-import-position

from mobileshuffle_jax import (checkpointing, complexity, model_config, models, paper, sweep,
                               timing)

FAMILIES = {"mobilenet_v1": "MobileNet", "shufflenet_v1": "ShuffleNet"}
# The options that define an architecture, compared when matching a cell to a paper row.
ARCHITECTURE_OPTIONS = {"mobilenet_v1": ("alpha", "variant", "min_depth"),
                        "shufflenet_v1": ("groups", "scale", "shuffle", "variant",
                                          "conv1_channels")}
PAPER_CLASSES = 1000


def architecture(model: str, options: dict[str, Any]) -> dict[str, Any]:
  """The architecture-defining options of `model`, defaults filled in."""
  fields = {f.name: f.default for f in dataclasses.fields(models.MODELS[model])}
  return {name: options.get(name, fields[name]) for name in ARCHITECTURE_OPTIONS[model]}


def paper_match(model: str, options: dict[str, Any], resolution: int, num_classes: int,
                preferred_tables: Sequence[str] = ()) -> paper.PaperRow | None:
  """The paper row describing this very model, preferring `preferred_tables` in order."""
  if num_classes != PAPER_CLASSES:
    return None
  ours = architecture(model, options)
  matches = [row for row in paper.ALL_ROWS if row.model == model and row.resolution == resolution
             and architecture(row.model, row.options) == ours]
  rank = {table: i for i, table in enumerate(preferred_tables)}
  matches.sort(key=lambda row: rank.get(row.table, len(rank)))  # stable: paper order next
  return matches[0] if matches else None


def _multiplier(value: float) -> str:
  """A width multiplier as the papers print it: 1.0, 0.75, 0.5."""
  return f"{value:.1f}" if value == int(value) else f"{value:g}"


def model_label(model: str, options: dict[str, Any], resolution: int) -> tuple[str, str]:
  """(the papers' name for the model, a short label for plot points)."""
  arch = architecture(model, options)
  if model == "mobilenet_v1":
    alpha = _multiplier(arch["alpha"])
    if arch["variant"] == "full":
      return f"Conv MobileNet-{resolution} ({alpha})", f"{alpha} full-{resolution}"
    if arch["variant"] == "shallow":
      return f"Shallow {alpha} MobileNet-{resolution}", f"{alpha} shallow-{resolution}"
    return f"{alpha} MobileNet-{resolution}", f"{alpha}-{resolution}"
  details = [f"g = {arch['groups']}"]
  short = f"{arch['scale']:g}x g{arch['groups']}"
  if arch["variant"] == "shallow":
    details.append("shallow")
    short += " shallow"
  if not arch["shuffle"]:
    details.append("no shuffle")
    short += " no-shuffle"
  return (f"ShuffleNet {arch['scale']:g}x ({', '.join(details)}), {resolution} px",
          f"{short}-{resolution}")


def find_cells(root: str) -> list[str]:
  """Every training workdir under `root` (a directory holding config.json), sorted."""
  found = []
  for directory, subdirectories, files in os.walk(root):
    if checkpointing.CONFIG_FILE in files:
      found.append(directory)
      subdirectories[:] = []  # its checkpoints and events hold no cells
  return sorted(found)


def _last_eval(workdir: str) -> tuple[int, dict] | None:
  """(step, {top1, top5, loss, ...}) of the last eval record of metrics.jsonl."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  last = None
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      if "eval/top1" in record and (last is None or record["step"] >= last[0]):
        last = (record["step"], {key[len("eval/"):]: value for key, value in record.items()
                                 if key.startswith("eval/")})
  return last


def _num_classes_from_checkpoint(workdir: str) -> int:
  store = checkpointing.CheckpointStore(workdir, read_only=True)
  try:
    return store.restore_meta(store.latest_step())["model_options"]["num_classes"]
  finally:
    store.close()


@dataclasses.dataclass
class CellRecord:
  """What the report knows about one cell workdir."""
  workdir: str
  config: Any  # ml_collections.ConfigDict
  config_sha256: str  # of config.json: identical cells of two sweeps are plotted once
  step: int
  finished: bool  # result.json present: the sweep saw the cell through
  metrics: dict  # top1, top5, loss, num_examples
  num_classes: int


def read_cell(workdir: str) -> CellRecord | None:
  """The cell's config and latest evaluation; None before its first evaluation."""
  config = checkpointing.read_config_json(workdir)
  with open(os.path.join(workdir, checkpointing.CONFIG_FILE), "rb") as f:
    config_hash = hashlib.sha256(f.read()).hexdigest()
  result = sweep.read_result(workdir)
  if result is not None:
    return CellRecord(workdir, config, config_hash, result["step"], True, result["eval"],
                      result["num_classes"])
  last = _last_eval(workdir)
  if last is None:
    return None
  return CellRecord(workdir, config, config_hash, last[0], False, last[1],
                    _num_classes_from_checkpoint(workdir))


def latest_variables(workdir: str) -> dict:
  """The variables evaluation uses (the EMA where saved) of the latest checkpoint."""
  return checkpointing.restore_for_inference(workdir).variables


def inference_images_per_second(config, num_classes: int, variables: dict, batch: int,
                                 min_seconds: float) -> float:
  """Images/s of the cell's model in inference (see the module docstring)."""
  model = model_config.build_model(config, num_classes)
  size = config.data.image_size
  images = jax.random.normal(jax.random.key(0), (batch, size, size, model.input_channels))
  variables = jax.device_put(variables)
  infer = jax.jit(lambda v, x: model.apply(v, x, train=False))
  # The warm-up call compiles; then at least three calls, for `min_seconds` in all.
  elapsed = timing.measure(lambda: infer(variables, images).block_until_ready(), repeats=3,
                           warmup=1, min_seconds=min_seconds)
  return batch / elapsed.wall_s


def build_row(cell: CellRecord, preferred_tables: Sequence[str], speed_batch: int,
              speed_seconds: float, speed_cache: dict) -> dict:
  """One table row of `cell` (counts exact, accuracies as fractions)."""
  config = cell.config
  options = dict(config.model_options)
  resolution = config.data.image_size
  counts = complexity.count(
      models.build(config.model, **{**options, "num_classes": cell.num_classes}), resolution)
  label, short_label = model_label(config.model, options, resolution)
  speed_key = json.dumps([config.model, options, resolution, cell.num_classes,
                          config.get("lowering"), config.get("compute_dtype")],
                         sort_keys=True)
  if speed_key not in speed_cache:
    speed_cache[speed_key] = inference_images_per_second(
        config, cell.num_classes, latest_variables(cell.workdir), speed_batch, speed_seconds)
  row = {"cell": os.path.basename(cell.workdir), "workdir": cell.workdir,
         "config_sha256": cell.config_sha256, "model": config.model,
         "family": FAMILIES[config.model], "model_options": options,
         "resolution": resolution, "num_classes": cell.num_classes,
         "dataset": config.data.name, "label": label, "short_label": short_label,
         "top1": cell.metrics["top1"], "top5": cell.metrics["top5"],
         "num_examples": cell.metrics.get("num_examples"), "step": cell.step,
         "finished": cell.finished, "mult_adds": counts.mult_adds,
         "mult_adds_without_classifier": counts.mult_adds - counts.mult_adds_classifier,
         "params": counts.params, "images_per_second": speed_cache[speed_key],
         "paper": None}
  match = paper_match(config.model, options, resolution, cell.num_classes,
                      preferred_tables)
  if match is not None:
    row["paper"] = {"paper": FAMILIES[match.model], "table": match.table,
                    "label": match.label, "top1": match.top1,
                    "mult_adds_m": match.mult_adds_m,
                    "with_classifier": match.with_classifier}
  return row


def collect(root: str, speed_batch: int, speed_seconds: float) -> list[dict]:
  """One group per sweep root: {'name', 'description', 'root', 'rows', 'missing'}."""
  by_parent: dict[str, list[str]] = {}
  for workdir in find_cells(root):
    by_parent.setdefault(os.path.dirname(workdir), []).append(workdir)
  groups, speed_cache = [], {}
  for parent, workdirs in by_parent.items():
    definition = {}
    sweep_file = os.path.join(parent, sweep.SWEEP_FILE)
    if os.path.exists(sweep_file):
      with open(sweep_file) as f:
        definition = json.load(f)
    order = [cell["name"] for cell in definition.get("cells", [])]
    position = {name: i for i, name in enumerate(order)}
    workdirs.sort(key=lambda w: (position.get(os.path.basename(w), len(order)), w))
    records = {os.path.basename(w): read_cell(w) for w in workdirs}
    rows = [build_row(record, definition.get("paper_tables", ()), speed_batch,
                      speed_seconds, speed_cache)
            for record in records.values() if record is not None]
    missing = [name for name in order if records.get(name) is None]
    missing += [name for name, record in records.items()
                if record is None and name not in position]
    groups.append({"name": definition.get("name", os.path.basename(parent)),
                   "description": definition.get("description", ""), "root": parent,
                   "rows": rows, "missing": missing})
  return groups


def _millions(count: float) -> str:
  value = count / 1e6
  return f"{value:.1f}" if value >= 100 else f"{value:.2f}"


def _paper_mult_adds(row: dict) -> str:
  reference = row["paper"]
  printed = f"{reference['mult_adds_m']:g}"
  if reference["with_classifier"]:
    return printed
  return f"{printed} (no FC; ours {_millions(row['mult_adds_without_classifier'])})"


def format_table(rows: list[dict]) -> list[str]:
  with_paper = any(row["paper"] for row in rows)
  header = ["Model", "Top-1 (%)", "Top-5 (%)", "Million mult-adds", "Million params",
            "Images/s"]
  if with_paper:
    header += ["Paper (table)", "Paper top-1 (%)", "Paper million mult-adds"]
  header.append("Step")
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
  for row in rows:
    cells = [row["label"], f"{100 * row['top1']:.1f}", f"{100 * row['top5']:.1f}",
             _millions(row["mult_adds"]), _millions(row["params"]),
             f"{row['images_per_second']:,.0f}"]
    if with_paper:
      reference = row["paper"]
      if reference is None:
        cells += ["-", "-", "-"]
      else:
        top1 = "-" if reference["top1"] is None else f"{reference['top1']:.1f}"
        cells += [f"{reference['paper']} {reference['table']}", top1, _paper_mult_adds(row)]
    cells.append(f"{row['step']:,}" + ("" if row["finished"] else " (unfinished)"))
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def format_markdown(groups: list[dict], machine: dict) -> str:
  lines = ["# Ablation report", "",
           f"Images/s: inference at batch {machine['speed_batch']} on {machine['device']} "
           f"({machine['cpu_count']} CPUs), median of timed calls after a warm-up; on a "
           "shared machine they are indicative only. Mult-adds and parameters: "
           "`complexity.count` of each cell's model at its input size, classifier "
           "included. Accuracy: the evaluation at the step shown (top-1/top-5 on the data "
           "set's validation split)."]
  for group in groups:
    lines += ["", f"## {group['name']}", ""]
    datasets = sorted({row["dataset"] for row in group["rows"]})
    if group["description"]:
      lines += [group["description"].rstrip(".") + ".", ""]
    lines += [f"Data: {', '.join(datasets) or '-'}; cells in `{group['root']}`.", ""]
    if group["rows"]:
      lines += format_table(group["rows"])
      if not any(row["paper"] for row in group["rows"]):
        lines += ["", "No cell here is a model the papers printed (224 px input, 1000 "
                  "classes), so no paper figures stand beside these."]
    if group["missing"]:
      lines += ["", f"Not evaluated yet: {', '.join(group['missing'])}."]
  return "\n".join(lines) + "\n"


def _label_offsets(xs: list[float], ys: list[float]) -> list[tuple[int, int]]:
  """Text offsets (points) for labels of points sorted by x: a label goes below its point
  when the previous point is close (in log x and y, as fractions of the ranges)."""
  span_x = (math.log10(max(xs)) - math.log10(min(xs))) or 1.0
  span_y = (max(ys) - min(ys)) or 1.0
  offsets = [(5, 4)]
  for i in range(1, len(xs)):
    close = (abs(math.log10(xs[i] / xs[i - 1])) / span_x < 0.08
             and abs(ys[i] - ys[i - 1]) / span_y < 0.08)
    above = offsets[-1][1] > 0
    offsets.append((5, -11) if close and above else (5, 4))
  return offsets


def _log_axis_labels(axes, lowest: float, highest: float) -> None:
  """Plain numbers on a log axis; minor ticks labelled as densely as the range allows
  (a sweep often spans less than one decade, where the decades alone label nothing)."""
  decades = math.log10(highest / lowest)
  labelled = (set(range(1, 10)) if decades <= 1 else {2, 3, 5} if decades <= 2 else set())

  def minor(value, _):
    leading = int(round(value / 10 ** math.floor(math.log10(value) + 1e-9)))
    return f"{value:g}" if leading in labelled else ""

  axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
  axes.xaxis.set_minor_formatter(ticker.FuncFormatter(minor))
  axes.tick_params(axis="x", which="both", labelsize=8)


def plot(rows: list[dict], x_key: str, x_label: str, path: str, title: str) -> None:
  """Top-1 against `x_key` (log scale): one line per family, every point labelled."""
  styles = {"MobileNet": ("tab:blue", "o"), "ShuffleNet": ("tab:orange", "s")}
  figure, axes = plt.subplots(figsize=(8, 5.5), layout="constrained")
  for family, (color, marker) in styles.items():
    points = sorted((row for row in rows if row["family"] == family),
                    key=lambda row: row[x_key])
    if not points:
      continue
    xs = [row[x_key] / 1e6 for row in points]
    ys = [100 * row["top1"] for row in points]
    axes.plot(xs, ys, color=color, marker=marker, label=f"{family} (ours)")
    for x, y, row, offset in zip(xs, ys, points, _label_offsets(xs, ys)):
      axes.annotate(row["short_label"], (x, y), textcoords="offset points", xytext=offset,
                    fontsize=8, color=color)
    # The paper's accuracy for the same models, at our (identical) cost, for comparison.
    printed = [(x, row["paper"]["top1"]) for x, row in zip(xs, points)
               if row["paper"] and row["paper"]["top1"] is not None]
    if printed:
      axes.plot(*zip(*printed), color=color, marker=marker, linestyle="--",
                markerfacecolor="none", label=f"{family} (paper)")
  axes.set_xscale("log")
  axes.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
  everything = [row[x_key] / 1e6 for row in rows]
  _log_axis_labels(axes, min(everything), max(everything))
  axes.set_xlabel(x_label)
  axes.set_ylabel("top-1 accuracy (%)")
  axes.set_title(title)
  axes.grid(True, which="both", alpha=0.3)
  axes.legend()
  figure.savefig(path, dpi=150)
  plt.close(figure)


def write_plots(groups: list[dict], out: str) -> list[str]:
  """Both plots for every data set; identical cells of several sweeps appear once."""
  rows, seen = [], set()
  for group in groups:
    for row in group["rows"]:
      if row["config_sha256"] not in seen:
        seen.add(row["config_sha256"])
        rows.append(row)
  datasets = sorted({row["dataset"] for row in rows})
  paths = []
  for dataset in datasets:
    subset = [row for row in rows if row["dataset"] == dataset]
    suffix = f"_{dataset}" if len(datasets) > 1 else ""
    for key, label, name in (("mult_adds", "million mult-adds (log scale)", "mult_adds"),
                             ("params", "million parameters (log scale)", "params")):
      path = os.path.join(out, f"accuracy_vs_{name}{suffix}.png")
      plot(subset, key, label, path,
           f"Top-1 vs {label.split(' (')[0]} on {dataset} ({len(subset)} models)")
      paths.append(path)
  return paths


def write_report(root: str, out: str, speed_batch: int = 32,
                 speed_seconds: float = 1.0) -> dict:
  """Write report.md, report.json and the plots of the cells under `root` into `out`."""
  groups = collect(root, speed_batch, speed_seconds)
  if not any(group["rows"] for group in groups):
    raise ValueError(f"{root} holds no evaluated cell (directories with config.json and an "
                     "evaluation in result.json or metrics.jsonl)")
  device = jax.devices()[0]
  kind = ("" if device.device_kind.lower() == device.platform
          else f" ({device.device_kind})")  # a CPU's kind is just "cpu"
  machine = {"device": device.platform + kind,
             "cpu_count": os.cpu_count(), "speed_batch": speed_batch}
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(format_markdown(groups, machine))
  plots = write_plots(groups, out)
  report = {"machine": machine, "groups": groups,
            "plots": [os.path.basename(path) for path in plots]}
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mobileshuffle_jax.report",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("root", help="a sweep root, or a directory of sweep roots")
  parser.add_argument("--out", required=True, help="directory for the report and plots")
  parser.add_argument("--speed-batch", type=int, default=32,
                      help="inference batch of the images/s measurement")
  parser.add_argument("--speed-seconds", type=float, default=1.0,
                      help="time spent measuring each model's images/s")
  args = parser.parse_args(argv)
  try:
    report = write_report(args.root, args.out, args.speed_batch, args.speed_seconds)
  except ValueError as error:
    parser.error(str(error))
  print(f"wrote {os.path.join(args.out, 'report.md')}, report.json and "
        f"{', '.join(report['plots'])}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
