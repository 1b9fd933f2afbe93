"""What importing the package costs: no TensorFlow, no import cycles, floors kept.

TensorFlow belongs to the tf.data input path and the TFLite export alone. A config, the
package, its models, the train step, `load(...).predict` (from a safetensors export) and
the safetensors, `jax.export`, ONNX and ncnn exports must work in a process that never
imports it.
"""

import ast
import glob
import os
import subprocess
import sys

from tests.conftest import REPO, SUBPROCESS_ENV

WITHOUT_TENSORFLOW = r"""
import importlib.util, os, sys, tempfile
import jax, ml_collections, numpy as np, optax
import mobileshuffle_jax
from mobileshuffle_jax import checkpointing, export, models, safetensors_io, train_step

for path in sys.argv[1:]:  # every config file, loaded as train.py's --config loads it
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if hasattr(module, "get_config"):
    module.get_config()

model = models.build("mobilenet_v1", alpha=0.25, num_classes=3)
variables = jax.device_get(model.init(jax.random.key(0), np.zeros((1, 32, 32, 3)),
                                      train=False))
record = {"model": "mobilenet_v1", "model_options": {"alpha": 0.25, "num_classes": 3},
          "preprocessing": {"image_size": 32, "normalization": "minus_one_one",
                            "eval_crop_ratio": 1.0, "channel_order": "rgb"},
          "params_sha256": checkpointing.params_sha256(variables), "step": 0,
          "class_names": ["a", "b", "c"],
          "config": {"model": "mobilenet_v1", "model_options": {"alpha": 0.25}}}
path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
safetensors_io.write(path, variables, record)
predictor = mobileshuffle_jax.load(path)
assert predictor.predict(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 3)
export.write_safetensors(predictor, path.replace("model.", "again."))
export.write_jax(predictor, path.replace(".safetensors", ".jax"), platforms=("cpu",))
export.export_checkpoint(path, path.replace(".safetensors", ".onnx"), file_format="onnx")
export.export_checkpoint(path, path.replace(".safetensors", ".param"), file_format="ncnn")

tx = optax.sgd(0.1)
state = train_step.TrainState(step=np.int32(0), params=variables["params"],
                              batch_stats=variables["batch_stats"],
                              opt_state=tx.init(variables["params"]), ema_params=None)
step = train_step.make_train_step(model, tx, lambda step: 0.1, ml_collections.ConfigDict(
    {"label_smoothing": 0.0, "ema_decay": 0.0, "data": {"normalization": "imagenet"}}))
batch = {"images": np.zeros((2, 32, 32, 3), np.uint8), "labels": np.zeros(2, np.int32)}
state, metrics = jax.jit(step)(state, batch, jax.random.key(0))
assert int(state.step) == 1 and float(metrics["finite"]) == 1.0
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "tensorflow")
print("tensorflow modules:", loaded)
sys.exit(1 if loaded else 0)
"""


def test_configs_package_models_train_step_predict_and_exports_import_no_tensorflow():
  configs = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True))
  configs = [path for path in configs if not path.endswith("__init__.py")]
  run = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, *configs], cwd=REPO,
                       env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stdout + run.stderr[-3000:]


def package_imports() -> dict[str, set[str]]:
  """{module: the package's modules it imports}, at top level and inside functions alike.

  A package's own `__init__` that a submodule implies is not an edge: it is imported
  first and finishes before the submodule's own imports matter to it.
  """
  package_dir = os.path.join(REPO, "mobileshuffle_jax")
  modules = {}
  for path in glob.glob(os.path.join(package_dir, "**", "*.py"), recursive=True):
    relative = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    modules[relative.removesuffix(".__init__")] = path
  graph = {}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from P import m`: the module P.m if there is one, else a name defined in P.
        for alias in node.names:
          submodule = f"{node.module}.{alias.name}"
          targets.add(submodule if submodule in modules else node.module)
    graph[name] = {target for target in targets if target in modules and target != name}
  return graph


def test_package_imports_have_no_cycles():
  graph = package_imports()
  cycles = []

  def visit(module, path):
    for target in sorted(graph[module]):
      if target in path:
        cycles.append(path[path.index(target):] + [target])
      elif target not in done:
        visit(target, path + [target])
    done.add(module)

  done = set()
  for module in sorted(graph):
    if module not in done:
      visit(module, [module])
  assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


# The floors of the README's "Layout": each module imports only its own floor and those
# below. Modules not named here are the library, between the speed paths and the tools.
PAPER_FLOOR = {"mobileshuffle_jax.layers", "mobileshuffle_jax.paper",
               "mobileshuffle_jax.models.common", "mobileshuffle_jax.models.mobilenet_v1",
               "mobileshuffle_jax.models.shufflenet_v1"}
SPEED_FLOOR = {"mobileshuffle_jax.models", "mobileshuffle_jax.fast",
               "mobileshuffle_jax.fast.batching", "mobileshuffle_jax.fast.conv",
               "mobileshuffle_jax.fast.norm", "mobileshuffle_jax.fast.pool", "mobileshuffle_jax.fast.shuffle_unit"}
TOOL_PREFIXES = ("mobileshuffle_jax.bench", "mobileshuffle_jax.sweep", "mobileshuffle_jax.report",
                 "mobileshuffle_jax.export.check")


def _floor(module: str) -> int:
  if module in PAPER_FLOOR:
    return 0
  if module in SPEED_FLOOR:
    return 1
  if module.startswith(TOOL_PREFIXES):
    return 3
  return 2


def test_each_floor_imports_only_its_own_and_those_below():
  graph = package_imports()
  assert PAPER_FLOOR | SPEED_FLOOR <= set(graph)
  upward = [f"{module} -> {target}" for module, targets in sorted(graph.items())
            for target in sorted(targets) if _floor(target) > _floor(module)]
  assert not upward, "\n".join(upward)
