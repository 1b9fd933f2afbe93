r"""MobileNet paper Tables 6/7 (and Figures 4/5): width alpha x input resolution, ImageNet.

  python -m mobileshuffle_jax.sweep configs/sweeps/mobilenet_width_resolution.py \
      --workdir $ROOT --config.data.manual_dir=$ILSVRC2012_TARS
  python -m mobileshuffle_jax.sweep configs/sweeps/mobilenet_width_resolution.py \
      --workdir $ROOT --print-commands     # one train.py command per cell, for a cluster

16 cells of configs/mobilenet_v1.py (the paper's recipe), alpha {1, 0.75, 0.5, 0.25} x
{224, 192, 160, 128} px. Expected top-1 (paper): 1.0-224 70.6%, 0.75-224 68.4%,
0.5-224 63.7%, 0.25-224 50.6%, 1.0-192 69.1%, 1.0-160 67.2%, 1.0-128 64.4%.
Hardware: as configs/mobilenet_v1.py, per cell (about a day each for 1.0-224 on a TPU
v3-32; the smaller cells cost roughly in proportion to their mult-adds).
"""

import ml_collections


def get_sweep():
  sweep = ml_collections.ConfigDict()
  sweep.description = "MobileNet width multiplier x resolution (paper Tables 6/7), ImageNet"
  sweep.config = "configs/mobilenet_v1.py"
  sweep.axes = [("model_options.alpha", (1.0, 0.75, 0.5, 0.25)),
                ("data.image_size", (224, 192, 160, 128), "res")]
  sweep.paper_tables = ("6", "7", "9", "10")
  return sweep
