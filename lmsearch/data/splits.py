"""The seeded validation split held out of the training set, and ``subset=N`` of what remains."""

from __future__ import annotations

import operator

import torch

from lmsearch.data.base import TensorSplit

__all__ = ["split_indices", "split_train"]


def split_indices(n: int, *, val_fraction: float, seed: int, subset: int | None,
                  source: str = "the dataset") -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted ``(train, val)`` indices into ``n`` training items.

    ``round(n * val_fraction)`` items, drawn with ``seed``, are held out for
    validation; ``subset`` then keeps that many of the rest, drawn with the
    same seeded permutation (so the validation set does not depend on it).
    ``source`` names the data in error messages.

    Raises:
        ValueError: a bad ``val_fraction`` or ``subset``, a ``subset`` larger than
            the training images left, or no training image left at all.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    if subset is not None:
        if isinstance(subset, bool) or not hasattr(subset, "__index__") or operator.index(subset) < 1:
            raise ValueError(f"subset must be a positive integer (a number of training images); got {subset!r}")
        subset = operator.index(subset)  # numpy integers from a results table
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    if len(train) == 0:
        raise ValueError(f"{source} has {n} training image(s); val_fraction={val_fraction} holds out {n_val} for "
                         f"validation and leaves none to train on")
    if subset is not None:
        if subset > len(train):
            raise ValueError(f"subset={subset} is larger than the {len(train)} training images of {source} "
                             f"({n} in its training part, {n_val} of them held out for validation by "
                             f"val_fraction={val_fraction}); use subset <= {len(train)} or leave it out to "
                             f"train on all of them")
        train = train[:subset]
    return train.sort().values, val.sort().values


def split_train(part: TensorSplit, *, val_fraction: float, seed: int, subset: int | None,
                source: str = "the dataset") -> tuple[TensorSplit, TensorSplit]:
    """``(train, val)`` parts of an in-memory training part (see :func:`split_indices`)."""
    train_idx, val_idx = split_indices(len(part), val_fraction=val_fraction, seed=seed, subset=subset,
                                       source=source)
    return part.take(train_idx), part.take(val_idx)
