"""The figures every measured framework reports, and the helpers that take them."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any, Callable

from mobileshuffle_jax.timing import Timing

# The timed figures of every measured model (each a median over its repeats).
FIGURES = ("train_images_per_s", "infer_images_per_s", "latency_ms", "train_cpu_ms_per_image",
           "infer_cpu_ms_per_image", "compile_train_s", "compile_infer_s")


def peak_rss_bytes() -> int:
  """The process's peak resident set so far (ru_maxrss is in KiB on Linux, bytes on macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak if sys.platform == "darwin" else peak * 1024


def from_timings(batch: int, train: Timing, infer: Timing, latency: Timing,
                 compile_train_s: float, compile_infer_s: float, rss_before: int) -> dict:
  """`FIGURES` and the memory figure, from a framework's measurements."""
  return {"train_images_per_s": batch / train.wall_s,
          "infer_images_per_s": batch / infer.wall_s, "latency_ms": latency.wall_s * 1e3,
          "train_cpu_ms_per_image": train.cpu_s / batch * 1e3,
          "infer_cpu_ms_per_image": infer.cpu_s / batch * 1e3,
          "compile_train_s": compile_train_s, "compile_infer_s": compile_infer_s,
          "memory": {"peak_rss_growth_bytes": peak_rss_bytes() - rss_before}}


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
  """call()'s result and the seconds it took."""
  start = time.perf_counter()
  result = call()
  return result, time.perf_counter() - start
