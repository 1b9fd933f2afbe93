r"""Default config: a small MobileNet v1 on scikit-learn's handwritten digits (no download).

Every field of every recipe lives here; recipe configs import this and override.

  make train
  # or: python train.py --config configs/default.py --workdir workdirs/default
  #     python eval.py  --config configs/default.py --workdir workdirs/default

Expected: >= 97% top-1 on the fixed 20% held-out split (360 images) after 1,200 steps
of batch 64 (about 53 epochs), in under 5 minutes of training on a 2-core CPU.
"""

import ml_collections

from mobileshuffle_jax import data_defaults


def data_config() -> ml_collections.ConfigDict:
  """The input pipeline's defaults (ImageNet's) with the digits data set's overrides."""
  data = data_defaults.default_data_config()
  data.name = "digits"
  data.image_size = 32
  data.train_crop_area_range = (0.6, 1.0)
  data.train_flip = False  # a mirrored digit is another symbol
  data.eval_crop_ratio = 1.0
  data.normalization = "minus_one_one"
  data.shuffle_buffer = 2048
  data.cache = True
  return data


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = "mobilenet_v1"
  # Options of `mobileshuffle_jax.models.build`; any field of the model.
  config.model_options = ml_collections.ConfigDict(dict(
      alpha=0.5, dropout_rate=0.0, bn_momentum=0.9, bn_epsilon=1e-3))
  config.lowering = "auto"  # 'auto' | 'xla' | 'fast': how convolutions are lowered
  config.data = data_config()

  config.seed = 0
  config.global_batch_size = 64
  config.eval_batch_size = 256
  # Durations: give exactly one of num_train_steps / num_epochs (-1 = unset).
  config.num_train_steps = 1200
  config.num_epochs = -1.0

  config.optimizer = "sgd"  # 'sgd' | 'rmsprop' | 'adamw'
  config.learning_rate = 0.1  # at base_batch_size; scaled linearly with the global batch
  config.base_batch_size = 64
  config.momentum = 0.9
  config.nesterov = True
  config.rmsprop_decay = 0.9
  config.rmsprop_epsilon = 1.0
  config.schedule = "cosine"  # 'cosine' | 'linear' | 'exponential' | 'constant'
  config.warmup_epochs = 2.0
  config.decay_epochs = 3.0  # exponential: multiply by decay_rate every decay_epochs
  config.decay_rate = 0.94
  config.weight_decay = 5e-5  # L2, added to the gradients (TF-slim / paper convention)
  config.weight_decay_depthwise = False  # MobileNet: "little or no weight decay" there
  config.weight_decay_norm_and_bias = False
  config.grad_clip_norm = 0.0  # 0: off
  config.label_smoothing = 0.0
  config.ema_decay = 0.0  # 0: off; else weight EMA evaluated instead of the raw weights
  config.compute_dtype = "float32"  # 'bfloat16': bf16 compute, float32 params and BN stats
  # BatchNorm training statistics: 0 per device (no communication in the forward pass),
  # -1 over the whole global batch (two all-reduces per BN layer), k > 0 groups of k.
  config.bn_group_size = 0
  # Fine-tuning: start from the latest checkpoint of this workdir or converted directory.
  config.init_from = ml_collections.config_dict.placeholder(str)
  config.init_from_drop_classifier = False  # keep a fresh classifier (new class count)
  # Knowledge distillation (configs/distill.py): loss = alpha * T^2 * KL(teacher || student
  # at temperature T) + (1 - alpha) * cross-entropy. `teacher`: a workdir, a converted
  # directory or a .safetensors export of the same classes (None: off).
  config.distill = ml_collections.ConfigDict()
  config.distill.teacher = ml_collections.config_dict.placeholder(str)
  config.distill.alpha = 0.9
  config.distill.temperature = 4.0

  config.log_every_steps = 100
  config.eval_every_steps = 400  # also ranks checkpoints by top-1
  config.checkpoint_every_steps = 400
  config.keep_checkpoints = 2  # the last K, plus the best by validation top-1
  config.async_checkpointing = True
  # At the end of a run, time this many bare train steps and log the loop's images/s as a
  # share of theirs: what logging, evaluation and checkpoints cost (0: off).
  config.loop_efficiency_steps = 10
  return config
