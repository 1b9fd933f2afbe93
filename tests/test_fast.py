"""Every lowering computes the paper models: same variables, same logits and gradients.

`models.build(..., lowering=...)` injects the factories of `mobileshuffle_jax.fast` into the
paper code; the paper code itself never learns about them.
"""

import ast
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mobileshuffle_jax import fast, layers, models
from tests.conftest import REPO


def _random(key, shape):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def test_lowering_names_choose_factories():
  assert models.resolve_lowering("auto", "cpu") == "fast"
  assert models.resolve_lowering("auto", "gpu") == "xla"
  assert models.resolve_lowering("auto", "tpu") == "xla"
  assert models.resolve_lowering("fast", "gpu") == "fast"
  with pytest.raises(ValueError, match="lowering='cudnn' is not supported"):
    models.resolve_lowering("cudnn", "cpu")
  paper = models.build("shufflenet_v1", lowering="xla")
  assert (paper.conv, paper.norm, paper.unit, paper.pool) == (
      nn.Conv, layers.BatchNorm, layers.ShuffleUnit, layers.pool)
  assert paper == models.ShuffleNetV1()  # the paper's code is the model's default
  quick = models.build("shufflenet_v1", lowering="fast")
  assert (quick.conv, quick.norm, quick.unit, quick.pool) == (
      fast.Conv, fast.BatchNorm, fast.ShuffleUnit, fast.pool)
  mobilenet = models.build("mobilenet_v1", lowering="fast")
  assert (mobilenet.conv, mobilenet.norm) == (fast.Conv, fast.BatchNorm)
  assert models.with_lowering(quick, "xla") == paper
  # 'auto' is decided when the model is traced, so building one initializes no backend.
  assert models.build("mobilenet_v1").conv is models.FACTORIES["auto"].conv
  # A factory given explicitly wins over the lowering's.
  assert models.build("mobilenet_v1", lowering="fast", norm=layers.BatchNorm).norm is (
      layers.BatchNorm)
  with pytest.raises(ValueError, match="lowering="):
    models.build("mobilenet_v1", lowering="winograd")


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_parameter_trees_are_identical_under_every_lowering(name):
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  trees = {lowering: jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), jax.eval_shape(
      models.build(name, lowering=lowering, num_classes=10).init, jax.random.key(0), images))
           for lowering in ("xla", "fast")}
  assert trees["fast"] == trees["xla"]


PAPER_CODE = ("layers.py", "models/common.py", "models/mobilenet_v1.py",
              "models/shufflenet_v1.py")


@pytest.mark.parametrize("path", PAPER_CODE)
def test_paper_code_knows_nothing_of_speed_paths(path):
  """No channel-block tuples, no materialization trick, no lowering, no backend test."""
  with open(os.path.join(REPO, "mobileshuffle_jax", path)) as f:
    source = f.read()
  for banned in ("tuple[jnp", "isinstance(x, tuple)", "materialized", "x == x", "lowering",
                 "fast", "default_backend", "platform", "custom_vjp"):
    assert banned not in source, f"{path} mentions {banned!r}"
  imported = {node.module for node in ast.walk(ast.parse(source))
              if isinstance(node, ast.ImportFrom) and node.module}
  assert imported <= {"__future__", "typing", "jax", "mobileshuffle_jax",
                      "mobileshuffle_jax.models"}, imported


# Only compile time matters for these small checks; LLVM's optimizations take half of it.
QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
WHOLE_MODELS = pytest.mark.parametrize("name,options", [
    ("mobilenet_v1", dict(alpha=0.25, num_classes=10)),
    ("shufflenet_v1", dict(groups=3, scale=0.5, num_classes=10)),
], ids=["mobilenet_0.25", "shufflenet_g3_0.5x"])


def _jit(function, *args):
  return jax.jit(function).lower(*args).compile(QUICK_COMPILE)(*args)


def _logits_and_grads(model, variables, images, labels):
  """Eval logits and the gradients of a train-mode loss, in one compiled function."""

  def logits_and_grads(variables):
    def loss(params):
      logits, _ = model.apply({**variables, "params": params}, images, train=True,
                              mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return model.apply(variables, images, train=False), jax.grad(loss)(variables["params"])

  return _jit(logits_and_grads, variables)


@WHOLE_MODELS
def test_whole_model_logits_and_gradients_match(name, options):
  """Eval logits in float32; all parameter gradients of a train-mode loss in float64.

  Float32 gradients cannot be held to float32 tolerance: a pre-activation within rounding
  of zero turns a ReLU on in one lowering and off in the other. That happens (MobileNet
  0.25, batch 16: a depthwise kernel gradient moves by 2% of its largest entry, with
  either lowering of the stem alone), while in float64 the two agree to the last digits.
  The classifier runs in float32 whatever the model's dtype, hence the float64 tolerance.
  """
  xla, fast = (models.build(name, lowering=which, **options) for which in ("xla", "fast"))
  images = _random(0, (4, 64, 64, 3))
  variables = jax.jit(xla.init)(jax.random.key(1), images)  # the same for both lowerings
  np.testing.assert_allclose(_jit(lambda v: fast.apply(v, images), variables),
                             _jit(lambda v: xla.apply(v, images), variables),
                             rtol=1e-4, atol=1e-5)

  with jax.enable_x64(True):
    xla, fast = (models.build(name, lowering=which, dtype=jnp.float64, **options)
                 for which in ("xla", "fast"))
    images = images.astype(jnp.float64)
    variables = jax.tree.map(lambda v: v.astype(jnp.float64), variables)
    labels = jnp.arange(len(images)) % xla.num_classes
    logits, grads = jax.device_get(_logits_and_grads(xla, variables, images, labels))
    fast_logits, fast_grads = jax.device_get(
        _logits_and_grads(fast, variables, images, labels))
  np.testing.assert_allclose(fast_logits, logits, rtol=1e-6, atol=1e-7)
  assert jax.tree.structure(fast_grads) == jax.tree.structure(grads)
  # Some gradients are zero but for rounding (a BN bias followed by a conv and BN):
  # those are held to the scale of all gradients instead of their own.
  overall = max(np.max(np.abs(g)) for g in jax.tree.leaves(grads))
  for (path, grad), fast_grad in zip(jax.tree_util.tree_leaves_with_path(grads),
                                     jax.tree.leaves(fast_grads)):
    np.testing.assert_allclose(fast_grad, grad, rtol=1e-5,
                               atol=1e-6 * (np.max(np.abs(grad)) + overall),
                               err_msg=jax.tree_util.keystr(path))
