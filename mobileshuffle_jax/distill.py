"""Knowledge distillation: a trained teacher's softened probabilities as extra targets.

Hinton, Vinyals and Dean (2015), used by the MobileNet paper (section 4.6):

  loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + (1 - alpha) * cross-entropy(student, labels)

(`train_step.distillation_loss`). `config.distill.teacher` is anything
`mobileshuffle_jax.load` reads: a workdir written by train.py (its latest checkpoint), a
directory written by `python -m mobileshuffle_jax.convert`, or a `.safetensors` export.
`load_teacher` reads it through that one restore path and refuses a teacher that cannot
teach the data set; the train step then runs it in inference mode on the batch's uint8
pixels with the teacher's own recorded normalization, its variables passed to the step as
an argument: never trained, never donated, never part of the student's checkpoints.

Resolution: the teacher sees the student's crops at the data's `image_size`, whatever the
size it recorded. Every model of this package (and every converted one) ends in global
average pooling, so it takes any size its strides leave at least one pixel of; a teacher
that cannot be applied at the data's size is refused. Channel order: `load` refuses
checkpoints that do not read RGB, so a teacher always sees the pixels as the data gives
them.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import ml_collections

from mobileshuffle_jax import predict

log = logging.getLogger("mobileshuffle_jax")


def check_config(distill: ml_collections.ConfigDict) -> None:
  """ValueError naming the field for an alpha outside [0, 1] or a temperature <= 0."""
  if not 0 <= distill.alpha <= 1:
    raise ValueError(f"config.distill.alpha={distill.alpha!r} is invalid: must be in [0, 1] "
                     "(the teacher's share of the loss)")
  if not distill.temperature > 0:
    raise ValueError(f"config.distill.temperature={distill.temperature!r} is invalid: must "
                     "be > 0")


def load_teacher(path: str, data_info, image_size: int) -> predict.Predictor:
  """The teacher at `path` as a Predictor, checked against the data set it will teach.

  Raises ValueError when `path` cannot be loaded, when its classes differ from
  `data_info`'s (in number, or in name where both recorded names), or when its model
  cannot be applied to `image_size` px images.
  """
  try:
    teacher = predict.load(path)
  except ValueError as error:
    raise ValueError(f"config.distill.teacher={path!r}: {error}") from error
  if teacher.num_classes != data_info.num_classes:
    raise ValueError(
        f"config.distill.teacher={path!r} predicts {teacher.num_classes} classes, the data "
        f"set {data_info.name!r} has {data_info.num_classes}: a teacher must predict the "
        "student's classes (fine-tune it on this data set first, config.init_from)")
  if teacher.class_names and data_info.class_names and (
      tuple(teacher.class_names) != tuple(data_info.class_names)):
    raise ValueError(
        f"config.distill.teacher={path!r} predicts the classes {_names(teacher.class_names)}, "
        f"the data set {data_info.name!r} has {_names(data_info.class_names)}: the same "
        "number, but not the same classes in the same order")
  if teacher.image_size != image_size:
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    try:
      jax.eval_shape(lambda variables, x: teacher.model.apply(variables, x, train=False),
                     teacher.variables, images)
    except Exception as error:  # pylint: disable=broad-except
      raise ValueError(
          f"config.distill.teacher={path!r} was trained at {teacher.image_size} px and its "
          f"model cannot be applied at the data's {image_size} px: {error}") from error
    log.info("The teacher recorded %d px; it sees the student's %d px crops (its model ends "
             "in global average pooling).", teacher.image_size, image_size)
  return teacher


def _names(names, shown: int = 5) -> str:
  names = list(names)
  more = f", ... ({len(names)} in all)" if len(names) > shown else ""
  return "[" + ", ".join(repr(n) for n in names[:shown]) + more + "]"


def teacher_record(path: str, teacher: predict.Predictor) -> dict:
  """What a student's checkpoint records of its teacher (metadata only, no tensor)."""
  return {"path": path, "step": teacher.step, "params_sha256": teacher.params_sha256}


def warn_if_other_teacher(saved_meta: dict, record: dict, where: str) -> None:
  """Log when a resumed run continues with another teacher than its checkpoint's steps had
  (e.g. a teacher workdir still training, so its latest checkpoint moved on)."""
  saved = saved_meta.get("distill_teacher")
  if saved is not None and saved["params_sha256"] != record["params_sha256"]:
    log.warning("%s was trained so far with the teacher %s at step %d (params_sha256 %s); it "
                "resumes with %s at step %d (%s).", where, saved["path"], saved["step"],
                saved["params_sha256"][:12], record["path"], record["step"],
                record["params_sha256"][:12])
