r"""MobileNet paper Table 4: depthwise-separable vs full convolutions, 1.0 MobileNet-224.

  python -m mobileshuffle_jax.sweep configs/sweeps/mobilenet_separable_vs_full.py \
      --workdir $ROOT --config.data.manual_dir=$ILSVRC2012_TARS

Two cells of configs/mobilenet_v1.py. Expected (paper): full convolutions 71.7% top-1 at
4866 M mult-adds / 29.3 M params; separable 70.6% at 569 M / 4.2 M. The full-convolution
cell costs about 8.5x the separable one's compute.
"""

import ml_collections


def get_sweep():
  sweep = ml_collections.ConfigDict()
  sweep.description = "MobileNet separable vs full convolutions (paper Table 4), ImageNet"
  sweep.config = "configs/mobilenet_v1.py"
  sweep.axes = [("model_options.variant", ("full", "separable"))]
  sweep.paper_tables = ("4",)
  return sweep
