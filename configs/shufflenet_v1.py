r"""ShuffleNet v1 on ImageNet, the paper's recipe (section 4).

  python train.py --config configs/shufflenet_v1.py:groups=3,scale=1.0,shuffle=true \
      --workdir $WORKDIR --config.data.manual_dir=$ILSVRC2012_TARS

Arguments: groups (1, 2, 3, 4, 8), scale (0.25 ... 2.0), shuffle (false: Table 3 ablation).
Expected (paper Table 2, top-1 = 100 - error): 1x g=3 67.4%, 1x g=8 67.6%, 0.5x g=3
56.8%, 0.25x g=3 45.0%; without shuffle (Table 3) 1x g=3 65.5%, 1x g=8 62.4%.
Hardware: the paper used 4 GPUs at batch 1024 for 3 x 10^5 iterations (about 240 epochs).

From the paper: SGD with momentum 0.9, learning rate 0.5 at batch 1024 decaying linearly
to 0, weight decay 4e-5 (not on BN or biases), 3 x 10^5 iterations at batch 1024,
slightly less aggressive scale augmentation than ResNeXt; evaluation resizes to 256 and
takes the 224 centre crop. Our choices where it is silent: crop area range (0.25, 1), BN
momentum 0.9 / epsilon 1e-5 (PyTorch defaults, as the public weights), ImageNet mean/std.
"""

from configs import common, default


def get_config(arg: str | None = None):
  """configs/default.py with what this recipe changes (the docstring states all of it)."""
  args = common.parse_arguments(arg, {"groups": 3, "scale": 1.0, "shuffle": True,
                                      "resolution": 224})
  config = default.get_config()
  config.model = "shufflenet_v1"
  config.model_options = dict(groups=args["groups"], scale=args["scale"],
                              shuffle=args["shuffle"], variant="standard", bn_momentum=0.9,
                              bn_epsilon=1e-5, padding="symmetric")
  config.data.name = "imagenet2012"
  config.data.image_size = args["resolution"]
  config.data.train_crop_area_range = (0.25, 1.0)
  config.data.train_flip = True
  config.data.eval_crop_ratio = 0.875
  config.data.normalization = "imagenet"
  config.data.shuffle_buffer = 16_384
  config.data.cache = False

  config.global_batch_size = 1024
  config.eval_batch_size = 1024
  config.num_train_steps = 300_000
  config.learning_rate = 0.5
  config.base_batch_size = 1024
  config.nesterov = False
  config.schedule = "linear"
  config.warmup_epochs = 0.0
  config.weight_decay = 4e-5
  config.weight_decay_depthwise = True

  config.log_every_steps = 500
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 5_000
  config.keep_checkpoints = 3
  return config
