r"""Demo of knowledge distillation on digits: a 0.25 MobileNet alone vs taught by a 0.5 one.

  python train.py --config configs/default.py --workdir workdirs/ablation-demo/teacher
  python -m mobileshuffle_jax.sweep configs/sweeps/demo_distillation.py \
      --workdir workdirs/ablation-demo/demo_distillation

The teacher is configs/default.py's 0.5 MobileNet trained for its full 1,200 steps (about
98-99% top-1); `make ablation-demo` trains it first into $(DEMO_ROOT)/teacher and passes
that path as $DEMO_TEACHER (default: workdirs/ablation-demo/teacher). Both cells are the
same 0.25 MobileNet student with configs/default.py's digits recipe for 200 steps a run,
three seeds each; the taught one adds the teacher with configs/default.py's distillation
settings (alpha 0.9, T 4, as configs/distill.py). Seed s of both cells starts from the same
initialization and reads the same examples in the same order, so the report's difference
paired by seed isolates the teacher. Part of `make ablation-demo`.
"""

import os

import ml_collections

from configs.sweeps import common

TEACHER = os.environ.get("DEMO_TEACHER", "workdirs/ablation-demo/teacher")


def get_sweep():
  sweep = ml_collections.ConfigDict()
  sweep.description = ("Knowledge distillation (MobileNet paper section 4.6) on 32 px digits: "
                       "a 0.25 MobileNet alone vs taught by a 0.5 MobileNet, "
                       f"{common.DEMO_TRAIN_STEPS} steps a run")
  sweep.config = "configs/default.py"
  sweep.overrides = [("model_options.alpha", 0.25)] + common.demo_overrides()
  sweep.cells = [
      dict(name="student_alone", overrides=[]),
      dict(name="student_taught", overrides=[("distill.teacher", TEACHER)]),
  ]
  sweep.seeds = common.DEMO_SEEDS
  return sweep
