r"""Train a model from a config, resuming from the workdir's last checkpoint.

  python train.py --config configs/default.py --workdir workdirs/default
  python train.py --config configs/mobilenet_v1.py:alpha=0.5,resolution=160 \
      --workdir gs://bucket/mnv1 --config.global_batch_size=2048

The last line on stdout is the final evaluation as one JSON object. SIGTERM or Ctrl-C
saves a checkpoint and stops (exit status 0 and 130); rerun the same command to resume.
A failure prints one line (`--verbose`: the traceback too) and exits with status 1.
"""

import sys

from absl import flags
from ml_collections import config_flags

from mobileshuffle_jax import runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  runtime.initialize()
  from mobileshuffle_jax import progress, training  # after the runtime is up
  result = training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  runtime.shutdown()
  progress.print_result(result)
  if result.get("signal") == "SIGINT":
    sys.exit(130)


if __name__ == "__main__":
  runtime.run(main)
