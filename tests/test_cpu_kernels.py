"""XLA:CPU's kernel choices (`cpu_kernels.LIBRARIES`) compute the same models on this CPU.

Which kernels XLA:CPU picks depends on the CPU and on jaxlib, so each choice runs here, in a
process of its own (XLA reads its flags once per process): both networks under both
lowerings, inference logits and training gradients, held to each other; the compiled
programs show that each choice really ran its kernels.
"""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from mobileshuffle_jax import cpu_kernels
from tests.conftest import REPO, SUBPROCESS_ENV

# What `auto` runs on CPU (the `fast` lowering) for both networks, and the paper lowering's
# convolutions, depthwise included, which YNNPACK also takes.
CASES = (("mobilenet_v1", {"alpha": 0.25}, "fast"), ("mobilenet_v1", {"alpha": 0.25}, "xla"),
         ("shufflenet_v1", {"groups": 3, "scale": 0.5}, "fast"))


def products_by_kernels(hlo: str) -> dict[str, int]:
  """How many dots and convolutions of compiled HLO run in YNNPACK fusions, and how many on
  XLA's own kernels."""
  blocks = re.split(r"\n(?=\S)", hlo)  # computations begin at the start of a line
  bodies = {match.group(1): block for block in blocks
            if (match := re.match(r"(?:ENTRY )?%?([\w.\-]+)", block))}
  in_ynn = {name for block in blocks
            for name in re.findall(r"%ynn_fusion[.\d]*\s*=.*calls=%([\w.\-]+)", block)}
  counts = {"ynnpack": 0, "xla": 0}
  for name, body in bodies.items():
    found = len(re.findall(r"\s(?:dot|convolution)\(", body))
    counts["ynnpack" if name in in_ynn else "xla"] += found
  return counts


def compute(out_path: str) -> None:
  """Logits and gradients of every case, and where their dots and convolutions ran (see
  `products_by_kernels`), written to `out_path` (.npz, with a JSON record)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from mobileshuffle_jax import models  # pylint: disable=g-import-not-at-top

  images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3), jnp.float32)
  labels = jnp.arange(8) % 10
  arrays, kernels = {}, {}
  for name, options, lowering in CASES:
    # A large BN epsilon: at 1x1 pixels, training-mode BN of near-constant channels would
    # amplify float rounding far beyond the tolerance (see tests/test_parallel.py).
    model = models.build(name, lowering=lowering, num_classes=10, bn_epsilon=0.1, **options)
    variables = model.init(jax.random.key(1), images, train=False)

    def loss(params, variables=variables, model=model):
      logits, _ = model.apply({**variables, "params": params}, images, train=True,
                              mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    infer = jax.jit(lambda v, model=model: model.apply(v, images, train=False)).lower(
        variables).compile()
    grad = jax.jit(jax.grad(loss)).lower(variables["params"]).compile()
    key = f"{name}/{lowering}"
    arrays[f"{key}/logits"] = np.asarray(infer(variables))
    for path, leaf in jax.tree_util.tree_leaves_with_path(grad(variables["params"])):
      arrays[f"{key}/grad{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    kernels[key] = products_by_kernels(infer.as_text() + "\n" + grad.as_text())
  np.savez(out_path, **arrays)
  with open(out_path + ".json", "w") as f:
    json.dump({"products": kernels, "status": cpu_kernels.choose()}, f)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """{library: (arrays, record)}, each computed in its own process, side by side."""
  directory = tmp_path_factory.mktemp("cpu_kernels")
  outputs = {library: str(directory / f"{library}.npz") for library in cpu_kernels.LIBRARIES}
  processes = {library: subprocess.Popen(
      [sys.executable, "-c", f"from tests.test_cpu_kernels import compute; compute({out!r})"],
      cwd=REPO, env=dict(SUBPROCESS_ENV, **{cpu_kernels.ENV_VAR: library}),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for library, out in outputs.items()}
  found = {}
  for library, process in processes.items():
    errors = process.communicate(timeout=900)[1]
    assert process.returncode == 0, errors[-3000:]
    with open(outputs[library] + ".json") as f:
      found[library] = (dict(np.load(outputs[library])), json.load(f))
  return found


def test_each_choice_runs_its_kernels(results):
  ynnpack, xla = results["ynnpack"][1], results["xla"][1]
  assert xla["status"].startswith("xla (--xla_cpu_experimental_ynn_fusion_type=")
  for key, products in ynnpack["products"].items():
    # YNNPACK takes the 1x1 convs, the paper lowering's convolutions, the classifier and
    # their gradients where it can; with `xla`, XLA's own kernels take every one.
    assert products["ynnpack"] >= 10, (key, products)
    assert xla["products"][key]["ynnpack"] == 0, (key, xla["products"][key])


def test_every_choice_computes_the_same_logits_and_gradients(results):
  reference = results["ynnpack"][0]
  for library, (arrays, _) in results.items():
    assert arrays.keys() == reference.keys()
    for key, value in arrays.items():
      # float32 sums in another order; a wrong kernel is off by the size of the values.
      # The floor is for gradients that are zero but for rounding (a BN's shift before
      # another BN).
      tolerance = 1e-4 if key.endswith("/logits") else 1e-3
      bound = tolerance * np.max(np.abs(reference[key])) + 1e-6
      assert np.max(np.abs(value - reference[key])) <= bound, (library, key)


def test_an_unknown_choice_is_refused_naming_the_variable():
  env = dict(SUBPROCESS_ENV, **{cpu_kernels.ENV_VAR: "mkl"})
  done = subprocess.run([sys.executable, "-c", "import mobileshuffle_jax"], cwd=REPO, env=env,
                        capture_output=True, text=True, check=False)
  assert done.returncode != 0
  assert f"{cpu_kernels.ENV_VAR}='mkl' is not a kernel library" in done.stderr


def test_flags_set_by_hand_win():
  flag = "--xla_cpu_experimental_ynn_fusion_type=-individual_dot"
  env = dict(SUBPROCESS_ENV, XLA_FLAGS=flag, **{cpu_kernels.ENV_VAR: "xla"})
  done = subprocess.run(
      [sys.executable, "-c", "import os, mobileshuffle_jax as m; "
       "print(m.cpu_kernels.choose()); print(os.environ['XLA_FLAGS'])"],
      cwd=REPO, env=env, capture_output=True, text=True, check=True)
  assert done.stdout.splitlines() == [f"as XLA_FLAGS sets them ({flag})", flag]
