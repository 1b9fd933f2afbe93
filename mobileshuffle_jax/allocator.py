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
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

ENV_VAR = "MOBILESHUFFLE_JAX_MALLOC"
# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# A trim threshold of -1 (SIZE_MAX to glibc) never trims.
REUSE_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))

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
    status = ("freed memory kept for reuse (mallopt: one arena, no mmap chunks, "
              f"no trimming; {ENV_VAR}=system to keep glibc's defaults)"
              if not failed else f"glibc defaults (mallopt refused options {failed})")
  _state["status"] = status
  return status


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
