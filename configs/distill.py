r"""Knowledge distillation on digits: a 0.25 MobileNet taught by configs/default.py's 0.5 one.

  make train  # the teacher: configs/default.py trained into workdirs/default
  python train.py --config configs/distill.py --workdir workdirs/distill
  python train.py --config configs/distill.py:teacher=PATH,alpha=0.9,temperature=4 --workdir W

Arguments: teacher (a workdir, a directory written by `python -m mobileshuffle_jax.convert`
or a `.safetensors` export, predicting the data set's classes; default workdirs/default),
alpha (the teacher's share of the loss), temperature. Everything else is configs/default.py:
the same data, recipe and 1,200 steps, so `--config configs/default.py
--config.model_options.alpha=0.25` is the student alone. The teacher runs in inference mode
inside each step on the student's crops, with its own normalization (mobileshuffle_jax/
distill.py); it is neither trained nor saved, and the run's checkpoints record which
teacher it was (path, step, params_sha256).

Expected (seed 0; measured 2026-12-01 on a 2-core AMD EPYC that other jobs kept at a load
of about 9): the teacher (configs/default.py, 7.4 minutes) 98.9% top-1 on the 360
held-out digits; this student 98.6% in 7.7 minutes, the same as the student alone (98.6%,
5.5 minutes, `--config configs/default.py --config.model_options.alpha=0.25`). At 1,200
steps the 0.25 MobileNet is nearly as good as its teacher and one seed cannot tell the two
apart; the demo sweep configs/sweeps/demo_distillation.py, shorter runs over three seeds,
gives the gain with its confidence interval. The teacher's forward pass adds about a
quarter to the student's CPU time.
"""

from configs import common, default


def get_config(arg: str | None = None):
  """configs/default.py with a 0.25 MobileNet student and `config.distill` set."""
  args = common.parse_arguments(arg, {"teacher": "workdirs/default", "alpha": 0.9,
                                      "temperature": 4.0})
  config = default.get_config()
  config.model_options.alpha = 0.25
  config.distill.teacher = args["teacher"]
  config.distill.alpha = args["alpha"]
  config.distill.temperature = args["temperature"]
  return config
