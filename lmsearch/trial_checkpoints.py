"""Epoch checkpoints of unfinished trials, kept in the experiment folder so a search outlives its machine.

Ray keeps its own trial checkpoints under ``<experiment>/ray/`` (not committed,
and gone in a fresh clone). A search that lasts several sittings also needs to
go on from a clone that has only the committed folder: a resumed study queues
an interrupted configuration again, and that trial continues from the last
epoch recorded here instead of epoch 0::

    results/<name>/checkpoints/<key>.pt    the trainer's state after its last finished epoch

``key`` is a hash of what determines the training run (architecture, training
recipe with its seed, epoch budget), so the configuration queued again finds
the checkpoint of the one that was interrupted. A file exists only while its
trial is unfinished: the search deletes it when the trial ends, so the folder
holds at most ``max_concurrent`` of them (a few MB each for CIFAR-sized nets).
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


def checkpoint_key(config: dict[str, Any], epochs: int) -> str:
    """The hash naming a trial configuration's checkpoint: its ``spec``, ``train`` and the epoch budget.

    Example:
        >>> checkpoint_key({"spec": {"scheme": "lm"}, "train": {"seed": 1}}, 8) == checkpoint_key(
        ...     {"train": {"seed": 1}, "spec": {"scheme": "lm"}, "number": 5}, 8)
        True
    """
    what = {"spec": config["spec"], "train": config["train"], "epochs": int(epochs)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def checkpoint_path(exp_dir: str | os.PathLike, config: dict[str, Any], epochs: int) -> Path:
    return Path(exp_dir) / CHECKPOINT_DIR / f"{checkpoint_key(config, epochs)}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a trainer state atomically (a killed writer leaves the previous epoch's file intact)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The state in ``path``, or None when there is none or it cannot be read (then the trial starts over)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, RuntimeError, EOFError, KeyError, ValueError):
        return None


def remove_checkpoint(exp_dir: str | os.PathLike, config: dict[str, Any], epochs: int) -> None:
    """Forget the checkpoint of a trial that has ended (a missing file is fine)."""
    checkpoint_path(exp_dir, config, epochs).unlink(missing_ok=True)
