"""Outputs written under a temporary name beside their final path and renamed at the end.

Readers never see a partial file or directory, and a failure removes what it wrote. A
process killed outright (SIGKILL, power loss) cannot clean up: its partial output, named
`PATH.partial-<pid>-<random>`, is removed by the next writer of PATH once that process is
gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from typing import Iterator

log = logging.getLogger("mobileshuffle_jax")

PARTIAL_MARK = ".partial-"


def _partial_path(path: str) -> str:
  return f"{path}{PARTIAL_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _writer_alive(name: str, prefix: str) -> bool:
  """Whether the process that named a partial output `name` still runs on this host."""
  pid_text = name[len(prefix):].split("-", 1)[0]
  if not pid_text.isdigit():
    return False  # not named by this module: left behind by an older version
  try:
    os.kill(int(pid_text), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # another user's live process
  return True


def remove_stale_partials(path: str) -> None:
  """Delete partial outputs of `path` left by writers that no longer run."""
  directory, base = os.path.split(os.path.abspath(path))
  prefix = base + PARTIAL_MARK
  if not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if name.startswith(prefix) and not _writer_alive(name, prefix):
      stale = os.path.join(directory, name)
      log.info("Removing %s, the partial output of an interrupted earlier run.", stale)
      if os.path.isdir(stale) and not os.path.islink(stale):
        shutil.rmtree(stale, ignore_errors=True)
      else:
        with contextlib.suppress(FileNotFoundError):
          os.unlink(stale)


@contextlib.contextmanager
def staged_file(path: str) -> Iterator[str]:
  """A temporary path beside `path`, renamed to `path` when the block succeeds and removed
  when it fails."""
  remove_stale_partials(path)
  # Created by the writer, so with the umask's permissions (mkstemp's would be 0600).
  staging = _partial_path(path)
  try:
    yield staging
    os.replace(staging, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(staging)
    raise


@contextlib.contextmanager
def staged_directory(path: str) -> Iterator[str]:
  """A new directory beside `path` (which must be absent or empty), renamed to `path` when
  the block succeeds and removed when it fails."""
  remove_stale_partials(path)
  staging = _partial_path(path)
  os.makedirs(staging)  # the umask's permissions: a shared checkpoint stays readable
  try:
    yield staging
    if os.path.isdir(path):
      os.rmdir(path)  # empty, or this fails rather than mixing outputs
    os.rename(staging, path)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
