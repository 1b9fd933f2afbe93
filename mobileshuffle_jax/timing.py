"""The one timer of the tools (benchmark, export checker): medians of repeated calls."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, NamedTuple


class Timing(NamedTuple):
  """Medians over the repeats of one measured call: wall and process CPU seconds."""

  wall_s: float
  cpu_s: float


def measure(run: Callable[[], Any], repeats: int, warmup: int = 2) -> Timing:
  """Medians of `run()` (which must wait for its result) after `warmup` calls."""
  for _ in range(warmup):
    run()
  walls, cpus = [], []
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  return Timing(statistics.median(walls), statistics.median(cpus))
