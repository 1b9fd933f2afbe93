r"""Demo of ShuffleNet Tables 2/3 on digits: 0.5x, g = 1 vs g = 8, and g = 8 without shuffle.

  python -m mobileshuffle_jax.sweep configs/sweeps/demo_shufflenet_groups_shuffle.py \
      --workdir workdirs/ablation-demo/demo_shufflenet_groups_shuffle

The models of configs/shufflenet_v1.py at 32 px (0.78-0.82 M mult-adds each: more groups
buy wider layers at equal complexity), trained with configs/default.py's digits recipe for
200 steps, three seeds a cell (part of `make ablation-demo`). The report pairs the seeds
for the papers' two questions: does the channel shuffle help at g = 8 (Table 3), and does
g = 8 beat g = 1 at equal complexity (Table 2); and, with demo_mobilenet_width_resolution's
0.25 MobileNet-32 (0.83 M), ShuffleNet vs MobileNet at equal mult-adds (Table 5).
"""

import ml_collections

from configs import shufflenet_v1
from configs.sweeps import common

CONFIG = "configs/shufflenet_v1.py:scale=0.5,resolution=32"


def _cell(groups: int, shuffle: bool) -> dict:
  return dict(name=f"g={groups},shuffle={str(shuffle).lower()}",
              overrides=[("model_options.groups", groups), ("model_options.shuffle", shuffle)])


def get_sweep():
  sweep = ml_collections.ConfigDict()
  sweep.description = ("ShuffleNet 0.5x groups and channel shuffle (paper Tables 2/3) on "
                       f"32 px digits, {common.DEMO_TRAIN_STEPS} steps a run")
  sweep.config = CONFIG
  sweep.overrides = (common.digits_recipe(shufflenet_v1.get_config("scale=0.5,resolution=32"))
                     + common.demo_overrides())
  # With one group the shuffle is the identity: g = 1 runs once, not with and without it.
  sweep.cells = [_cell(1, True), _cell(8, True), _cell(8, False)]
  sweep.seeds = common.DEMO_SEEDS
  sweep.paper_tables = ("3", "2")
  return sweep
