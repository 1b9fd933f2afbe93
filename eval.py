r"""Evaluate a checkpoint; the last line printed is one JSON object.

  python eval.py --workdir workdirs/default [--step 1600] [--config configs/default.py]

Without --config the workdir's own config.json is used. A checkpoint whose parameters do
not match their recorded fingerprint is refused (exit status 1).
"""

from absl import flags
from ml_collections import config_flags

from mobileshuffle_jax import runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (default: the workdir's).")
flags.DEFINE_string("workdir", None, "Directory written by train.py or convert.")
flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  runtime.initialize()
  from mobileshuffle_jax import evaluation, progress  # after the runtime is up
  result = evaluation.evaluate_checkpoint(FLAGS.workdir, FLAGS.config, FLAGS.step)
  runtime.shutdown()
  progress.print_result(result)


if __name__ == "__main__":
  runtime.run(main)
