r"""Demo of MobileNet Tables 6/7 on digits: width 0.5 at 32 px vs width 0.25 at 64 px.

  python -m mobileshuffle_jax.sweep configs/sweeps/demo_mobilenet_width_resolution.py \
      --workdir workdirs/ablation-demo/demo_mobilenet_width_resolution

configs/default.py's digits recipe for 200 steps, three seeds a cell (part of `make
ablation-demo`). 0.5 MobileNet-32 and 0.25 MobileNet-64 cost about the same (3.0 and 3.3 M
mult-adds): the report pairs them, seed by seed, to ask whether a budget is better spent
on width or on resolution. 0.25 MobileNet-32 (0.83 M) is the MobileNet that the report
compares with demo_shufflenet_groups_shuffle's ShuffleNets at equal mult-adds (ShuffleNet
Table 5). Digits are 8x8 images upsampled, so resolution is expected to matter far less
than on ImageNet; the point is the machinery, not the paper's numbers.
"""

import ml_collections

from configs.sweeps import common


def _cell(alpha: float, resolution: int) -> dict:
  return dict(name=f"alpha={alpha},res={resolution}",
              overrides=[("model_options.alpha", alpha), ("data.image_size", resolution)])


def get_sweep():
  sweep = ml_collections.ConfigDict()
  sweep.description = ("MobileNet width vs resolution (paper Tables 6/7) on 32-64 px digits, "
                       f"{common.DEMO_TRAIN_STEPS} steps a run")
  sweep.config = "configs/default.py"
  sweep.overrides = common.demo_overrides()
  sweep.cells = [_cell(0.25, 32), _cell(0.5, 32), _cell(0.25, 64)]
  sweep.seeds = common.DEMO_SEEDS
  sweep.paper_tables = ("6", "7")
  return sweep
