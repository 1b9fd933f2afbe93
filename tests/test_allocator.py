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


def run_script(script: str, env: dict, *args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120, check=True)


def faults_per_buffer(env: dict, size: int = 64 << 20, repeats: int = 20) -> tuple[float, str]:
  run = run_script(FAULTS_PER_BUFFER, env, size, repeats)
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


# The median over calls of a program whose output, 96 MiB, is more than a glibc heap of a
# thread's own arena holds, of the page faults per call; `dispatch` "async" turns JAX's
# asynchronous dispatch back on. The median, as the heap may still grow once in a while
# (a buffer freed a little late) before it holds all a program needs.
FAULTS_PER_PROGRAM = """
import resource, statistics, sys
import mobileshuffle_jax
import jax, jax.numpy as jnp
if sys.argv[1] == "async":
  jax.config.update("jax_cpu_enable_async_dispatch", True)
x = jnp.ones((96 << 20) // 4, jnp.float32)
double = jax.jit(lambda x: x * 2)
for _ in range(5):  # the heap settles in the first few calls
  double(x).block_until_ready()
faults = []
for _ in range(10):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  double(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults))
"""


def faults_per_program(env: dict, dispatch: str) -> float:
  return float(run_script(FAULTS_PER_PROGRAM, env, dispatch).stdout.strip().splitlines()[-1])


def test_program_buffers_are_reused_from_the_main_heap():
  """XLA:CPU allocates a program's buffers on the thread that runs it: a worker thread's
  arena hands a buffer this large to mmap, and it faults in anew on every call (24,576
  pages of 4 KiB), unless the program runs on the calling thread."""
  assert faults_per_program(PLAIN_ENV, "sync") < 100
  assert faults_per_program(PLAIN_ENV, "async") > 10_000
  assert faults_per_program(dict(PLAIN_ENV, MOBILESHUFFLE_JAX_MALLOC="system"), "sync") > 10_000
