"""One search per experiment folder: a kernel lock (``flock``) on ``<exp_dir>/search.lock``.

The operating system holds the lock for the process that took it and drops it
when that process ends, however it ends (Ctrl-C, a crash, SIGKILL), so a lock
is never stale and never handed to two processes. The file also records the
owner's pid and host, for messages only: whether the folder is in use is the
kernel's answer, not the file's. On a shared file system the lock spans hosts
where the file system supports locks (NFS does).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["ExperimentLock", "ExperimentLocked", "LOCK_NAME"]

LOCK_NAME = "search.lock"


class ExperimentLocked(RuntimeError):
    """Another live search owns the experiment folder."""


def _read_holder(fd: int) -> dict[str, Any] | None:
    """The owner recorded in an open lock file, or None when it is empty or unreadable."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode())
        return {"pid": int(holder["pid"]), "host": str(holder["host"])}
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def _names_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a releasing owner unlinks it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (opened.st_dev, opened.st_ino)


class ExperimentLock:
    """Context manager: hold ``<exp_dir>/search.lock`` or raise :class:`ExperimentLocked` naming the owner.

    The folder must exist. Raises ``OSError`` when the lock file cannot be
    created or written (e.g. a read-only folder).
    """

    def __init__(self, exp_dir: str | Path) -> None:
        self.path = Path(exp_dir) / LOCK_NAME
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting."""
        if self._fd is not None:
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise
                who = f" (pid {holder['pid']} on {holder['host']})" if holder else ""
                raise ExperimentLocked(f"{self.path.parent} is in use by a running search{who}; "
                                       f"wait for it, stop it, or choose another --out") from None
            if _names_file(fd, self.path):
                break
            os.close(fd)  # locked a file its owner removed on release: lock the one the path names now
        try:
            previous = _read_holder(fd)
            if previous:
                print(f"lmsearch: taking over stale lock {self.path} (pid {previous['pid']} on "
                      f"{previous['host']} ended without releasing it)", file=sys.stderr)
            data = json.dumps(self.owner).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in that order, see :meth:`acquire`)."""
        if self._fd is None:
            return
        try:
            if _names_file(self._fd, self.path):
                self.path.unlink()
        except OSError:
            pass  # the lock itself goes with the descriptor
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> ExperimentLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
