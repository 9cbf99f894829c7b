"""Fault injection for tests and the chaos benchmark (off unless LMSEARCH_FAULTS is set).

``LMSEARCH_FAULTS`` holds comma-separated rules ``ACTION@NUMBER:EPOCH``: when the
trial with Optuna number NUMBER is about to report EPOCH, ``raise`` makes it
raise, ``kill`` SIGKILLs its worker process. A kill fires once per rule: a
marker file in ``LMSEARCH_FAULTS_DIR`` (required for kill) records that it did.

``LMSEARCH_EPOCH_LOG`` names a file that gets a line ``NUMBER,EPOCH`` for every
epoch a trial actually trains (not for results re-reported after a resume), so
the chaos benchmark can tell a resumed trial from a finished one trained again.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

__all__ = ["maybe_inject_fault", "log_trained_epoch", "InjectedFault"]


class InjectedFault(RuntimeError):
    """Raised by a ``raise@N:E`` rule."""


def maybe_inject_fault(number: int, epoch: int) -> None:
    rules = os.environ.get("LMSEARCH_FAULTS", "")
    for rule in filter(None, (r.strip() for r in rules.split(","))):
        action, _, where = rule.partition("@")
        n, _, e = where.partition(":")
        if int(n) != number or int(e) != epoch:
            continue
        if action == "raise":
            raise InjectedFault(f"injected fault in trial {number} at epoch {epoch}")
        if action == "kill":
            marker = Path(os.environ["LMSEARCH_FAULTS_DIR"]) / f"kill-{number}-{epoch}"
            if not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)


def log_trained_epoch(number: int, epoch: int) -> None:
    path = os.environ.get("LMSEARCH_EPOCH_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{number},{epoch}\n")
