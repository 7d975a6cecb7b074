"""One writer per run folder: a lock file holding the writer's pid and host.

``RunLock(folder)`` creates ``folder/.lock`` (its content written before the file
appears, so a reader never sees it empty) and removes it on release. A second
writer finds the file and is refused with a message naming the holder. A lock
left by a process that no longer runs on this machine (killed with SIGKILL, a
crashed machine's container restarted) is recognised and taken over; a lock of
another machine cannot be checked, so the message says how to remove it.

The lock is re-entrant within a process: ``fastrobust bench`` holds a run
folder's lock while it cleans, trains and evaluates the run, and the training
inside takes the same lock again without conflict.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

from ..errors import FastrobustError
from ..runfolder import LOCK as LOCK_NAME
from .checkpoint import write_error

_held: dict[Path, int] = {}   # folder -> how many times this process holds its lock


class RunFolderInUse(FastrobustError):
    """Another process writes to this run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # it exists, owned by another user
        return True
    except OSError:
        return True
    return True


def _read(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _stale(info: dict) -> bool:
    """A lock of a process of this machine that is gone (or of this process, not held by it)."""
    pid, host = info.get("pid"), info.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return False
    return pid == os.getpid() or not _alive(pid)


class RunLock:
    """The lock of one run folder (created if missing); use as a context manager or call
    :meth:`acquire` / :meth:`release`. ``created_folder`` says whether acquiring made the folder."""

    def __init__(self, folder: str | os.PathLike, command: str = "fastrobust"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self.created_folder = False
        self._key: Path | None = None

    def acquire(self) -> "RunLock":
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            raise FastrobustError(f"--out {folder} is an existing file, not a folder; choose another --out")
        if not folder.exists():
            try:
                folder.mkdir(parents=True)
                self.created_folder = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise write_error(folder, exc) from None
        key = folder.resolve()
        if _held.get(key):
            _held[key] += 1
            self._key = key
            return self
        payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                              "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        for _ in range(3):
            if self._create(payload):
                _held[key] = 1
                self._key = key
                return self
            info = _read(self.path)
            if info is None:
                continue   # released meanwhile: try again
            if _stale(info):
                self._take_over(info)
                continue
            who = (f"process {info.get('pid')} on {info.get('host')} ({info.get('command', 'fastrobust')}, since "
                   f"{info.get('since', '?')})") if info else "another process"
            raise RunFolderInUse(
                f"{folder} is in use by {who}: one run folder has one writer at a time. Wait for it to end or choose "
                f"another --out; if no such process runs any more, delete {self.path}")
        raise RunFolderInUse(f"{folder}: could not take its lock {self.path}; delete it if no fastrobust process "
                             f"writes there")

    def _take_over(self, stale: dict) -> None:
        """Remove the stale lock ``stale`` atomically: move it aside under a name of this process's (one racer
        wins the move), then delete it if it is the lock judged stale; a lock another process made
        meanwhile is put back."""
        aside = self.folder / f"{LOCK_NAME}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return   # another process took it over first
        try:
            if _read(aside) != stale:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
        finally:
            aside.unlink(missing_ok=True)

    def _create(self, payload: str) -> bool:
        """Create the lock file with its content in one step (link of a finished temporary file)."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=f"{LOCK_NAME}.", suffix=".tmp", dir=self.folder)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(payload)
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:   # a file system without hard links: exclusive creation instead
            try:
                new = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            except OSError as exc:
                raise write_error(self.path, exc) from None
            with os.fdopen(new, "w") as fh:
                fh.write(payload)
            return True
        finally:
            Path(tmp).unlink(missing_ok=True)

    def release(self) -> None:
        key, self._key = self._key, None
        if key is None:
            return
        _held[key] -= 1
        if _held[key] > 0:
            return
        del _held[key]
        info = _read(self.path)
        if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        if self.created_folder:   # nothing was written: leave no empty folder behind
            try:
                self.folder.rmdir()
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
