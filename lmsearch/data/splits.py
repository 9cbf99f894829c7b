"""The seeded validation split held out of the training set, and ``subset=N`` of what remains."""

from __future__ import annotations

import torch

from lmsearch.data.base import TensorSplit

__all__ = ["split_indices", "split_train"]


def split_indices(n: int, *, val_fraction: float, seed: int, subset: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted ``(train, val)`` indices into ``n`` training items.

    ``round(n * val_fraction)`` items, drawn with ``seed``, are held out for
    validation; ``subset`` then keeps that many of the rest, drawn with the
    same seeded permutation (so the validation set does not depend on it).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
            raise ValueError(f"subset must be a positive integer; got {subset!r}")
        if subset > len(train):
            raise ValueError(f"subset={subset} is larger than the training part ({len(train)} images after holding "
                             f"out {n_val} for validation)")
        train = train[:subset]
    return train.sort().values, val.sort().values


def split_train(part: TensorSplit, *, val_fraction: float, seed: int,
                subset: int | None) -> tuple[TensorSplit, TensorSplit]:
    """``(train, val)`` parts of an in-memory training part (see :func:`split_indices`)."""
    train_idx, val_idx = split_indices(len(part), val_fraction=val_fraction, seed=seed, subset=subset)
    return part.take(train_idx), part.take(val_idx)
