r"""Demo of ShuffleNet Table 5's headline pair on digits: 0.25 MobileNet vs 0.5x ShuffleNet g=4.

  python -m mobileshuffle_jax.sweep configs/sweeps/demo_shufflenet_vs_mobilenet.py \
      --workdir workdirs/ablation-demo/demo_shufflenet_vs_mobilenet

Both at 32 px (about 0.8 M mult-adds each), both with configs/default.py's digits recipe
for 200 steps (part of `make ablation-demo`).
"""

import ml_collections

from configs import shufflenet_v1
from configs.sweeps import common

SHUFFLENET = "configs/shufflenet_v1.py:groups=4,scale=0.5,resolution=32"


def get_sweep():
  sweep = ml_collections.ConfigDict()
  sweep.description = ("ShuffleNet vs MobileNet at an equal budget (ShuffleNet paper "
                       f"Table 5) on 32 px digits, {common.DEMO_TRAIN_STEPS} steps a cell")
  sweep.config = "configs/default.py"
  sweep.cells = [
      dict(name="mobilenet_0.25",
           overrides=[("model_options.alpha", 0.25)] + common.demo_overrides()),
      # The demo's duration comes after the digits recipe, which carries default.py's.
      dict(name="shufflenet_0.5x_g4", config=SHUFFLENET,
           overrides=common.digits_recipe(
               shufflenet_v1.get_config("groups=4,scale=0.5,resolution=32"))
           + common.demo_overrides()),
  ]
  sweep.paper_tables = ("5",)
  return sweep
