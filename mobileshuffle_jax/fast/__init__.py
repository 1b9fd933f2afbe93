"""Speed paths for the paper models: faster modules with the papers' variables.

The models (`mobileshuffle_jax.models`, `layers`) are written as the papers draw them and
take their conv, norm, ShuffleNet unit and pooling function as factories. This package
holds faster ones, each with the same variables and the same results (the tests prove it,
per layer and for whole models in float64, forward and gradients):

- `Conv` (`conv.py`): `nn.Conv` computed by shifted multiply-adds (depthwise, RGB stems)
  and one matrix product per group (1x1), with written-out backward passes;
- `BatchNorm` (`norm.py`): a written-out training gradient that keeps no normalized copy;
- `ShuffleUnit` (`shuffle_unit.py`): the unit with its activations split by group;
- `pool` (`pool.py`): ShuffleNet's 3x3 stride-2 max and average pools as shifted maxima
  and sums, with written-out backward passes;
- `InCacheChunks` (`batching.py`): inference in chunks of examples whose activations stay
  in the CPU's last-level cache.

`models.build(..., lowering=...)` injects them: 'xla' is the paper code as it stands
(XLA's own convolution), 'fast' is this package, and 'auto' picks per backend (`AUTO`).
On CPU 'fast' runs MobileNet v1 1.0 and ShuffleNet v1 1x g=3 at 224 px several times
faster, training and inference (`python -m mobileshuffle_jax.bench --lowering all`).
Elsewhere 'xla', unmeasured: GPU and TPU convolutions run depthwise and grouped convs as
native kernels (cuDNN, the TPU's convolution units), where this package's shifted
windows and reductions are written for XLA:CPU's loops, and the 1x1 products are the
same matrix products either way.
"""

from mobileshuffle_jax.fast.batching import InCacheChunks
from mobileshuffle_jax.fast.conv import Conv
from mobileshuffle_jax.fast.norm import BatchNorm
from mobileshuffle_jax.fast.pool import pool
from mobileshuffle_jax.fast.shuffle_unit import ShuffleUnit

__all__ = ["AUTO", "AUTO_DEFAULT", "BatchNorm", "Conv", "InCacheChunks", "ShuffleUnit", "pool"]

# What 'auto' is per backend (see above); backends not listed get AUTO_DEFAULT.
AUTO = {"cpu": "fast"}
AUTO_DEFAULT = "xla"
