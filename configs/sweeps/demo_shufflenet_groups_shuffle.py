r"""Demo of ShuffleNet Tables 2/3 on digits: 0.5x, groups {3, 8} x channel shuffle on/off.

  python -m mobileshuffle_jax.sweep configs/sweeps/demo_shufflenet_groups_shuffle.py \
      --workdir workdirs/ablation-demo/demo_shufflenet_groups_shuffle

The models of configs/shufflenet_v1.py at 32 px, trained with configs/default.py's digits
recipe for 200 steps a cell (part of `make ablation-demo`).
"""

import ml_collections

from configs import shufflenet_v1
from configs.sweeps import common

CONFIG = "configs/shufflenet_v1.py:scale=0.5,resolution=32"


def get_sweep():
  sweep = ml_collections.ConfigDict()
  sweep.description = ("ShuffleNet 0.5x groups x channel shuffle (paper Tables 2/3) on "
                       f"32 px digits, {common.DEMO_TRAIN_STEPS} steps a cell")
  sweep.config = CONFIG
  sweep.overrides = (common.digits_recipe(shufflenet_v1.get_config("scale=0.5,resolution=32"))
                     + common.demo_overrides())
  sweep.axes = [("model_options.groups", (3, 8), "g"), ("model_options.shuffle", (True, False))]
  sweep.paper_tables = ("3", "2")
  return sweep
