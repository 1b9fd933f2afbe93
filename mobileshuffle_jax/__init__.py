"""MobileNet v1 and ShuffleNet v1 in JAX/Flax.

`mobileshuffle_jax.load(path)` is `predict.load`: a checkpoint directory or exported file
as a `Predictor`. It is imported on first use, so that importing the package stays cheap.
"""

__all__ = ["load"]


def __getattr__(name: str):
  if name == "load":
    from mobileshuffle_jax.predict import load  # pylint: disable=g-import-not-at-top
    return load
  raise AttributeError(f"module 'mobileshuffle_jax' has no attribute {name!r}")
