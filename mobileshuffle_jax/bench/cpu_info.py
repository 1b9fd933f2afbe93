"""The CPU a benchmark ran on, from /proc/cpuinfo: which kernels win depends on it."""

from __future__ import annotations

# The SIMD extensions that decide XLA's, oneDNN's and XNNPACK's kernels on x86, in order.
VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f",
                     "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                     "amx_tile", "amx_bf16", "amx_int8")


def describe(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
  """{'model_name', 'vendor', 'family', 'model', 'vector_extensions'} of the first CPU listed,
  or {} where /proc/cpuinfo cannot be read (not Linux)."""
  try:
    with open(cpuinfo_path) as f:
      first = f.read().split("\n\n")[0]
  except OSError:
    return {}
  fields = {}
  for line in first.splitlines():
    key, _, value = line.partition(":")
    fields[key.strip()] = value.strip()
  flags = set(fields.get("flags", "").split())
  return {"model_name": fields.get("model name", "unknown"),
          "vendor": fields.get("vendor_id", "unknown"),
          "family": fields.get("cpu family", "unknown"), "model": fields.get("model", "unknown"),
          "vector_extensions": [name for name in VECTOR_EXTENSIONS if name in flags]}
