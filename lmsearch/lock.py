"""One search per experiment folder: a lock file holding the owner's pid and host."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

__all__ = ["ExperimentLock", "ExperimentLocked"]

LOCK_NAME = "search.lock"


class ExperimentLocked(RuntimeError):
    """Another live search owns the experiment folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ExperimentLock:
    """Context manager: take ``<exp_dir>/search.lock`` or refuse with the owner named.

    A lock left by a dead process on this host is taken over with a message.
    A lock from another host is refused (its liveness cannot be checked here);
    delete the file by hand once that search is known to be gone.
    """

    def __init__(self, exp_dir: str | Path) -> None:
        self.path = Path(exp_dir) / LOCK_NAME
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            return
        raise ExperimentLocked(f"could not take the lock {self.path}")

    def _handle_existing(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            print(f"lmsearch: replacing unreadable lock file {self.path}", file=sys.stderr)
            self.path.unlink(missing_ok=True)
            return
        if host == self.owner["host"] and not _pid_alive(pid):
            print(f"lmsearch: taking over stale lock {self.path} (pid {pid} on {host} is gone)", file=sys.stderr)
            self.path.unlink(missing_ok=True)
            return
        raise ExperimentLocked(
            f"{self.path.parent} is in use by a running search (pid {pid} on {host}); "
            f"wait for it, stop it, or choose another --out"
        )

    def release(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if holder.get("pid") == self.owner["pid"] and holder.get("host") == self.owner["host"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> ExperimentLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
