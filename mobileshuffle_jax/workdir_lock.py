"""One training run per workdir.

Process 0 holds an exclusive `flock` on `workdir/train.lock` for the whole run and writes
its holder (host, PID, start time) into it. A second run is refused with that name. The
operating system releases the lock when its holder exits, however it exits (SIGKILL
included), so a lock whose holder is gone is taken over, with a warning naming the
holder that left it. Object stores (gs://, s3://) have no locks: there one run per
workdir is the user's to keep (see the README).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket

log = logging.getLogger("mobileshuffle_jax")

LOCK_FILE = "train.lock"


class WorkdirInUseError(RuntimeError):
  """Another training run holds the workdir."""


def _describe(holder_text: str) -> str:
  try:
    holder = json.loads(holder_text)
    return (f"PID {holder['pid']} on {holder['host']}, started {holder['started']}")
  except (ValueError, KeyError, TypeError):
    return "a process that left no description"


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir for one training run."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def acquire(self) -> None:
    if "://" in self.workdir:
      log.warning("%s is on an object store, which has no locks: make sure no other run "
                  "trains into it.", self.workdir)
      return
    os.makedirs(self.workdir, exist_ok=True)
    # O_CLOEXEC: a child process must not inherit, and so extend, the run's hold.
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode(errors="replace")
      os.close(fd)
      raise WorkdirInUseError(
          f"{self.workdir} is in use by another training run ({_describe(holder)}): wait "
          "for it to finish, stop it, or use another --workdir") from None
    except OSError as error:  # a file system without flock support
      os.close(fd)
      log.warning("Cannot lock %s (%s): make sure no other run trains into it.",
                  self.workdir, error.strerror)
      return
    previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    if previous:
      log.warning("Taking over %s from %s, which is gone without releasing it.", self.path,
                  _describe(previous))
    holder = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    if self._fd is None:
      return
    os.ftruncate(self._fd, 0)  # released in order: the next run has nothing to take over
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None
