"""The one timer of the tools (benchmark, export checker, report, input-pipeline throughput):
medians of repeated calls."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, NamedTuple


class Timing(NamedTuple):
  """Medians over the repeats of one measured call: wall and process CPU seconds."""

  wall_s: float
  cpu_s: float


def measure(run: Callable[[], Any], repeats: int, warmup: int = 2,
            min_seconds: float = 0.0) -> Timing:
  """Medians of `run()` (which must wait for its result) after `warmup` calls.

  `run` is timed `repeats` times, and again until the timed calls span `min_seconds`.
  """
  for _ in range(warmup):
    run()
  walls, cpus = [], []
  deadline = time.perf_counter() + min_seconds
  while len(walls) < repeats or time.perf_counter() < deadline:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  return Timing(statistics.median(walls), statistics.median(cpus))
