r"""MobileNet v1 on ImageNet, the paper's recipe (TF-slim / tensorflow/tpu settings).

  python train.py --config configs/mobilenet_v1.py:alpha=1.0,resolution=224 \
      --workdir $WORKDIR --config.data.manual_dir=$ILSVRC2012_TARS

Arguments: alpha (width multiplier), resolution (the resolution multiplier's input size).
Expected (paper Tables 6/7, single centre crop): 1.0-224 70.6%, 0.75-224 68.4%,
0.5-224 63.7%, 0.25-224 50.6%, 1.0-192 69.1%, 1.0-160 67.2%, 1.0-128 64.4% top-1.
Hardware: a TPU v3-32 / 8-16 GPUs at the global batch 1024 (about a day for 1.0-224).

From the papers and reference implementations: RMSProp (decay 0.9, momentum 0.9,
epsilon 1.0), learning rate 0.165 per 256 images decayed x0.94 every 3 epochs, weight
EMA, weight decay 4e-5 with none on depthwise filters, no label smoothing, BN decay
0.9997 / epsilon 1e-3, dropout 1e-3, ReLU6, inputs in [-1, 1], Inception crops with a
smaller range of scales than large models. Our choices where the sources are silent:
the crop area range (0.25, 1), 5 warm-up epochs, 200 epochs.
"""

from configs import common, default


def get_config(arg: str | None = None):
  """configs/default.py with what this recipe changes (the docstring states all of it)."""
  args = common.parse_arguments(arg, {"alpha": 1.0, "resolution": 224})
  config = default.get_config()
  config.model_options = dict(alpha=args["alpha"], variant="separable", activation="relu6",
                              dropout_rate=1e-3,
                              bn_momentum=0.9997, bn_epsilon=1e-3, padding="same")
  config.data.name = "imagenet2012"
  config.data.image_size = args["resolution"]
  config.data.train_crop_area_range = (0.25, 1.0)
  config.data.train_flip = True
  config.data.eval_crop_ratio = 0.875
  config.data.shuffle_buffer = 16_384
  config.data.cache = False

  config.global_batch_size = 1024
  config.eval_batch_size = 1024
  config.num_train_steps = -1
  config.num_epochs = 200.0
  config.optimizer = "rmsprop"
  config.learning_rate = 0.165
  config.base_batch_size = 256
  config.nesterov = False
  config.schedule = "exponential"
  config.warmup_epochs = 5.0
  config.weight_decay = 4e-5
  config.ema_decay = 0.9999

  config.log_every_steps = 500
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 5_000
  config.keep_checkpoints = 3
  return config
