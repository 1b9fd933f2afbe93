r"""ShuffleNet paper Table 5: ShuffleNet vs MobileNet at equal complexity, ImageNet, 224 px.

  python -m mobileshuffle_jax.sweep configs/sweeps/shufflenet_vs_mobilenet.py \
      --workdir $ROOT --config.data.manual_dir=$ILSVRC2012_TARS

Nine cells, each family with its own paper's recipe (configs/mobilenet_v1.py,
configs/shufflenet_v1.py), as the paper compares published results. Pairs and expected
top-1 (100 - the printed error): 1.0 MobileNet 70.6% (569 M) vs ShuffleNet 2x g=3 73.7%
(524 M); 0.75 MobileNet 68.4% (325 M) vs 1.5x g=3 71.5% (292 M); 0.5 MobileNet 63.7%
(149 M) vs 1x g=8 67.6% (140 M); 0.25 MobileNet 50.6% (41 M) vs 0.5x g=4 58.4% (38 M);
and the 26-layer 0.5x shallow g=3, 57.2% (40 M; our shallow variant counts 21.6 M, see
README).
"""

import ml_collections

SHUFFLENET = "configs/shufflenet_v1.py"


def _shufflenet(name, groups, scale, *more_overrides):
  return dict(name=name, config=SHUFFLENET,
              overrides=[("model_options.groups", groups), ("model_options.scale", scale),
                         *more_overrides])


def get_sweep():
  sweep = ml_collections.ConfigDict()
  sweep.description = "ShuffleNet vs MobileNet at equal complexity (ShuffleNet Table 5), ImageNet"
  sweep.config = "configs/mobilenet_v1.py"
  sweep.cells = [
      dict(name="mobilenet_1.0", overrides=[("model_options.alpha", 1.0)]),
      _shufflenet("shufflenet_2x_g3", 3, 2.0),
      dict(name="mobilenet_0.75", overrides=[("model_options.alpha", 0.75)]),
      _shufflenet("shufflenet_1.5x_g3", 3, 1.5),
      dict(name="mobilenet_0.5", overrides=[("model_options.alpha", 0.5)]),
      _shufflenet("shufflenet_1x_g8", 8, 1.0),
      dict(name="mobilenet_0.25", overrides=[("model_options.alpha", 0.25)]),
      _shufflenet("shufflenet_0.5x_g4", 4, 0.5),
      _shufflenet("shufflenet_0.5x_shallow_g3", 3, 0.5, ("model_options.variant", "shallow")),
  ]
  sweep.paper_tables = ("5",)
  return sweep
