"""Epoch checkpoints of unfinished trials, kept in the experiment folder so a search outlives its machine.

Ray keeps its own trial checkpoints under ``<experiment>/ray/`` (not committed,
and gone in a fresh clone). A search that lasts several sittings also needs to
go on from a clone that has only the committed folder: a resumed study queues
an interrupted configuration again, and that trial continues from the last
epoch recorded here instead of epoch 0::

    results/<name>/checkpoints/<key>.pt    the trainer's state after its last finished epoch

``key`` is a hash of what determines the training run (architecture, training
recipe with its seed, epoch budget) and of the run it belongs to (the config's
``run``: the Optuna trial number that first asked for it, kept when an
interrupted configuration is queued again), so the trial queued again finds
the checkpoint of the one that was interrupted, and two trials that happen to
share a configuration never share a file. A file exists only while its trial
is unfinished: the search deletes it when the trial ends, so the folder holds
at most ``max_concurrent`` of them (a few MB each for CIFAR-sized nets).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from lmsearch.atomic import atomic_write

__all__ = ["CHECKPOINT_DIR", "checkpoint_key", "checkpoint_path", "save_checkpoint", "load_checkpoint",
           "remove_checkpoint"]

CHECKPOINT_DIR = "checkpoints"


def checkpoint_key(config: dict[str, Any], epochs: int, legacy: bool = False) -> str:
    """The hash naming a run's checkpoint: its ``spec``, ``train``, epoch budget and ``run``.

    ``run`` defaults to the config's ``number``. ``legacy=True`` is the key of
    checkpoints written before the run was part of it (read, never written).

    Example:
        >>> checkpoint_key({"spec": {"scheme": "lm"}, "train": {"seed": 1}, "number": 7, "run": 2}, 8) == (
        ...     checkpoint_key({"train": {"seed": 1}, "spec": {"scheme": "lm"}, "number": 2}, 8))
        True
    """
    what = {"spec": config["spec"], "train": config["train"], "epochs": int(epochs)}
    if not legacy:
        what["run"] = config.get("run", config.get("number"))
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def checkpoint_path(exp_dir: str | os.PathLike, config: dict[str, Any], epochs: int, legacy: bool = False) -> Path:
    return Path(exp_dir) / CHECKPOINT_DIR / f"{checkpoint_key(config, epochs, legacy)}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a trainer state atomically (a killed writer leaves the previous epoch's file intact)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, legacy: Path | None = None) -> dict[str, Any] | None:
    """The state in ``path`` (else in ``legacy``), or None when there is none or it cannot be read.

    A file cut short or garbled (any error unpickling it) means the trial starts over.
    """
    for candidate in (path, legacy):
        if candidate is None or not candidate.is_file():
            continue
        try:
            return torch.load(candidate, weights_only=True, map_location="cpu")
        except Exception:  # noqa: BLE001 - torch.load raises many types on damaged files; none is fatal here
            return None
    return None


def remove_checkpoint(exp_dir: str | os.PathLike, config: dict[str, Any], epochs: int) -> None:
    """Forget the checkpoint of a trial that has ended (a missing file is fine)."""
    checkpoint_path(exp_dir, config, epochs).unlink(missing_ok=True)
