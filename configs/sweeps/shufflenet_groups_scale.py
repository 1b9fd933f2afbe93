r"""ShuffleNet paper Table 2: groups g {1, 2, 3, 4, 8} x scale {1x, 0.5x, 0.25x}, ImageNet.

  python -m mobileshuffle_jax.sweep configs/sweeps/shufflenet_groups_scale.py \
      --workdir $ROOT --config.data.manual_dir=$ILSVRC2012_TARS

15 cells of configs/shufflenet_v1.py (the paper's recipe, 3 x 10^5 iterations at batch
1024). Expected top-1 = 100 - the printed error: 1x 66.4 / 67.3 / 67.4 / 67.2 / 67.6%,
0.5x 54.9 / 55.6 / 56.8 / 58.4 / 57.7%, 0.25x 42.9 / 43.2 / 45.0 / 45.8 / 47.3% for
g = 1 / 2 / 3 / 4 / 8. Hardware: as configs/shufflenet_v1.py, per cell.
"""

import ml_collections


def get_sweep():
  sweep = ml_collections.ConfigDict()
  sweep.description = "ShuffleNet groups x scale (paper Table 2), ImageNet"
  sweep.config = "configs/shufflenet_v1.py"
  sweep.axes = [("model_options.scale", (1.0, 0.5, 0.25)),
                ("model_options.groups", (1, 2, 3, 4, 8), "g")]
  sweep.paper_tables = ("2", "1")
  return sweep
