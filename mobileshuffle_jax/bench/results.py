"""Running the measurements and reading their results: each model in its own process,
rounds combined into medians, ratios of ours to the peers, FLOP rates and the table."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from mobileshuffle_jax import allocator, cpu_kernels
from mobileshuffle_jax.bench.figures import FIGURES

# What every measuring process starts with. 'default' is a plain environment: ours then
# keeps freed memory for reuse, as importing the package does for any user (`allocator`),
# and the peers keep glibc's defaults. 'system' holds ours to glibc's defaults too;
# 'hugepages' backs everyone's large allocations with transparent huge pages.
MALLOC_ENV = {"default": {}, "system": {allocator.ENV_VAR: "system"},
              "hugepages": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}}
PEER_FRAMEWORKS = ("pytorch", "keras")


def run_in_subprocess(spec: dict, malloc: str = "default",
                      timeout_s: float | None = None) -> dict:
  """`__main__.MEASURE[spec['framework']](spec)` in a fresh Python process (the bench's
  `--worker`); its result (or error)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **MALLOC_ENV[malloc])
  if spec["framework"] in PEER_FRAMEWORKS:
    # The worker imports our package, whose allocator setting is ours, not the peers'.
    env[allocator.ENV_VAR] = "system"
  if spec["framework"] == "keras":
    env["KERAS_BACKEND"] = "tensorflow"
  if "cpu_kernels" in spec:
    env[cpu_kernels.ENV_VAR] = spec["cpu_kernels"]
  command = [sys.executable, "-m", "mobileshuffle_jax.bench", "--worker", json.dumps(spec)]
  try:
    done = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
  except subprocess.TimeoutExpired:
    return {**spec, "error": f"timed out after {timeout_s} s"}
  lines = done.stdout.strip().splitlines()
  if done.returncode != 0 or not lines:
    tail = "\n".join(done.stderr.strip().splitlines()[-15:])
    return {**spec, "error": f"exit status {done.returncode}: {tail}"}
  return json.loads(lines[-1])


def add_flop_rates(result: dict, mult_adds: int, matmul_gflops: float) -> None:
  """Achieved GFLOP/s (2 per mult-add, 3 passes for training) and their share of the matmul."""
  infer = 2 * mult_adds * result["infer_images_per_s"] / 1e9
  train = 3 * 2 * mult_adds * result["train_images_per_s"] / 1e9
  result.update(infer_gflops=infer, train_gflops=train,
                infer_fraction_of_matmul=infer / matmul_gflops,
                train_fraction_of_matmul=train / matmul_gflops)


def add_roofline(result: dict, mult_adds: int, matmul_gflops: float,
                 memory_gb_per_s: float) -> None:
  """The images/s a step could reach at the device's matmul rate or memory bandwidth,
  whichever binds first (FLOPs as `add_flop_rates`, bytes as XLA counts them), and the
  share of it the step reached."""
  for name, passes in (("train", 3), ("infer", 1)):
    if f"{name}_bytes_per_image" not in result:
      continue
    seconds_per_image = max(passes * 2 * mult_adds / (matmul_gflops * 1e9),
                            result[f"{name}_bytes_per_image"] / (memory_gb_per_s * 1e9))
    result[f"{name}_roofline_images_per_s"] = 1 / seconds_per_image
    result[f"{name}_fraction_of_roofline"] = (result[f"{name}_images_per_s"]
                                              * seconds_per_image)


def combine_rounds(rounds: list[list[dict]]) -> list[dict]:
  """One result per measured model from `rounds` (each a list of results, models in order).

  Figures are medians over the rounds, memory the largest of each figure; a model that failed
  in any round is reported with its first error.
  """
  combined = []
  for measurements in zip(*rounds):
    errors = [m for m in measurements if "error" in m]
    if errors:
      combined.append(errors[0])
      continue
    result = dict(measurements[0], rounds=len(measurements))
    for key in FIGURES:
      result[key] = statistics.median(m[key] for m in measurements)
    result["memory"] = {key: max(m["memory"][key] for m in measurements)
                        for key in measurements[0]["memory"]}
    combined.append(result)
  return combined


def median_speedups(rounds: list[list[dict]]) -> list[dict]:
  """For every pair of models measured in every round, the median of each `speedups` ratio
  over the rounds (each ratio taken within one round), and the ratios of each round."""
  per_round = [{(pair["ours"], pair["peer"]): pair for pair in speedups(results)}
               for results in rounds]
  combined = []
  for pair in speedups(combine_rounds(rounds)):
    in_rounds = [pairs[pair["ours"], pair["peer"]] for pairs in per_round]
    ratios = [key for key in pair if key not in ("ours", "peer")]
    combined.append({"ours": pair["ours"], "peer": pair["peer"],
                     **{key: statistics.median(p[key] for p in in_rounds) for key in ratios},
                     "by_round": [{key: p[key] for key in ratios} for p in in_rounds]})
  return combined


def _label(result: dict) -> str:
  if result["framework"] == "jax":
    kernels = f", {result['cpu_kernels']} kernels" if "cpu_kernels" in result else ""
    return f"ours ({result['lowering']}{kernels})"
  return result.get("model_name", result["framework"])


def speedups(results: list[dict]) -> list[dict]:
  """ours / peer for every (our lowering, peer) pair: above 1 means ours is faster.

  `*_cpu` compare CPU time per image (peer / ours), the steadier figure on a shared machine.
  """
  ours = [r for r in results if r["framework"] == "jax" and "error" not in r]
  peers = [r for r in results if r["framework"] in ("pytorch", "keras") and "error" not in r]
  return [{"ours": _label(a), "peer": _label(b),
           "train": a["train_images_per_s"] / b["train_images_per_s"],
           "infer": a["infer_images_per_s"] / b["infer_images_per_s"],
           "latency": b["latency_ms"] / a["latency_ms"],
           "train_cpu": b["train_cpu_ms_per_image"] / a["train_cpu_ms_per_image"],
           "infer_cpu": b["infer_cpu_ms_per_image"] / a["infer_cpu_ms_per_image"]}
          for a in ours for b in peers]


def _memory_mib(result: dict) -> str:
  memory = result["memory"]
  key = "device_peak_bytes" if "device_peak_bytes" in memory else "peak_rss_growth_bytes"
  return f"{memory[key] / 2**20:.0f}"


def format_report(report: dict) -> str:
  """The report as a table for people (`--json` prints `report` itself)."""
  config, machine = report["config"], report["machine"]
  lines = [f"{config['model']} {config['options']} at {config['resolution']} px, batch "
           f"{config['batch']}, {config['dtype']}; {machine['backend']} "
           f"({machine['device']}, {machine['cpu_count']} CPUs); median of "
           f"{config['repeats']} repeats, {config['rounds']} round(s)",
           f"CPU: {_cpu_line(machine.get('cpu', {}))}",
           f"malloc ({config['malloc']}): ours {_allocator_of(report, 'jax')}; peers "
           f"{_allocator_of(report, *PEER_FRAMEWORKS)}",
           "XLA:CPU kernels: " + " | ".join(sorted({
               r["kernel_library"] for r in report["results"]
               if r["framework"] == "jax" and "kernel_library" in r})),
           f"{report['mult_adds_per_image'] / 1e6:.1f} M mult-adds per image; "
           f"{machine.get('matmul_dtype', 'float32')} {machine['matmul_size']}^2 matmul: "
           f"{machine['matmul_gflops']:.0f} GFLOP/s"]
  # The host's CPU time says nothing of a step that runs on an accelerator.
  on_cpu = machine["backend"] == "cpu"
  header = ("model", "train img/s", "infer img/s", "batch-1 ms",
            *(("CPU ms/img train/infer",) if on_cpu else ()),
            "compile s train/infer", "peak MiB", "GFLOP/s infer", "GFLOP/s train")
  rows = []
  for r in report["results"]:
    if "error" in r:
      rows.append((_label(r), "error: " + r["error"].strip().splitlines()[-1][:80]))
      continue
    cpu_ms = f"{r['train_cpu_ms_per_image']:.0f} / {r['infer_cpu_ms_per_image']:.1f}"
    rows.append((_label(r), f"{r['train_images_per_s']:.1f}", f"{r['infer_images_per_s']:.1f}",
                 f"{r['latency_ms']:.1f}", *((cpu_ms,) if on_cpu else ()),
                 f"{r['compile_train_s']:.1f} / {r['compile_infer_s']:.1f}", _memory_mib(r),
                 f"{r['infer_gflops']:.0f} ({100 * r['infer_fraction_of_matmul']:.0f}%)",
                 f"{r['train_gflops']:.0f} ({100 * r['train_fraction_of_matmul']:.0f}%)"))
  lines += ["", *_table(header, rows)]
  if report["speedups"]:
    lines += ["", "ours / peer (above 1: ours faster): train, infer, batch-1 latency"
                  + ("; by CPU time: train, infer" if on_cpu else "")]
    lines += [f"  {s['ours']} / {s['peer']}: {s['train']:.2f}  {s['infer']:.2f}  "
              f"{s['latency']:.2f}"
              + (f";  {s['train_cpu']:.2f}  {s['infer_cpu']:.2f}" if on_cpu else "")
              for s in report["speedups"]]
  rooflines = [r for r in report["results"]
               if "error" not in r and "train_roofline_images_per_s" in r]
  if rooflines:
    lines += ["", f"roofline at {machine['matmul_gflops']:.0f} GFLOP/s and "
                  f"{machine['memory_gb_per_s']:.0f} GB/s (XLA's bytes per image): "
                  "bound img/s (share reached), train / infer"]
    lines += [f"  {_label(r)}: {r['train_roofline_images_per_s']:.0f} "
              f"({100 * r['train_fraction_of_roofline']:.0f}%) / "
              f"{r['infer_roofline_images_per_s']:.0f} "
              f"({100 * r['infer_fraction_of_roofline']:.0f}%); "
              f"{r['train_bytes_per_image'] / 2**20:.0f} / "
              f"{r['infer_bytes_per_image'] / 2**20:.0f} MiB per image" for r in rooflines]
  batchings = [r for r in report["results"] if "error" not in r and "inference_batching" in r]
  if batchings:
    lines += ["", "inference runs: " + "; ".join(
        f"{_label(r)}: {r['inference_batching']}" for r in batchings)]
  litert = report.get("litert")
  if litert and "error" in litert:
    lines += ["", f"LiteRT: error: {litert['error'].strip().splitlines()[-1]}"]
  elif litert:
    lines += ["", "our model as TFLite in LiteRT (XNNPACK), batch 1: " + ", ".join(
        f"{ms:.2f} ms with {n} thread{'s' if n != '1' else ''}"
        for n, ms in litert["latency_ms_by_threads"].items())]
  pipeline = report.get("input_pipeline")
  if pipeline and "error" in pipeline:
    lines += ["", f"input pipeline: error: {pipeline['error'].strip().splitlines()[-1]}"]
  elif pipeline:
    lines += ["", *_input_pipeline_lines(pipeline, config["resolution"], report["results"])]
  return "\n".join(lines)


def _cpu_line(cpu: dict) -> str:
  if not cpu:
    return "unknown"
  return (f"{cpu['model_name']} (vendor {cpu['vendor']}, family {cpu['family']}, model "
          f"{cpu['model']}); vector extensions: {' '.join(cpu['vector_extensions']) or 'none'}")


def _allocator_of(report: dict, *frameworks: str) -> str:
  """The allocator settings the measuring processes of `frameworks` reported."""
  seen = sorted({json.dumps(r["allocator"], sort_keys=True) for r in report["results"]
                 if r["framework"] in frameworks and "allocator" in r})
  if not seen:
    return "not measured"
  return " | ".join(
      f"{state['mallopt']}" + (f", GLIBC_TUNABLES={state['glibc_tunables']}"
                               if state["glibc_tunables"] else "")
      for state in map(json.loads, seen))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
  """Left-aligned columns; a row may stop short of the header (an error message)."""
  widths = [max(len(row[i]) for row in rows + [header] if i < len(row))
            for i in range(len(header))]
  return ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]


def _input_pipeline_lines(pipeline: dict, resolution: int, results: list[dict]) -> list[str]:
  """Each variant's images/s, images per CPU second, ratios to plain tf.data on the same path,
  and the cores it needs to feed each of our models as measured in this run: its training
  step for the training path, its inference for the evaluation path."""
  ours = [r for r in results if r["framework"] == "jax" and "error" not in r]
  reduced = pipeline["reduced"]
  lines = [f"input pipeline ({pipeline['data']}, {resolution} px, batch {pipeline['batch']}, "
           f"{pipeline['train_batches']} / {pipeline['eval_batches']} batches train / eval, "
           f"median of {pipeline['rounds']} round(s)); prepared: shorter side "
           f"{reduced['reduced_shorter_side']} px, JPEG quality {reduced['reduced_quality']}; "
           f"echo window {pipeline['echo_window']}",
           "cores to feed one device: our images/s in this run (training step for the "
           "training path, inference for evaluation) / images per CPU second"]
  header = ("variant", "img/s", "img per CPU s", "vs plain CPU / wall",
            *(f"cores to feed {_label(r)}" for r in ours))
  rows = []
  for name, variant in pipeline["variants"].items():
    model_key = "train_images_per_s" if variant["path"] == "train" else "infer_images_per_s"
    rows.append((name, f"{variant['images_per_s']:.0f}", f"{variant['images_per_cpu_s']:.0f}",
                 f"{variant['vs_plain_cpu']:.2f}x / {variant['vs_plain_wall']:.2f}x",
                 *(f"{r[model_key] / variant['images_per_cpu_s']:.3g}" for r in ours)))
  return lines + _table(header, rows)
