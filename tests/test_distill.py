"""Knowledge distillation: the loss against a float64 numpy reference, the teacher inside
the sharded step (its own normalization, never trained nor donated), and end to end: a
teacher absent from the student's checkpoints, and refused when its classes differ."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobileshuffle_jax import (checkpointing, model_config, models, optim, parallel, predict,
                               safetensors_io, train_step, training)


def np_log_softmax(logits):
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def np_distillation(student, teacher, labels, alpha, temperature, label_smoothing):
  """(per-example loss, gradient of the batch mean wrt the student's logits), float64,
  written from the definitions: KL of the softened distributions and cross-entropy."""
  student, teacher = student.astype(np.float64), teacher.astype(np.float64)
  batch, classes = student.shape
  log_p_teacher = np_log_softmax(teacher / temperature)
  log_p_student_t = np_log_softmax(student / temperature)
  kl = (np.exp(log_p_teacher) * (log_p_teacher - log_p_student_t)).sum(-1)
  targets = np.eye(classes)[labels] * (1 - label_smoothing) + label_smoothing / classes
  hard = -(targets * np_log_softmax(student)).sum(-1)
  loss = alpha * temperature ** 2 * kl + (1 - alpha) * hard
  # d(T^2 KL)/ds = T (softmax(s / T) - softmax(t / T)); d(CE)/ds = softmax(s) - targets.
  grad = (alpha * temperature * (np.exp(log_p_student_t) - np.exp(log_p_teacher))
          + (1 - alpha) * (np.exp(np_log_softmax(student)) - targets)) / batch
  return loss, grad


def random_logits(seed, batch=6, classes=7):
  rng = np.random.default_rng(seed)
  return (rng.normal(0, 3, (batch, classes)).astype(np.float32),
          rng.normal(0, 3, (batch, classes)).astype(np.float32),
          rng.integers(0, classes, batch).astype(np.int32))


def jax_loss_and_grad(student, teacher, labels, **options):
  per_example = train_step.distillation_loss(student, teacher, labels, **options)
  grad = jax.grad(lambda s: jnp.mean(train_step.distillation_loss(s, teacher, labels,
                                                                  **options)))(student)
  return np.asarray(per_example), np.asarray(grad)


def test_alpha_one_t_one_is_cross_entropy_against_the_teachers_probabilities():
  student, teacher, labels = random_logits(0)
  loss, grad = jax_loss_and_grad(student, teacher, labels, alpha=1.0, temperature=1.0)
  p_teacher = np.exp(np_log_softmax(teacher.astype(np.float64)))
  log_p_student = np_log_softmax(student.astype(np.float64))
  soft_cross_entropy = -(p_teacher * log_p_student).sum(-1)
  teacher_entropy = -(p_teacher * np.log(p_teacher)).sum(-1)
  # The KL is that cross-entropy less the teacher's entropy, which the student cannot move.
  np.testing.assert_allclose(loss, soft_cross_entropy - teacher_entropy, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      grad, (np.exp(log_p_student) - p_teacher) / len(labels), rtol=1e-5, atol=1e-7)
  # ... and the gradient is exactly that of the soft cross-entropy, computed by JAX too.
  soft_grad = jax.grad(lambda s: jnp.mean(-jnp.sum(
      jax.nn.softmax(teacher) * jax.nn.log_softmax(s), -1)))(student)
  np.testing.assert_allclose(grad, soft_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("alpha,temperature,label_smoothing", [
    (0.0, 4.0, 0.0), (0.9, 4.0, 0.0), (0.5, 2.5, 0.1), (0.3, 0.5, 0.0)])
def test_loss_and_gradient_match_numpy(alpha, temperature, label_smoothing):
  student, teacher, labels = random_logits(1)
  options = dict(alpha=alpha, temperature=temperature, label_smoothing=label_smoothing)
  loss, grad = jax_loss_and_grad(student, teacher, labels, **options)
  expected_loss, expected_grad = np_distillation(student, teacher, labels, **options)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
  if alpha == 0.0:  # no teacher: the step's own cross-entropy
    np.testing.assert_allclose(loss, train_step.cross_entropy(student, labels), rtol=1e-6)


def test_teacher_runs_with_its_own_normalization_and_is_never_trained_nor_donated(
    trained_workdir, tiny_config):
  """Over the 8-device mesh: the step's loss is the numpy formula over the student's logits
  and `Predictor.predict`'s, and the teacher's variables survive the steps unchanged."""
  teacher = predict.load(trained_workdir)
  # A student that normalizes otherwise than its teacher ('minus_one_one').
  config = tiny_config(**{"data.normalization": "zero_one", "ema_decay": 0.5,
                          "distill.teacher": trained_workdir, "distill.alpha": 0.7,
                          "distill.temperature": 3.0, "label_smoothing": 0.1})
  model = model_config.build_model(config, 10, bn_group_size=train_step.bn_group_size(config))
  schedule = optim.learning_rate_schedule(config, steps_per_epoch=10.0, total_steps=20)
  tx = optim.create_optimizer(config, schedule)
  mesh = parallel.create_mesh()
  replicated = parallel.replicated(mesh)
  state = jax.jit(train_step.make_init_fn(model, tx, config), out_shardings=replicated)(
      jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {"images": rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8),
           "labels": rng.integers(0, 10, 32).astype(np.int32)}
  teacher_before = jax.device_get(teacher.variables)
  teacher_variables = jax.device_put(teacher.variables, replicated)
  step = train_step.jit_train_step(model, tx, schedule, config, mesh, teacher)

  # The reference: the student's training-mode logits, BN statistics per group of examples
  # (one group per device), and the teacher's logits from the predictor.
  group = train_step.bn_group_size(config)
  groups = (batch["images"] / 255.0).astype(np.float32).reshape(-1, group, 32, 32, 3)
  student_logits = np.asarray(jax.jit(jax.vmap(lambda images: model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, images, train=True,
      mutable=["batch_stats"])[0]))(groups)).reshape(32, 10)
  teacher_logits = np.asarray(teacher.predict(batch["images"]))
  expected, _ = np_distillation(student_logits, teacher_logits, batch["labels"], alpha=0.7,
                                temperature=3.0, label_smoothing=0.1)
  for _ in range(2):
    state, metrics = step(state, batch, jax.random.key(1), teacher_variables)
    if int(state.step) == 1:
      np.testing.assert_allclose(metrics["loss"], expected.mean(), rtol=1e-4)
      np.testing.assert_allclose(metrics["teacher_top1"],
                                 np.mean(teacher_logits.argmax(-1) == batch["labels"]))
  assert float(metrics["finite"]) == 1.0 and int(state.step) == 2
  for before, after in zip(jax.tree.leaves(teacher_before),
                           jax.tree.leaves(jax.device_get(teacher_variables))):
    np.testing.assert_array_equal(before, after)  # a donated buffer could not be read


@pytest.fixture(scope="module")
def distilled_run(tmp_path_factory, trained_workdir, tiny_config):
  """The tiny run taught by the tiny trained run, uninterrupted: (workdir, teacher's
  params_sha256 and checkpoint steps before it trained)."""
  before = predict.load(trained_workdir).params_sha256
  teacher_steps = checkpoint_steps(trained_workdir)
  workdir = str(tmp_path_factory.mktemp("distilled") / "run")
  training.train_and_evaluate(tiny_config(**{"distill.teacher": trained_workdir}), workdir)
  return workdir, before, teacher_steps


def checkpoint_steps(workdir):
  store = checkpointing.CheckpointStore(workdir, read_only=True)
  try:
    return store.all_steps()
  finally:
    store.close()


def test_teacher_is_untouched_and_absent_from_the_students_checkpoints(distilled_run,
                                                                       trained_workdir):
  workdir, teacher_sha256, teacher_steps = distilled_run
  assert predict.load(trained_workdir).params_sha256 == teacher_sha256
  assert checkpoint_steps(trained_workdir) == teacher_steps
  store = checkpointing.CheckpointStore(workdir, read_only=True)
  try:
    assert store.all_steps() == [3, 6]
    for step in (3, 6):
      path = store.step_path(step)
      items = [name for name in os.listdir(path) if os.path.isdir(os.path.join(path, name))]
      assert sorted(items) == ["config", "meta", "opt_state", "variables"]
      saved = store.restore_as_saved(step)
      meta = store.restore_meta(step)
      # The student's tensors and nothing else: the tiny student (alpha 0.25) has the
      # teacher's architecture, so a saved teacher would show as more tensors or elements.
      student = models.build("mobilenet_v1", alpha=0.25, num_classes=10)
      abstract = jax.eval_shape(lambda: student.init(
          jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
      assert sorted(saved) == ["batch_stats", "params"]
      assert jax.tree.structure(saved) == jax.tree.structure(abstract)
      assert ([leaf.shape for leaf in jax.tree.leaves(saved)]
              == [leaf.shape for leaf in jax.tree.leaves(abstract)])
      assert meta["distill_teacher"] == {"path": trained_workdir, "step": 6,
                                         "params_sha256": teacher_sha256}
      assert meta["params_sha256"] != teacher_sha256
  finally:
    store.close()


def write_teacher_export(path, num_classes, class_names, like_workdir):
  """A `.safetensors` teacher with the architecture and preprocessing of `like_workdir`'s
  model but `num_classes` outputs named `class_names` (fresh parameters)."""
  like = predict.load(like_workdir)
  options = {**like.config.model_options.to_dict(), "num_classes": num_classes}
  model = models.build(like.config.model, **options)
  size = like.image_size
  variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                        train=False))
  record = {"model": like.config.model, "model_options": options,
            "preprocessing": like.preprocessing,
            "params_sha256": checkpointing.params_sha256(variables), "step": 0,
            "class_names": list(class_names), "config": like.config.to_dict()}
  safetensors_io.write(str(path), variables, record)
  return str(path)


@pytest.mark.parametrize("num_classes,class_names,message", [
    (3, ["cat", "dog", "cow"], r"predicts 3 classes, the data set 'digits' has 10"),
    (10, list("abcdefghij"), r"classes \['a', 'b', .*\], the data set 'digits' has \['0'"),
])
def test_a_teacher_of_other_classes_is_refused_naming_both(num_classes, class_names, message,
                                                          tiny_config, trained_workdir,
                                                          tmp_path):
  teacher = write_teacher_export(tmp_path / "teacher.safetensors", num_classes, class_names,
                                 trained_workdir)
  workdir = str(tmp_path / "student")
  with pytest.raises(ValueError, match=message):
    training.train_and_evaluate(tiny_config(**{"distill.teacher": teacher}), workdir)
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "3"))


@pytest.mark.parametrize("field,value", [("distill.alpha", 1.5),
                                         ("distill.temperature", 0.0)])
def test_invalid_distillation_settings_name_the_field(field, value, tiny_config, tmp_path):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    training.train_and_evaluate(tiny_config(**{field: value}), str(tmp_path))
