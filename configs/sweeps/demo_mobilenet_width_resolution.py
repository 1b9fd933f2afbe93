r"""Demo of MobileNet Tables 6/7 on digits: width alpha {0.5, 0.25} x input {32, 48} px.

  python -m mobileshuffle_jax.sweep configs/sweeps/demo_mobilenet_width_resolution.py \
      --workdir workdirs/ablation-demo/demo_mobilenet_width_resolution

configs/default.py's digits recipe for 200 steps a cell (part of `make ablation-demo`,
minutes on a 2-core CPU). Digits are 8x8 images upsampled, so resolution is expected to
matter far less than on ImageNet; the point is the machinery, not the paper's numbers.
"""

import ml_collections

from configs.sweeps import common


def get_sweep():
  sweep = ml_collections.ConfigDict()
  sweep.description = ("MobileNet width x resolution (paper Tables 6/7) on 32-48 px digits, "
                       f"{common.DEMO_TRAIN_STEPS} steps a cell")
  sweep.config = "configs/default.py"
  sweep.overrides = common.demo_overrides()
  sweep.axes = [("model_options.alpha", (0.5, 0.25)), ("data.image_size", (32, 48), "res")]
  sweep.paper_tables = ("6", "7")
  return sweep
