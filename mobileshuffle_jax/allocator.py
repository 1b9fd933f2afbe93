"""glibc's malloc set to keep freed memory for reuse, applied when the package is imported.

XLA:CPU allocates the buffers of an execution anew on every call, over a GiB for a
MobileNet training step. With glibc's defaults each large buffer is an mmap of its own,
returned to the kernel when freed, so every step faults its memory back in 4 KiB at a time:
173,600 page faults per MobileNet v1 1.0 training step at batch 16, 26,200 per inference
(measured with `getrusage` on a 2-core AMD EPYC, family 25: Zen 3). The benchmark used to start its
processes with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, which makes those faults 2 MiB each
(880 per training step), but a tunable is read only when a process starts, and
`python train.py` or a notebook calling `predict` never had it.

`mallopt` works inside a running process: one arena, no mmap-backed chunks, and no trimming
of the heap keep the memory of one step for the next. Trimming is off altogether (a
threshold of -1), not merely raised: mallopt takes an int, and with the largest one, 2 GiB,
a MobileNet v1 1.0 training step at batch 32 (3.5 GiB at its peak) freed more than that at
the top of the heap at its end, so glibc returned it and the next step faulted it back:
on a 2-core AMD EPYC (family 25, model 17: Zen 4), 2026-12-02, steps 13 to 19 of a run took
104,000 faults and 0.66 s of system time each (3.7 s of CPU time), against none and 0.07 s
(3.1 s) with trimming off. At batch 16 a step never freed that much at once; measured with
`getrusage` on a Zen 3 machine then: 34,700 faults per training step and none per
inference, with 0.09 s of system time per training step against 0.62 s (defaults) and
0.22 s (hugetlb). The process keeps its peak use mapped after a step instead of returning
it; MOBILESHUFFLE_JAX_MALLOC=system keeps glibc's defaults.

Which thread allocates matters as much. Every thread allocates from an arena of its own
(up to glibc's default number of arenas), and a thread's arena grows in heaps of at most
64 MiB: a larger request from any thread but the main one is an mmap of its own, whatever
the settings, unmapped when freed. XLA:CPU runs a program, and allocates its buffers, on
the thread that dispatches it: with JAX's asynchronous dispatch a worker thread, so a
training step's GiB of buffers came back as fresh pages on every step where that thread
had an arena of its own. One arena for all threads avoided that, but then YNNPACK's
kernels, which allocate and free a scratch tile of about 120 KiB thousands of times a
second from both of XLA's worker threads, queued for that arena's lock and searched its
fragmented heap: `_int_malloc` alone was 15% of a ShuffleNet 1x g3 training step's CPU
time (`perf`, 2-core AMD EPYC Zen 4, 2026-12-02), and the heap grew by a further GiB or
more after the first steps. So the package runs single-device programs on the calling
thread (`jax_cpu_enable_async_dispatch` off; only the CPU backend reads it, and programs
over several devices stay asynchronous), which is the main thread, whose arena is the
main heap, and leaves every other thread its own arena. Side by side on that machine
(batch 32, 224 px, 18 steady steps each): ShuffleNet's training step 770 -> 661 ms and
MobileNet v1 1.0's 1,888 -> 1,469 ms, peak memory of MobileNet's 3.5 -> 2.1 GiB, no
step faulting its buffers anew. The process no longer runs ahead of its programs: a
dispatching call returns when its program is done.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

from mobileshuffle_jax import cpu_kernels

ENV_VAR = "MOBILESHUFFLE_JAX_MALLOC"
# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
# A trim threshold of -1 (SIZE_MAX to glibc) never trims.
REUSE_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))

log = logging.getLogger("mobileshuffle_jax")
_state = {"status": "not applied", "announced": False}


def keep_freed_memory() -> str:
  """Applies `REUSE_SETTINGS` once per process (glibc on Linux only); returns the status."""
  if _state["status"] != "not applied":
    return _state["status"]
  if os.environ.get(ENV_VAR, "reuse") == "system":
    status = f"glibc defaults ({ENV_VAR}=system)"
  elif sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    status = "the platform's defaults (not glibc)"
  else:
    mallopt = ctypes.CDLL(None).mallopt
    failed = [option for option, value in REUSE_SETTINGS if mallopt(option, value) != 1]
    status = (f"freed memory kept for reuse (mallopt: no mmap chunks, no trimming; "
              f"{_dispatch_on_calling_thread()}; {ENV_VAR}=system to keep glibc's defaults)"
              if not failed else f"glibc defaults (mallopt refused options {failed})")
  _state["status"] = status
  return status


def _dispatch_on_calling_thread() -> str:
  """Turns JAX's asynchronous dispatch off for CPU programs (see the module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top

  if jax.config.read("jax_cpu_enable_async_dispatch") and cpu_kernels.devices_are_up():
    return "programs dispatched asynchronously (the devices were up before the package)"
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  return "programs run on the calling thread"


def announce() -> None:
  """Says once per process, on the console, what the allocator does."""
  if _state["announced"]:
    return
  _state["announced"] = True
  message = f"malloc: {keep_freed_memory()}"
  if log.isEnabledFor(logging.INFO) and (log.handlers or logging.getLogger().handlers):
    log.info(message)
  else:  # a notebook or script that configured no logging still sees it once
    print(f"mobileshuffle_jax: {message}", file=sys.stderr)
