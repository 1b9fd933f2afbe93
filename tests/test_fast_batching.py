"""Inference in cache-sized chunks (`fast.InCacheChunks`) gives the whole batch's logits."""

import json
import subprocess
import sys

import jax.numpy as jnp
import pytest

from conftest import REPO, SUBPROCESS_ENV
from mobileshuffle_jax import fast, layers, models
from mobileshuffle_jax.fast import batching

OPTIONS = {"mobilenet_v1": {}, "shufflenet_v1": {"groups": 3}}


@pytest.mark.parametrize("batch, most, chunk", [
    (32, 8, 8), (32, 3, 2), (32, 6, 4), (33, 8, 7), (31, 8, 8), (7, 3, 3), (5, 100, 5),
    (32, 1, 1), (1, 4, 1), (100, 7, 5)])
def test_chunks_divide_the_batch_or_pad_it_little(batch, most, chunk):
  assert batching.even_chunk(batch, most) == chunk


@pytest.mark.parametrize("name, largest", [
    # At 64 px: MobileNet's block 1 pointwise output, 32 x 32 x 64 (paper Table 1 at 112);
    # ShuffleNet's Conv1 output before its max pool, 32 x 32 x 24 (paper Table 1).
    ("mobilenet_v1", 32 * 32 * 64 * 4), ("shufflenet_v1", 32 * 32 * 24 * 4)])
def test_largest_activation_is_the_papers_widest_layer(name, largest):
  model = models.build(name, lowering="fast", num_classes=10, **OPTIONS[name])
  assert batching.largest_activation_bytes(model, layers.inference_logits,
                                           jnp.zeros((1, 64, 64, 3))) == largest


def test_the_last_level_cache_is_read_from_the_machine():
  assert batching.last_level_cache_bytes() >= 256 * 2**10


SEVERAL_DEVICES = """
import jax, jax.numpy as jnp
from mobileshuffle_jax import fast, models
model = models.build("mobilenet_v1", lowering="fast", num_classes=10,
                     batching=fast.InCacheChunks(cache_bytes=1))
images = jnp.zeros((4, 64, 64, 3))
variables = jax.eval_shape(model.init, jax.random.key(0), images)
print(jax.device_count(), "while" in jax.jit(model.apply).lower(variables, images).as_text())
"""


def test_programs_over_several_devices_run_the_whole_batch():
  run = subprocess.run([sys.executable, "-c", SEVERAL_DEVICES], cwd=REPO, env=SUBPROCESS_ENV,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  assert run.stdout.split() == ["2", "False"]


# On one CPU device, as a user's process has it: logits of batches that divide into chunks,
# that need padding, and that fit one chunk, against the whole batch at once.
CHUNKED_LOGITS = """
import json, sys
import jax, jax.numpy as jnp
from mobileshuffle_jax import fast, layers, models
from mobileshuffle_jax.fast import batching
name, options = sys.argv[1], json.loads(sys.argv[2])
model = models.build(name, lowering="auto", num_classes=10, **options)
network = layers.inference_logits
largest = batching.largest_activation_bytes(model, network, jnp.zeros((1, 64, 64, 3)))
# A chunk of at most 3 examples (a third of the cache for the largest activation).
chunked = model.clone(batching=fast.InCacheChunks(cache_bytes=10 * largest))
whole = model.clone(batching=layers.whole_batch)
images = jax.random.normal(jax.random.key(1), (8, 64, 64, 3))
variables = jax.jit(model.init)(jax.random.key(0), images)
# Non-trivial running statistics, so that BatchNorm's inference transform shows.
variables = jax.tree.map(lambda v: v + 0.1 * jax.random.uniform(jax.random.key(2), v.shape),
                         variables)
# The default ('auto' on a CPU): chunked where the machine's cache calls for it.
full = jnp.zeros((32, 224, 224, 3))
report = {"devices": jax.device_count(),
          "auto_expected": fast.InCacheChunks().planned_chunk(model, network, full) < 32,
          "auto_chunked": "while" in jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
              jax.eval_shape(model.init, jax.random.key(0), full[:1]), full).as_text()}
for batch in (8, 7, 3):
  x = images[:batch]
  lowered = jax.jit(lambda v, x: chunked.apply(v, x, train=False)).lower(variables, x)
  ours = lowered.compile()(variables, x)
  reference = jax.jit(lambda v, x: whole.apply(v, x, train=False))(variables, x)
  report[batch] = {"chunked": "while" in lowered.as_text(),
                   "shape": list(ours.shape),
                   "error": float(jnp.max(jnp.abs(ours - reference))),
                   "scale": float(jnp.max(jnp.abs(reference)))}
print(json.dumps(report))
"""


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_chunked_inference_gives_the_whole_batch_logits(name):
  env = dict(SUBPROCESS_ENV, XLA_FLAGS="")  # one CPU device
  run = subprocess.run([sys.executable, "-c", CHUNKED_LOGITS, name, json.dumps(OPTIONS[name])],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  report = json.loads(run.stdout.strip().splitlines()[-1])
  assert report["devices"] == 1
  assert report["auto_chunked"] is report["auto_expected"]
  for batch, chunked in (("8", True), ("7", True), ("3", False)):
    result = report[batch]
    assert result["chunked"] is chunked, (batch, result)
    assert result["shape"] == [int(batch), 10]
    assert result["scale"] > 1e-3
    assert result["error"] <= 1e-5 * max(1.0, result["scale"]), (batch, result)
