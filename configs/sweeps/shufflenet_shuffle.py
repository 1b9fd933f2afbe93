r"""ShuffleNet paper Table 3: channel shuffle on / off for g {3, 8} x scale {1x, 0.5x, 0.25x}.

  python -m mobileshuffle_jax.sweep configs/sweeps/shufflenet_shuffle.py \
      --workdir $ROOT --config.data.manual_dir=$ILSVRC2012_TARS

12 cells of configs/shufflenet_v1.py at 224 px. Expected top-1 without / with shuffle
(100 - the printed error): 1x g=3 65.5 / 67.4%, 1x g=8 62.4 / 67.6%, 0.5x g=3 54.3 /
56.8%, 0.5x g=8 51.9 / 57.7%, 0.25x g=3 43.7 / 45.0%, 0.25x g=8 43.5 / 47.3%. The
shuffle-on cells are also cells of shufflenet_groups_scale.py (same config, same result).
"""

import ml_collections


def get_sweep():
  sweep = ml_collections.ConfigDict()
  sweep.description = "ShuffleNet with and without channel shuffle (paper Table 3), ImageNet"
  sweep.config = "configs/shufflenet_v1.py"
  sweep.axes = [("model_options.scale", (1.0, 0.5, 0.25)),
                ("model_options.groups", (3, 8), "g"),
                ("model_options.shuffle", (True, False))]
  sweep.paper_tables = ("3",)
  return sweep
