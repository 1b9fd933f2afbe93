r"""Ablation report: the papers' tables, paired comparisons and accuracy-vs-cost plots, with
confidence intervals over seeds, from sweep workdirs.

  python -m mobileshuffle_jax.report ROOT --out DIR [--speed-batch 32] [--speed-seconds 1]

Every directory under ROOT that holds a training run's config.json is a run. A sweep
(`mobileshuffle_jax.sweep`) trains each cell once per seed in ROOT/<cell>/seed=<seed>:
the runs of a cell are those of its directory, which must agree in every config field but
the seeds. A run outside that layout is a cell of its own. Cells are grouped by sweep root
(ordered and titled by its sweep.json when there is one), and DIR receives:

  report.md     per sweep, one table in the papers' layout: model, top-1 and top-5 as
                mean +- standard deviation over seeds, the 95% confidence interval of the
                top-1 mean, the number of seeds, million mult-adds, million parameters,
                inference images/s measured here, and where a cell is a model the papers
                printed (same architecture options, same input size, 1000 classes) the
                paper's table, top-1 and mult-adds; then the sweep's comparisons
  results.json  `cells`: each cell's configuration (dotted fields, seeds excluded), its
                runs, and per metric (top1, top5, fractions) its `mean`, `std`, `n` and
                `ci95` [low, high]; `comparisons`: per pair of cells and metric, `diff`
                (treatment - baseline, mean over seeds), `std`, `n`, `seeds`, `ci95`
  accuracy_vs_mult_adds.png, accuracy_vs_params.png
                mean top-1 against cost (log scale) with 95% confidence intervals as error
                bars, one line per family, every point labelled; with a `_<dataset>`
                suffix when ROOT holds cells of several data sets

Statistics: over a cell's finished runs (over its evaluated ones while none has finished),
std is the sample standard deviation and ci95 the Student t interval of the mean,
mean +- t(0.975, n - 1) std / sqrt(n). With one seed both are undefined: null in
results.json, said so in report.md. A comparison (see COMPARISONS) pairs two cells of one
sweep the way the papers do, and takes the difference seed by seed over the seeds both
cells have, so that what the seeds share (initialization and data order) cancels; its
interval is the same Student t interval of those differences' mean.

Accuracy is a run's final evaluation from its result.json (written by the sweep) or, for a
run trained otherwise (the sweep's printed train.py commands) or still training, the last
`eval/*` record of its metrics.jsonl; the table gives the step evaluated. Mult-adds and
parameters are `complexity.count` of the cell's model at its input size, classifier
included, for its number of classes. Images/s: inference of the cell's model with the
latest weights of one of its runs (its conv lowering and compute dtype) on random images of
its input size, batch `--speed-batch`, the median of timed calls after a warm-up call, on
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
from typing import Any, Callable, Sequence

import jax
import matplotlib
import numpy as np
from scipy import stats

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


METRICS = ("top1", "top5")  # evaluated accuracies, as fractions
CONFIDENCE = 0.95
# Two models are "at equal mult-adds" when the larger count is at most this much above the
# smaller: the papers' own pairs differ by up to 11% (ShuffleNet Table 5).
MULT_ADDS_TOLERANCE = 0.25


def summarize(values: Sequence[float]) -> dict:
  """{'mean', 'std', 'n', 'ci95'} of `values` (one per seed): the sample standard deviation
  and the Student t interval of the mean; both None for a single value, whose spread is
  unknown."""
  if not values:
    raise ValueError("no values to summarize")
  array = np.asarray(values, np.float64)
  mean, n = float(array.mean()), len(array)
  if n == 1:
    return {"mean": mean, "std": None, "n": 1, "ci95": None}
  std = float(array.std(ddof=1))
  half_width = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
  return {"mean": mean, "std": std, "n": n, "ci95": [mean - half_width, mean + half_width]}


def paired_difference(treatment: dict[int, float], baseline: dict[int, float]) -> dict | None:
  """{'diff', 'std', 'n', 'seeds', 'ci95'} of treatment - baseline ({seed: value} each) over
  the seeds both have; None when they have none in common."""
  seeds = sorted(set(treatment) & set(baseline))
  if not seeds:
    return None
  summary = summarize([treatment[seed] - baseline[seed] for seed in seeds])
  return {"diff": summary["mean"], "std": summary["std"], "n": summary["n"], "seeds": seeds,
          "ci95": summary["ci95"]}


@dataclasses.dataclass(frozen=True)
class Comparison:
  """A question the papers answer by comparing two models, as a rule that pairs cells.

  Cell `a` is compared with cell `b` (difference a - b) when `treatment(a)` and
  `baseline(a, b)` hold, both cells have the same data set and classes, their configs agree
  in every field outside the dotted prefixes `varies` (None: any configs, e.g. two
  families each with its own recipe), and, with `equal_mult_adds`, b is among such
  baselines the one closest to a in mult-adds, within MULT_ADDS_TOLERANCE. Predicates read a
  cell of `collect`: 'model', 'architecture' (options with defaults), 'resolution',
  'mult_adds', 'config' ({dotted field: value}, seeds excluded).
  """
  kind: str
  question: str
  treatment: Callable[[dict], bool]
  baseline: Callable[[dict, dict], bool]
  varies: tuple[str, ...] | None
  equal_mult_adds: bool = False


def _shufflenet(cell: dict) -> bool:
  return cell["model"] == "shufflenet_v1"


def _mobilenet(cell: dict) -> bool:
  return cell["model"] == "mobilenet_v1"


def _same_teacher(a: dict, b: dict) -> bool:
  """Whether both cells learnt from the same teacher (config.distill) or both from labels
  alone: a pair of families with their own recipes is still no pair across that line."""
  return a["config"].get("distill.teacher") == b["config"].get("distill.teacher")


# The papers' comparisons, and distillation's; a new kind of comparison is one entry here.
COMPARISONS = (
    Comparison("shuffle", "ShuffleNet with vs without channel shuffle, equal g and width "
               "(ShuffleNet Table 3)",
               lambda a: _shufflenet(a) and a["architecture"]["shuffle"]
               and a["architecture"]["groups"] > 1,
               lambda a, b: _shufflenet(b) and not b["architecture"]["shuffle"],
               varies=("model_options.shuffle",)),
    Comparison("groups", "ShuffleNet g > 1 (g = 8) vs g = 1 at equal complexity "
               "(ShuffleNet Table 2)",
               lambda a: _shufflenet(a) and a["architecture"]["groups"] > 1
               and a["architecture"]["shuffle"],
               lambda a, b: _shufflenet(b) and b["architecture"]["groups"] == 1,
               varies=("model_options.groups",)),
    Comparison("family", "ShuffleNet vs MobileNet at equal mult-adds (ShuffleNet Table 5)",
               lambda a: _shufflenet(a) and a["architecture"]["shuffle"],
               lambda a, b: _mobilenet(b) and _same_teacher(a, b), varies=None,
               equal_mult_adds=True),
    Comparison("width_vs_resolution", "MobileNet wider at a lower resolution vs narrower "
               "at a higher one, equal mult-adds (MobileNet Tables 6/7)",
               _mobilenet,
               lambda a, b: (_mobilenet(b)
                             and b["architecture"]["alpha"] < a["architecture"]["alpha"]
                             and b["resolution"] > a["resolution"]),
               varies=("model_options.alpha", "data.image_size"), equal_mult_adds=True),
    Comparison("distillation", "a student taught by a teacher vs the same student alone "
               "(MobileNet section 4.6)",
               lambda a: a["config"].get("distill.teacher") is not None,
               lambda a, b: b["config"].get("distill.teacher") is None, varies=("distill",)),
)


def _same_except(a: dict, b: dict, prefixes: Sequence[str]) -> bool:
  """Whether two flat configs agree outside the dotted `prefixes`."""
  def free(field: str) -> bool:
    return any(field == prefix or field.startswith(prefix + ".") for prefix in prefixes)
  return all(a.get(field) == b.get(field) for field in a.keys() | b.keys() if not free(field))


def _mult_adds_gap(a: dict, b: dict) -> float:
  return abs(math.log(a["mult_adds"] / b["mult_adds"]))


def comparison_pairs(comparison: Comparison, cells: list[dict]) -> list[tuple[dict, dict]]:
  """(treatment, baseline) cells that `comparison` pairs (see Comparison)."""
  pairs = []
  for a in cells:
    if not comparison.treatment(a):
      continue
    partners = [b for b in cells if b is not a and comparison.baseline(a, b)
                and (a["dataset"], a["num_classes"]) == (b["dataset"], b["num_classes"])
                and (comparison.varies is None
                     or _same_except(a["config"], b["config"], comparison.varies))]
    if comparison.equal_mult_adds:
      partners = sorted((b for b in partners
                         if _mult_adds_gap(a, b) <= math.log1p(MULT_ADDS_TOLERANCE)),
                        key=lambda b: _mult_adds_gap(a, b))[:1]
    pairs += [(a, b) for b in partners]
  return pairs


def _by_seed(cell: dict, metric: str) -> dict[int, float]:
  """{seed: value} of the runs the cell's statistics use."""
  return {run["seed"]: run[metric] for run in cell["runs"] if run["seed"] in cell["seeds"]}


def compare(cells: list[dict], comparisons: Sequence[Comparison] = COMPARISONS
            ) -> list[dict]:
  """Every comparison among `cells`: one entry per pair and metric, paired by seed."""
  out = []
  for comparison in comparisons:
    for a, b in comparison_pairs(comparison, cells):
      for metric in METRICS:
        difference = paired_difference(_by_seed(a, metric), _by_seed(b, metric))
        if difference is not None:
          out.append({"kind": comparison.kind, "question": comparison.question,
                      **{role: {key: cell[key] for key in ("sweep", "cell", "label")}
                         for role, cell in (("treatment", a), ("baseline", b))},
                      "metric": metric, **difference})
  return out


def find_runs(root: str) -> list[str]:
  """Every training workdir under `root` (a directory holding config.json), sorted."""
  found = []
  for directory, subdirectories, files in os.walk(root):
    if checkpointing.CONFIG_FILE in files:
      found.append(directory)
      subdirectories[:] = []  # its checkpoints and events hold no runs
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


def cell_fingerprint(config_fields: dict) -> str:
  """What the runs of one cell share: every config field but the seeds."""
  return hashlib.sha256(json.dumps(config_fields, sort_keys=True, default=str)
                        .encode()).hexdigest()


@dataclasses.dataclass
class RunRecord:
  """What the report knows about one run workdir (a cell at one seed)."""
  workdir: str
  config: Any  # ml_collections.ConfigDict
  seed: int
  step: int
  finished: bool  # result.json present: the sweep saw the run through
  metrics: dict  # top1, top5, loss, num_examples
  num_classes: int

  def cell_fields(self) -> dict:
    """{dotted field: value} of the config, seeds excluded."""
    return {field: value for field, value in sweep.flatten(self.config.to_dict()).items()
            if field not in sweep.SEED_FIELDS}


def read_run(workdir: str) -> RunRecord | None:
  """The run's config and latest evaluation; None before its first evaluation."""
  config = checkpointing.read_config_json(workdir)
  result = sweep.read_result(workdir)
  if result is not None:
    return RunRecord(workdir, config, config.seed, result["step"], True, result["eval"],
                     result["num_classes"])
  last = _last_eval(workdir)
  if last is None:
    return None
  return RunRecord(workdir, config, config.seed, last[0], False, last[1],
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


def _check_one_cell(name: str, records: list[RunRecord]) -> None:
  """The runs of a cell differ in their seeds alone, and no seed is there twice."""
  fingerprints = {cell_fingerprint(record.cell_fields()): record for record in records}
  if len(fingerprints) > 1:
    first, other = list(fingerprints.values())[:2]
    raise ValueError(f"cell {name}: runs {first.workdir} and {other.workdir} differ in more "
                     "than their seeds; run the sweep again so that every run trains the "
                     "cell's current config")
  seeds = [record.seed for record in records]
  repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
  if repeated:
    raise ValueError(f"cell {name}: several runs of seed {repeated}: "
                     f"{', '.join(r.workdir for r in records if r.seed in repeated)}")


def build_cell(sweep_name: str, name: str, records: list[RunRecord],
               preferred_tables: Sequence[str], speed_batch: int, speed_seconds: float,
               speed_cache: dict) -> dict:
  """One cell: its model's counts, its runs, and statistics per metric over the finished
  runs (over the evaluated ones while none has finished)."""
  _check_one_cell(name, records)
  records = sorted(records, key=lambda record: record.seed)
  used = [record for record in records if record.finished] or records
  config, num_classes = used[0].config, used[0].num_classes
  options = dict(config.model_options)
  resolution = config.data.image_size
  counts = complexity.count(
      models.build(config.model, **{**options, "num_classes": num_classes}), resolution)
  label, short_label = model_label(config.model, options, resolution)
  if config.get("distill") and config.distill.get("teacher"):
    label, short_label = f"{label}, distilled", f"{short_label} distilled"
  speed_key = json.dumps([config.model, options, resolution, num_classes,
                          config.get("lowering"), config.get("compute_dtype")],
                         sort_keys=True)
  if speed_key not in speed_cache:
    speed_cache[speed_key] = inference_images_per_second(
        config, num_classes, latest_variables(used[0].workdir), speed_batch, speed_seconds)
  fields = used[0].cell_fields()
  cell = {"sweep": sweep_name, "cell": name, "config": fields,
          "fingerprint": cell_fingerprint(fields), "model": config.model,
          "family": FAMILIES[config.model], "model_options": options,
          "architecture": architecture(config.model, options), "resolution": resolution,
          "num_classes": num_classes, "dataset": config.data.name, "label": label,
          "short_label": short_label, "seeds": [record.seed for record in used],
          **{metric: summarize([record.metrics[metric] for record in used])
             for metric in METRICS},
          "step": min(record.step for record in used),
          "finished": all(record.finished for record in used),
          "runs": [{"seed": record.seed, "workdir": record.workdir, "step": record.step,
                    "finished": record.finished,
                    **{metric: record.metrics[metric] for metric in METRICS}}
                   for record in records],
          "mult_adds": counts.mult_adds,
          "mult_adds_without_classifier": counts.mult_adds - counts.mult_adds_classifier,
          "params": counts.params, "images_per_second": speed_cache[speed_key],
          "paper": None}
  match = paper_match(config.model, options, resolution, num_classes, preferred_tables)
  if match is not None:
    cell["paper"] = {"paper": FAMILIES[match.model], "table": match.table,
                     "label": match.label, "top1": match.top1,
                     "mult_adds_m": match.mult_adds_m,
                     "with_classifier": match.with_classifier}
  return cell


def unique_cells(groups: list[dict]) -> list[dict]:
  """The cells of every group; a cell of several sweeps (the same config) once."""
  cells = {}
  for group in groups:
    for cell in group["cells"]:
      cells.setdefault(cell["fingerprint"], cell)
  return list(cells.values())


def collect(root: str, speed_batch: int, speed_seconds: float) -> list[dict]:
  """One group per sweep root: {'name', 'description', 'root', 'cells', 'missing'}
  ('missing': the runs its sweep.json plans that have no evaluation yet)."""
  by_root: dict[str, dict[str, list[str]]] = {}
  for workdir in find_runs(root):
    sweep_root, cell_name, _ = sweep.parse_run_workdir(workdir)
    by_root.setdefault(sweep_root, {}).setdefault(cell_name, []).append(workdir)
  groups, speed_cache = [], {}
  for sweep_root, workdirs_by_cell in by_root.items():
    definition = {}
    sweep_file = os.path.join(sweep_root, sweep.SWEEP_FILE)
    if os.path.exists(sweep_file):
      with open(sweep_file) as f:
        definition = json.load(f)
    name = definition.get("name", os.path.basename(sweep_root))
    order = [cell["name"] for cell in definition.get("cells", [])]
    position = {cell_name: i for i, cell_name in enumerate(order)}
    evaluated: dict[str, list[RunRecord]] = {}
    for cell_name in sorted(workdirs_by_cell, key=lambda c: (position.get(c, len(order)), c)):
      records = [read_run(workdir) for workdir in workdirs_by_cell[cell_name]]
      evaluated[cell_name] = [record for record in records if record is not None]
    cells = [build_cell(name, cell_name, records, definition.get("paper_tables", ()), speed_batch,
                        speed_seconds, speed_cache)
             for cell_name, records in evaluated.items() if records]
    seen = {(cell_name, record.seed) for cell_name, records in evaluated.items()
            for record in records}
    missing = [f"{cell_name} (seed {seed})" for seed in definition.get("seeds", [0])
               for cell_name in order if (cell_name, seed) not in seen]
    groups.append({"name": name, "description": definition.get("description", ""),
                   "root": sweep_root, "cells": cells, "missing": missing})
  return groups


def _millions(count: float) -> str:
  value = count / 1e6
  return f"{value:.1f}" if value >= 100 else f"{value:.2f}"


def _paper_mult_adds(cell: dict) -> str:
  reference = cell["paper"]
  printed = f"{reference['mult_adds_m']:g}"
  if reference["with_classifier"]:
    return printed
  return f"{printed} (no FC; ours {_millions(cell['mult_adds_without_classifier'])})"


def _percent_with_std(summary: dict) -> str:
  """'71.9 +- 2.1' (percent; std over seeds), or '71.9' for one seed."""
  mean = f"{100 * summary['mean']:.1f}"
  return mean if summary["std"] is None else f"{mean} ± {100 * summary['std']:.1f}"


def _interval(ci95: list[float] | None, signed: bool = False) -> str:
  """'[69.3, 74.5]' in percent (points), or why there is none."""
  if ci95 is None:
    return "n/a (1 seed)"
  sign = "+" if signed else ""
  return f"[{100 * ci95[0]:{sign}.1f}, {100 * ci95[1]:{sign}.1f}]"


def format_table(cells: list[dict]) -> list[str]:
  with_paper = any(cell["paper"] for cell in cells)
  header = ["Model", "Top-1 (%)", "Top-1 95% CI", "Top-5 (%)", "Seeds", "Million mult-adds",
            "Million params", "Images/s"]
  if with_paper:
    header += ["Paper (table)", "Paper top-1 (%)", "Paper million mult-adds"]
  header.append("Step")
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
  for cell in cells:
    row = [cell["label"], _percent_with_std(cell["top1"]), _interval(cell["top1"]["ci95"]),
           _percent_with_std(cell["top5"]), str(cell["top1"]["n"]),
           _millions(cell["mult_adds"]), _millions(cell["params"]),
           f"{cell['images_per_second']:,.0f}"]
    if with_paper:
      reference = cell["paper"]
      if reference is None:
        row += ["-", "-", "-"]
      else:
        top1 = "-" if reference["top1"] is None else f"{reference['top1']:.1f}"
        row += [f"{reference['paper']} {reference['table']}", top1, _paper_mult_adds(cell)]
    row.append(f"{cell['step']:,}" + ("" if cell["finished"] else " (unfinished)"))
    lines.append("| " + " | ".join(row) + " |")
  return lines


def format_comparisons(comparisons: list[dict]) -> list[str]:
  """Per kind, its question and one row per pair of cells: the top-1 and top-5 differences
  with their intervals."""
  by_kind: dict[str, dict[tuple[str, ...], dict[str, dict]]] = {}
  for entry in comparisons:
    pair = tuple(entry[role][key] for role in ("treatment", "baseline")
                 for key in ("sweep", "cell"))
    by_kind.setdefault(entry["kind"], {}).setdefault(pair, {})[entry["metric"]] = entry
  header = ["Treatment", "Baseline", "Seeds", "Δ top-1 (points)", "95% CI",
            "Δ top-5 (points)", "95% CI"]
  lines = []
  for pairs in by_kind.values():
    first = next(iter(pairs.values()))["top1"]
    lines += ["", f"### {first['question']}", "", "| " + " | ".join(header) + " |",
              "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for metrics in pairs.values():
      top1 = metrics["top1"]
      row = [top1["treatment"]["label"], top1["baseline"]["label"], str(top1["n"])]
      for metric in METRICS:
        row += [f"{100 * metrics[metric]['diff']:+.1f}",
                _interval(metrics[metric]["ci95"], signed=True)]
      lines.append("| " + " | ".join(row) + " |")
  return lines


def format_markdown(groups: list[dict], comparisons: list[dict], machine: dict) -> str:
  lines = ["# Ablation report", "",
           f"Images/s: inference at batch {machine['speed_batch']} on {machine['device']} "
           f"({machine['cpu_count']} CPUs), median of timed calls after a warm-up; on a "
           "shared machine they are indicative only. Mult-adds and parameters: "
           "`complexity.count` of each cell's model at its input size, classifier "
           "included. Accuracy: the evaluation at the step shown (top-1/top-5 on the data "
           "set's validation split), mean ± sample standard deviation over the cell's "
           "seeds; 95% CI: the Student t interval of the mean, undefined for one seed. "
           "Comparisons take the difference seed by seed (treatment - baseline, in "
           "percentage points) over the seeds both cells have; an interval that excludes 0 "
           "is a difference those seeds resolve."]
  for group in groups:
    lines += ["", f"## {group['name']}", ""]
    datasets = sorted({cell["dataset"] for cell in group["cells"]})
    if group["description"]:
      lines += [group["description"].rstrip(".") + ".", ""]
    lines += [f"Data: {', '.join(datasets) or '-'}; runs in `{group['root']}`.", ""]
    if group["cells"]:
      lines += format_table(group["cells"])
      if not any(cell["paper"] for cell in group["cells"]):
        lines += ["", "No cell here is a model the papers printed (224 px input, 1000 "
                  "classes), so no paper figures stand beside these."]
    if group["missing"]:
      lines += ["", f"Not evaluated yet: {', '.join(group['missing'])}."]
  if comparisons:
    lines += ["", "## Comparisons, paired by seed", "",
              "Each row: treatment - baseline, seed by seed over the seeds both cells have "
              "(the cells may come from different sweeps), in percentage points; the mean "
              "and its Student t 95% CI. An interval that excludes 0 is a difference those "
              "seeds resolve."]
    lines += format_comparisons(comparisons)
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


def plot(cells: list[dict], x_key: str, x_label: str, path: str, title: str) -> None:
  """Mean top-1 against `x_key` (log scale) with 95% confidence intervals as error bars:
  one line per family, every point labelled."""
  styles = {"MobileNet": ("tab:blue", "o"), "ShuffleNet": ("tab:orange", "s")}
  figure, axes = plt.subplots(figsize=(8, 5.5), layout="constrained")
  for family, (color, marker) in styles.items():
    points = sorted((cell for cell in cells if cell["family"] == family),
                    key=lambda cell: cell[x_key])
    if not points:
      continue
    xs = [cell[x_key] / 1e6 for cell in points]
    ys = [100 * cell["top1"]["mean"] for cell in points]
    # One seed: no interval, no bar (its point stands alone).
    intervals = [cell["top1"]["ci95"] or [cell["top1"]["mean"]] * 2 for cell in points]
    errors = [[y - 100 * low for y, (low, _) in zip(ys, intervals)],
              [100 * high - y for y, (_, high) in zip(ys, intervals)]]
    axes.errorbar(xs, ys, yerr=errors, color=color, marker=marker, capsize=3,
                  label=f"{family} (ours, mean and 95% CI over seeds)")
    for x, y, cell, offset in zip(xs, ys, points, _label_offsets(xs, ys)):
      axes.annotate(f"{cell['short_label']} (n={cell['top1']['n']})", (x, y),
                    textcoords="offset points", xytext=offset, fontsize=8, color=color)
    # The paper's accuracy for the same models, at our (identical) cost, for comparison.
    printed = [(x, cell["paper"]["top1"]) for x, cell in zip(xs, points)
               if cell["paper"] and cell["paper"]["top1"] is not None]
    if printed:
      axes.plot(*zip(*printed), color=color, marker=marker, linestyle="--",
                markerfacecolor="none", label=f"{family} (paper)")
  axes.set_xscale("log")
  axes.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
  everything = [cell[x_key] / 1e6 for cell in cells]
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
  cells = unique_cells(groups)
  datasets = sorted({cell["dataset"] for cell in cells})
  paths = []
  for dataset in datasets:
    subset = [cell for cell in cells if cell["dataset"] == dataset]
    suffix = f"_{dataset}" if len(datasets) > 1 else ""
    for key, label, name in (("mult_adds", "million mult-adds (log scale)", "mult_adds"),
                             ("params", "million parameters (log scale)", "params")):
      path = os.path.join(out, f"accuracy_vs_{name}{suffix}.png")
      plot(subset, key, label, path,
           f"Top-1 vs {label.split(' (')[0]} on {dataset} ({len(subset)} models)")
      paths.append(path)
  return paths


def results_json(groups: list[dict], comparisons: list[dict], machine: dict,
                 plots: list[str]) -> dict:
  """results.json (see the module docstring): every sweep's cells, and the comparisons."""
  return {"machine": machine, "confidence": CONFIDENCE, "metrics": list(METRICS),
          "sweeps": [{key: group[key] for key in ("name", "description", "root", "missing")}
                     for group in groups],
          "cells": [cell for group in groups for cell in group["cells"]],
          "comparisons": comparisons,
          "plots": [os.path.basename(path) for path in plots]}


def write_report(root: str, out: str, speed_batch: int = 32,
                 speed_seconds: float = 1.0) -> dict:
  """Write report.md, results.json and the plots of the runs under `root` into `out`."""
  groups = collect(root, speed_batch, speed_seconds)
  comparisons = compare(unique_cells(groups))
  if not any(group["cells"] for group in groups):
    raise ValueError(f"{root} holds no evaluated run (directories with config.json and an "
                     "evaluation in result.json or metrics.jsonl)")
  device = jax.devices()[0]
  kind = ("" if device.device_kind.lower() == device.platform
          else f" ({device.device_kind})")  # a CPU's kind is just "cpu"
  machine = {"device": device.platform + kind,
             "cpu_count": os.cpu_count(), "speed_batch": speed_batch}
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(format_markdown(groups, comparisons, machine))
  results = results_json(groups, comparisons, machine, write_plots(groups, out))
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  return results


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
  print(f"wrote {os.path.join(args.out, 'report.md')}, results.json and "
        f"{', '.join(report['plots'])}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
