"""Importing the package keeps freed memory for reuse: large buffers stop faulting in anew."""

import subprocess
import sys

from conftest import REPO, SUBPROCESS_ENV

# Without the tunables, whose huge pages would hide the faults the tests count.
PLAIN_ENV = {key: value for key, value in SUBPROCESS_ENV.items() if key != "GLIBC_TUNABLES"}
# `repeats` times a buffer of `size` bytes malloc-ed, written and freed, as XLA:CPU does
# with an execution's buffers (numpy would madvise huge pages of its own).
FAULTS_PER_BUFFER = """
import ctypes, resource, sys
import mobileshuffle_jax
from mobileshuffle_jax import allocator
allocator.announce()
allocator.announce()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size, repeats = int(sys.argv[1]), int(sys.argv[2])

def write_and_free():
  buffer = libc.malloc(size)
  ctypes.memset(buffer, 1, size)
  libc.free(buffer)

write_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(repeats):
  write_and_free()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / repeats)
"""


def faults_per_buffer(env: dict, size: int = 64 << 20, repeats: int = 20) -> tuple[float, str]:
  run = subprocess.run([sys.executable, "-c", FAULTS_PER_BUFFER, str(size), str(repeats)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                       check=True)
  return float(run.stdout.strip().splitlines()[-1]), run.stderr


def test_import_keeps_freed_memory_and_says_so_once():
  reused, said = faults_per_buffer(PLAIN_ENV)
  fresh, said_system = faults_per_buffer(dict(PLAIN_ENV, MOBILESHUFFLE_JAX_MALLOC="system"))
  # 64 MiB in 4 KiB pages is 16,384 faults when the buffer is a fresh mapping each time.
  assert fresh > 10_000, fresh
  assert reused < 100, reused
  (line,) = said.strip().splitlines()
  assert line == f"mobileshuffle_jax: malloc: {allocator_status()}"
  (line,) = said_system.strip().splitlines()
  assert "MOBILESHUFFLE_JAX_MALLOC=system" in line and "glibc defaults" in line


def allocator_status() -> str:
  from mobileshuffle_jax import allocator  # the status this process's import applied
  return allocator.keep_freed_memory()


def test_freed_memory_is_kept_past_two_gib():
  """A MobileNet training step at batch 32 frees over 2 GiB at once at its end: the largest
  trim threshold mallopt can take, 2 GiB, returned it to the kernel and every step faulted
  it back in."""
  reused, _ = faults_per_buffer(PLAIN_ENV, size=(2 << 30) + (64 << 20), repeats=1)
  assert reused < 100, reused
