r"""MobileNet paper Table 5: thinner (0.75 MobileNet) vs shallower (five 14x14 blocks removed).

  python -m mobileshuffle_jax.sweep configs/sweeps/mobilenet_thin_vs_shallow.py \
      --workdir $ROOT --config.data.manual_dir=$ILSVRC2012_TARS

Two cells of configs/mobilenet_v1.py at 224 px. Expected (paper): 0.75 MobileNet 68.4%
top-1 at 325 M mult-adds / 2.6 M params; shallow MobileNet 65.3% at 307 M / 2.9 M.
"""

import ml_collections


def get_sweep():
  sweep = ml_collections.ConfigDict()
  sweep.description = "MobileNet thin vs shallow at a similar budget (paper Table 5), ImageNet"
  sweep.config = "configs/mobilenet_v1.py"
  sweep.cells = [
      dict(name="thin_0.75", overrides=[("model_options.alpha", 0.75)]),
      dict(name="shallow_1.0", overrides=[("model_options.variant", "shallow")]),
  ]
  sweep.paper_tables = ("5",)
  return sweep
