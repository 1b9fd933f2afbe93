"""MobileNet v1 and ShuffleNet v1 in JAX/Flax.

`mobileshuffle_jax.load(path)` is `predict.load`: a checkpoint directory or exported file
as a `Predictor`. It is imported on first use, so that importing the package stays cheap.
Importing the package (and with it JAX) sets glibc's malloc to keep freed memory for reuse
and JAX to run CPU programs on the calling thread (`allocator`), and XLA:CPU's kernel
library (`cpu_kernels`).
"""

from mobileshuffle_jax import allocator, cpu_kernels

__all__ = ["load"]

# Before this process's first XLA:CPU buffers: they are then reused from step to step.
allocator.keep_freed_memory()
# Before this process's XLA:CPU client reads XLA_FLAGS.
cpu_kernels.choose()


def __getattr__(name: str):
  if name == "load":
    from mobileshuffle_jax.predict import load  # pylint: disable=g-import-not-at-top
    return load
  raise AttributeError(f"module 'mobileshuffle_jax' has no attribute {name!r}")
