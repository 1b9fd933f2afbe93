"""Progress a person can follow: console lines, TensorBoard events and metrics.jsonl."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

log = logging.getLogger("mobileshuffle_jax")


class MetricWriter:
  """Scalars to `workdir/metrics.jsonl` and TensorBoard events (process 0 only).

  A run resumed at `start_step` first drops the lines of steps after it, which the
  interrupted run wrote but will be trained (and logged) again: each step appears once.
  Events are written by the tensorboard package's own writer, without TensorFlow.
  """

  def __init__(self, workdir: str, start_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    # pylint: disable-next=g-import-not-at-top
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    drop_lines_after(path, start_step)
    self._jsonl = open(path, "a")
    self._events = EventFileWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    # pylint: disable-next=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2, summary_pb2
    values = [summary_pb2.Summary.Value(tag=name, simple_value=float(value))
              for name, value in scalars.items()]
    self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                           summary=summary_pb2.Summary(value=values)))
    self._events.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._events.close()


def drop_lines_after(path: str, step: int) -> None:
  """Rewrite the JSON lines file `path` without its records of steps after `step`, and
  without a last line cut short by a kill; atomically, and only if anything goes."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    except (ValueError, KeyError, TypeError):
      continue  # a partial line: the process was killed while writing it
  if kept != lines:
    with open(path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(path + ".tmp", path)


def format_duration(seconds: float) -> str:
  seconds = int(seconds)
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class StepReporter:
  """Console lines: step, epoch, loss, top-1, learning rate, images/s and ETA."""

  def __init__(self, total_steps: int, steps_per_epoch: float, global_batch_size: int,
               start_step: int, enabled: bool = True):
    self.enabled = enabled
    self.total_steps = total_steps
    self.steps_per_epoch = steps_per_epoch
    self.global_batch_size = global_batch_size
    self._last_step, self._last_time = start_step, time.perf_counter()

  def report(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    now = time.perf_counter()
    steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self.total_steps - step) / max(steps_per_s, 1e-9)
    log.info(
        "step %d/%d  epoch %.2f  loss %.4f  top1 %.4f  lr %.5f  %.0f img/s  ETA %s",
        step, self.total_steps, step / self.steps_per_epoch, metrics["loss"],
        metrics["top1"], metrics["learning_rate"], steps_per_s * self.global_batch_size,
        format_duration(eta))

  def report_eval(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    log.info("eval at step %d: top1 %.4f  top5 %.4f  loss %.4f  (%d examples)", step,
                 metrics["top1"], metrics["top5"], metrics["loss"], metrics["num_examples"])
    # Evaluation time is not training throughput.
    self._last_time = time.perf_counter()

  def report_loop_efficiency(self, loop_images_per_s: float, bare_images_per_s: float,
                             steps: int) -> None:
    if not self.enabled:
      return
    log.info("loop efficiency %.1f%%: %.1f img/s over %d steps with logging, evaluation and "
             "checkpoints, against %.1f img/s of the bare step", 100 * loop_images_per_s /
             bare_images_per_s, loop_images_per_s, steps, bare_images_per_s)


def strict_json(value):
  """`value` with every non-finite float as None: JSON that any parser reads (no NaN)."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {key: strict_json(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict_json(item) for item in value]
  return value


def print_result(result: dict) -> None:
  """`result` as one strict JSON line on stdout, on a line of its own."""
  non_finite = sorted(key for key, value in result.items()
                      if isinstance(value, float) and not math.isfinite(value))
  if non_finite:
    log.warning("Not finite, printed as null: %s.", ", ".join(non_finite))
  sys.stderr.flush()
  print(json.dumps(strict_json(result), allow_nan=False), flush=True)
