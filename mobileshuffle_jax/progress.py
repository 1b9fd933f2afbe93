"""Progress a person can follow: console lines, TensorBoard events and metrics.jsonl."""

from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger("mobileshuffle_jax")


class MetricWriter:
  """Scalars to `workdir/metrics.jsonl` and TensorBoard events (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    import tensorflow as tf  # the input pipeline has already hidden accelerators from it
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._tf = tf
    self._summary = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    with self._summary.as_default(step=step):
      for name, value in scalars.items():
        self._tf.summary.scalar(name, value)
    self._summary.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._summary.close()


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
