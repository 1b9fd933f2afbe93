"""Packaging: what `pip install /path/to/mobileshuffle-jax` and `pip install -e .` give a
project outside this repository.

Everything is built and installed with the test venv's own pip and setuptools, offline
(`--no-index --no-build-isolation --no-deps`): the venv already holds the dependencies, and
the installed copies are imported from another directory so that the repository cannot
stand in for them.
"""

from __future__ import annotations

import collections
import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from packaging.requirements import Requirement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "mobileshuffle_jax"
# What the build reads, plus configs/ and tests/: packages beside ours that must stay out of
# the wheel. A file that pyproject.toml comes to reference belongs here too.
BUILD_INPUTS = ("pyproject.toml", "requirements.txt", "README.md", PACKAGE, "configs", "tests")
# Offline and leaving no pip cache: the venv's setuptools builds (build isolation would fetch
# one from an index) and the venv's packages are the dependencies.
PIP_OFFLINE = ("--no-index", "--no-build-isolation", "--no-deps", "--no-cache-dir",
               "--disable-pip-version-check")


def _run(*args, cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> str:
  command = [str(arg) for arg in args]
  result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, (
      f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
  return result.stdout


def _copy_build_inputs(destination) -> str:
  """A copy of the repository to build from: pip builds in the source tree, and its build/
  and *.egg-info must not land in the working tree (nor race a parallel test)."""
  os.makedirs(destination)
  for name in BUILD_INPUTS:
    source = os.path.join(REPO, name)
    if os.path.isdir(source):
      shutil.copytree(source, os.path.join(destination, name),
                      ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    elif os.path.exists(source):
      shutil.copy2(source, os.path.join(destination, name))
  return str(destination)


def _repository_modules() -> set[str]:
  modules = set()
  for directory, _, files in os.walk(os.path.join(REPO, PACKAGE)):
    for name in files:
      if name.endswith(".py"):
        modules.add(os.path.relpath(os.path.join(directory, name), REPO).replace(os.sep, "/"))
  return modules


def _requirements_txt_pins() -> list[Requirement]:
  """requirements.txt as pip reads it for `make install`: '#' comments, whole-line or after
  whitespace, are dropped."""
  with open(os.path.join(REPO, "requirements.txt")) as f:
    lines = [re.sub(r"(^|\s)#.*", "", line).strip() for line in f]
  return [Requirement(line) for line in lines if line]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
  root = tmp_path_factory.mktemp("packaging")
  source = _copy_build_inputs(root / "source")
  _run(sys.executable, "-m", "pip", "wheel", *PIP_OFFLINE, "-w", root / "dist", source)
  (built,) = os.listdir(root / "dist")
  return str(root / "dist" / built)


def test_wheel_holds_every_module_and_nothing_else(wheel):
  with zipfile.ZipFile(wheel) as archive:
    files = {name for name in archive.namelist()
             if not name.split("/", 1)[0].endswith(".dist-info")}
  assert files == _repository_modules()


def test_wheel_requires_the_pins_of_requirements_txt(wheel):
  with zipfile.ZipFile(wheel) as archive:
    (metadata_path,) = [name for name in archive.namelist()
                        if re.fullmatch(r"[^/]+\.dist-info/METADATA", name)]
    metadata = email.parser.Parser().parsestr(archive.read(metadata_path).decode())
  required = [Requirement(line) for line in metadata.get_all("Requires-Dist", [])]
  # Requirement compares normalized names, extras, specifiers and markers.
  assert collections.Counter(required) == collections.Counter(_requirements_txt_pins())


def test_installed_wheel_works_outside_the_repository(wheel, tmp_path):
  target = tmp_path / "site"
  _run(sys.executable, "-m", "pip", "install", *PIP_OFFLINE, "--target", target, wheel)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  script = (
      "import json\n"
      "import mobileshuffle_jax\n"
      "from mobileshuffle_jax import models, predict\n"
      "print(json.dumps({'package': mobileshuffle_jax.__file__, 'models': models.__file__,\n"
      "                  'load_is_predict_load': mobileshuffle_jax.load is predict.load}))\n")
  # The venv's own site-packages provide the dependencies; the package only `target` can.
  env = {**os.environ, "PYTHONPATH": str(target)}
  found = json.loads(_run(sys.executable, "-c", script, cwd=elsewhere, env=env).splitlines()[-1])
  assert found["package"] == str(target / PACKAGE / "__init__.py")
  assert found["models"] == str(target / PACKAGE / "models" / "__init__.py")
  assert found["load_is_predict_load"]


def test_editable_install_imports_the_source_tree_as_it_changes(tmp_path):
  source = _copy_build_inputs(tmp_path / "source")
  prefix = tmp_path / "prefix"
  _run(sys.executable, "-m", "pip", "install", *PIP_OFFLINE, "--prefix", prefix, "-e", source)
  site_packages = sysconfig.get_path("purelib", "posix_prefix",
                                     {"base": str(prefix), "platbase": str(prefix)})
  assert os.path.isdir(site_packages), os.listdir(prefix)
  # Written after the install: an editable install must serve it without reinstalling.
  with open(os.path.join(source, PACKAGE, "editable_probe.py"), "w") as f:
    f.write("EDITED = True\n")
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  # addsitedir runs the install's .pth hook, which PYTHONPATH would not.
  script = (
      "import importlib.util, json, site, sys\n"
      "site.addsitedir(sys.argv[1])\n"
      "import mobileshuffle_jax\n"
      "from mobileshuffle_jax import editable_probe\n"
      "print(json.dumps({'package': mobileshuffle_jax.__file__,\n"
      "                  'edited': editable_probe.EDITED,\n"
      "                  'configs': importlib.util.find_spec('configs') is not None}))\n")
  env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
  found = json.loads(
      _run(sys.executable, "-c", script, site_packages, cwd=elsewhere, env=env).splitlines()[-1])
  assert found["package"] == os.path.join(source, PACKAGE, "__init__.py")
  assert found["edited"]
  assert not found["configs"], "the editable install exposes the repository's configs/"
