"""The benchmark runs end to end at tiny settings and reports every field (no time asserted)."""

import json
import os

import pytest

from mobileshuffle_jax import allocator
from mobileshuffle_jax.bench import __main__ as bench_cli
from mobileshuffle_jax.bench import peers, photos
from mobileshuffle_jax.bench import results as bench_results
from mobileshuffle_jax.bench.figures import FIGURES

TINY = ["--resolution", "64", "--batch", "2", "--repeats", "1", "--matmul-size", "64"]

def _check_figures(result):
  assert "error" not in result, result.get("error")
  for key in FIGURES:
    assert result[key] > 0, key
  assert "peak_rss_growth_bytes" in result["memory"]


def test_json_report_of_our_model(capsys):
  assert bench_cli.main(["--model", "mobilenet_v1", "--alpha", "0.25", "--lowering", "fast",
                         "--json", "--tflite", *TINY]) == 0
  report = json.loads(capsys.readouterr().out)
  assert report["config"] == {"model": "mobilenet_v1", "options": {"alpha": 0.25},
                              "batch": 2, "resolution": 64, "repeats": 1,
                              "dtype": "float32", "malloc": "default", "rounds": 1}
  assert report["machine"]["matmul_gflops"] > 0
  cpu = report["machine"]["cpu"]
  assert cpu["model_name"] and "sse4_2" in cpu["vector_extensions"]
  # A plain environment: ours keeps freed memory for reuse by itself (Linux, glibc).
  assert report["results"][0]["allocator"] == {
      "mallopt": allocator.keep_freed_memory(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}
  assert report["results"][0]["allocator"]["mallopt"].startswith("freed memory kept")
  assert (report["machine"]["backend"], report["machine"]["matmul_dtype"]) == ("cpu", "float32")
  assert report["mult_adds_per_image"] > 0
  (result,) = report["results"]
  _check_figures(result)
  assert result["framework"] == "jax"
  assert result["lowering"] == result["resolved_lowering"] == "fast"
  assert result["memory"]["train_temp_bytes"] > 0
  assert result["infer_gflops"] > 0 and result["train_fraction_of_matmul"] > 0
  assert report["machine"]["memory_gb_per_s"] > 0
  # The roofline: bytes as XLA counts them (a training step moves more than inference).
  assert result["train_bytes_per_image"] > result["infer_bytes_per_image"] > 0
  assert result["train_roofline_images_per_s"] > 0 and result["infer_fraction_of_roofline"] > 0
  # Two 64 px images fit any cache (and the Makefile's simulated devices rule chunks out).
  assert result["inference_batching"] == "the whole batch of 2"
  assert report["speedups"] == []
  assert set(report["litert"]["latency_ms_by_threads"]) == {"1", "2"}
  assert min(report["litert"]["latency_ms_by_threads"].values()) > 0


def test_input_pipeline_variants_are_measured_in_one_process(data_dir):
  """What `--input-pipeline digits --json` reports under 'input_pipeline' (in this process:
  its worker would import TensorFlow again)."""
  pipeline = photos.measure_input_pipeline({"data": "digits", "data_dir": str(data_dir),
                                            "resolution": 32, "batch": 4, "batches": 2,
                                            "rounds": 1})
  assert set(pipeline["variants"]) == {"plain_tfdata", "default", "prepared", "prepared_echo2",
                                       "eval_plain_tfdata", "eval_default", "eval_prepared"}
  for name, variant in pipeline["variants"].items():
    assert variant["path"] == ("eval" if name.startswith("eval_") else "train")
    assert variant["images_per_s"] > 0 and variant["images_per_cpu_s"] > 0
    assert variant["vs_plain_cpu"] > 0 and len(variant["by_round"]) == 1
  assert pipeline["variants"]["plain_tfdata"]["vs_plain_wall"] == 1.0
  assert (pipeline["train_batches"], pipeline["eval_batches"], pipeline["rounds"]) == (2, 2, 1)


def test_peers_run_in_their_own_processes():
  spec = {"model": "mobilenet_v1", "options": {"alpha": 0.25}, "batch": 2, "resolution": 64,
          "repeats": 1}
  results = [bench_results.run_in_subprocess(dict(spec, framework=framework))
             for framework in ("pytorch", "keras")]
  for result in results:
    _check_figures(result)
  assert results[0]["model_name"] == "pytorchcv mobilenet_wd4"
  ours = dict(results[0], framework="jax", lowering="fast")
  (speedup,) = [s for s in bench_results.speedups([ours, results[1]])]
  assert speedup["peer"] == "keras-tf MobileNet" and speedup["train"] > 0


@pytest.mark.parametrize("model,options,expected", [
    ("mobilenet_v1", {"alpha": 1.0}, "mobilenet_w1"),
    ("mobilenet_v1", {"alpha": 0.25}, "mobilenet_wd4"),
    ("shufflenet_v1", {"groups": 8, "scale": 1.0}, "shufflenet_g8_w1"),
    ("shufflenet_v1", {"groups": 3, "scale": 0.5}, "shufflenet_g3_wd2"),
])
def test_pytorchcv_names(model, options, expected):
  assert peers.pytorchcv_name(model, options) == expected


@pytest.mark.parametrize("model,options", [
    ("mobilenet_v1", {"alpha": 0.6}), ("shufflenet_v1", {"groups": 8, "scale": 0.5})])
def test_configurations_pytorchcv_lacks_are_refused(model, options):
  with pytest.raises(ValueError, match="pytorchcv has no"):
    peers.pytorchcv_name(model, options)


def test_table_shows_results_errors_ratios_and_the_input_pipeline():
  figures = dict(train_images_per_s=10.0, infer_images_per_s=50.0, latency_ms=20.0,
                 train_cpu_ms_per_image=150.0, infer_cpu_ms_per_image=30.0,
                 compile_train_s=9.0, compile_infer_s=2.0,
                 memory={"peak_rss_growth_bytes": 2**30})
  ours = dict(figures, framework="jax", lowering="fast",
              inference_batching="chunks of 2 of the batch of 32")
  peer = dict(figures, framework="pytorch", model_name="pytorchcv mobilenet_w1",
              train_images_per_s=5.0, train_cpu_ms_per_image=300.0)
  for result in (ours, peer):
    bench_results.add_flop_rates(result, 568_740_352, 200.0)
  results = [ours, peer, {"framework": "keras", "error": "exit status 1: ImportError: keras"}]
  report = {"config": {"model": "mobilenet_v1", "options": {"alpha": 1.0}, "batch": 32,
                       "resolution": 224, "repeats": 5, "dtype": "float32",
                       "malloc": "hugepages", "rounds": 1},
            "machine": {"backend": "cpu", "device": "cpu", "cpu_count": 2,
                        "matmul_size": 4096, "matmul_gflops": 200.0},
            "mult_adds_per_image": 568_740_352, "results": results,
            "speedups": bench_results.speedups(results),
            "input_pipeline": {
                "data": "photos", "batch": 32, "train_batches": 80, "eval_batches": 31,
                "rounds": 3, "reduced": photos.REDUCED, "echo_window": 64,
                "variants": {name: {"path": path, "images_per_s": 900.0,
                                    "images_per_cpu_s": 500.0 * (1 + (name != "default")),
                                    "vs_plain_cpu": 1.5, "vs_plain_wall": 1.25}
                             for name, (path, _) in photos.VARIANTS.items()}}}
  table = bench_results.format_report(report)
  assert "ours (fast)" in table and "error: exit status 1: ImportError: keras" in table
  assert "inference runs: ours (fast): chunks of 2 of the batch of 32" in table
  assert "ours (fast) / pytorchcv mobilenet_w1: 2.00  1.00  1.00;  2.00  1.00" in table
  # Cores to feed ours: 10 training (50 inference) images/s over 500 or 1000 per CPU second.
  header, default, eval_default = [
      next(line for line in table.splitlines() if line.startswith(start))
      for start in ("variant ", "default ", "eval_default ")]
  assert header.endswith("cores to feed ours (fast)")
  assert default.split()[1:] == ["900", "500", "1.50x", "/", "1.25x", "0.02"]
  assert eval_default.split()[1:] == ["900", "1000", "1.50x", "/", "1.25x", "0.05"]
  assert "shorter side 256 px, JPEG quality 90; echo window 64" in table
  assert "CPU ms/img" in table and "by CPU time" in table
  # On an accelerator the host's CPU time per image is not a figure of the model.
  report["machine"] = dict(report["machine"], backend="gpu", device="NVIDIA H200",
                           matmul_dtype="bfloat16")
  table = bench_results.format_report(report)
  assert "CPU ms/img" not in table and "by CPU time" not in table
  assert "bfloat16 4096^2 matmul" in table
  assert "ours (fast) / pytorchcv mobilenet_w1: 2.00  1.00  1.00\n" in table + "\n"


def _result(framework, train, infer, latency=10.0, **extra):
  return dict(framework=framework, train_images_per_s=train, infer_images_per_s=infer,
              latency_ms=latency, train_cpu_ms_per_image=1000 / train,
              infer_cpu_ms_per_image=1000 / infer, compile_train_s=1.0, compile_infer_s=1.0,
              memory={"peak_rss_growth_bytes": 2**20 * train}, **extra)


def test_rounds_give_medians_and_ratios_taken_within_each_round():
  # The load changes between rounds: every model is half as fast in the second round.
  rounds = [[_result("jax", 12, 100, lowering="fast"), _result("pytorch", 10, 50)],
            [_result("jax", 6, 50, lowering="fast"), _result("pytorch", 5, 25)],
            [_result("jax", 14, 90, lowering="fast"), _result("pytorch", 10, 60)]]
  ours, peer = bench_results.combine_rounds(rounds)
  assert (ours["train_images_per_s"], ours["infer_images_per_s"]) == (12, 90)
  assert (peer["train_images_per_s"], peer["infer_images_per_s"]) == (10, 50)
  assert ours["rounds"] == 3 and ours["memory"]["peak_rss_growth_bytes"] == 14 * 2**20
  (pair,) = bench_results.median_speedups(rounds)
  assert (pair["ours"], pair["peer"]) == ("ours (fast)", "pytorch")
  # Ratios per round: train 1.2, 1.2, 1.4; infer 2.0, 2.0, 1.5.
  assert pair["train"] == pytest.approx(1.2) and pair["infer"] == pytest.approx(2.0)
  assert pair["latency"] == pytest.approx(1.0)
  assert [r["train"] for r in pair["by_round"]] == pytest.approx([1.2, 1.2, 1.4])


def test_a_model_that_failed_in_any_round_reports_its_error_and_no_ratio():
  rounds = [[_result("jax", 12, 100, lowering="fast"), _result("keras", 10, 50)],
            [_result("jax", 12, 100, lowering="fast"),
             {"framework": "keras", "error": "timed out after 60 s"}]]
  ours, keras = bench_results.combine_rounds(rounds)
  assert "error" not in ours and keras["error"] == "timed out after 60 s"
  assert bench_results.median_speedups(rounds) == []


def test_rounds_must_be_positive(capsys):
  with pytest.raises(SystemExit):
    bench_cli.main(["--rounds", "0", *TINY])
  assert "--rounds=0 must be at least 1" in capsys.readouterr().err
