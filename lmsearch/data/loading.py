"""``load_dataset``: one name -> a :class:`DatasetSplits` with a seeded validation split."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from lmsearch.data.base import DatasetSplits
from lmsearch.data.splits import split_train

__all__ = ["DATASETS", "load_dataset"]

# name -> dataset-specific keyword options load_dataset accepts for it
DATASETS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": (),
    "cifar10": (),
    "cifar100": (),
    "imagenet": ("image_size", "num_workers"),
    "folder": ("image_size", "num_workers", "test_fraction"),
    "synthetic": ("num_train", "num_test", "shape", "num_classes"),
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar-100": "cifar100", "imagefolder": "folder"}


def load_dataset(name: str = "fashion-mnist", root: str | os.PathLike | None = None, *, val_fraction: float = 0.1,
                 seed: int | None = 0, subset: int | None = None, download: bool = False,
                 **options: Any) -> DatasetSplits:
    """Load a dataset as train / val / test parts.

    Args:
        name: ``fashion-mnist`` (default), ``cifar10``, ``cifar100``, ``imagenet``,
            ``folder`` (your own images, grey or colour, any size: ``root/train/<class>/``
            + ``root/val/<class>/``, or ``root/train/<class>/`` or ``root/<class>/`` alone)
            or ``synthetic`` (tests and benchmarks only).
        root: folder to read from; default ``$LMSEARCH_DATA``, then (Fashion-MNIST)
            ``/usr/share/datasets/fashion-mnist``.
        val_fraction: share of the training set held out, seeded, as ``val``.
        seed: seed of the validation split and of ``subset`` (``None`` = 0).
        subset: keep this many images of the training part (after the split); more
            than there are is a ValueError naming both numbers.
        download: CIFAR only: fetch the files when missing (needs internet).
        options: ``imagenet`` / ``folder``: ``image_size`` (pixels of the square
            images a model sees; default 224 for ImageNet, the images' median
            shorter side for ``folder``), ``num_workers`` (DataLoader processes;
            default: the training process's torch threads, at most 4);
            ``folder`` without a ``val/`` folder: ``test_fraction`` (0.1) of the
            images held out, with a fixed seed, as the test split;
            ``synthetic``: ``num_train`` (5000), ``num_test`` (1000), ``shape``
            ((3, 32, 32)), ``num_classes`` (10).

    Small sets come back as :class:`TensorSplit` (uint8 tensors in memory),
    image folders as :class:`StreamSplit` (read from disk by a DataLoader).

    Raises:
        DatasetNotFoundError: the files are missing or corrupt, the folder does not
            exist or holds no images (the message says what was looked for, where,
            and how to get it).
        ValueError: a bad option, e.g. a ``subset`` larger than the training images.

    Example:
        >>> data = load_dataset("fashion-mnist", subset=2000)
        >>> len(data.train), len(data.val), data.info.shape
        (2000, 6000, (1, 28, 28))
    """
    key = _ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    unknown = sorted(set(options) - set(DATASETS[key]))
    if unknown:
        allowed = ", ".join(DATASETS[key]) or "none"
        raise TypeError(f"load_dataset({key!r}) got unexpected option(s) {', '.join(unknown)}; allowed: {allowed}")
    seed = 0 if seed is None else int(seed)
    if download and key not in ("cifar10", "cifar100"):
        raise ValueError(f"download=True is only for cifar10/cifar100; {key} must already be on disk")

    if key in ("imagenet", "folder"):
        from lmsearch.data.folder import load_image_folder

        info, train, val, test = load_image_folder(key, root, val_fraction=val_fraction, seed=seed, subset=subset,
                                                   **options)
        return DatasetSplits(info, train, val, test)
    if key == "fashion-mnist":
        from lmsearch.data.fashion_mnist import INFO, load_fashion_mnist

        info = INFO
        full, test = load_fashion_mnist(root)
    elif key in ("cifar10", "cifar100"):
        from lmsearch.data.cifar import CIFAR_INFO, load_cifar

        full, test, classes = load_cifar(key, root, download=download)
        info = dataclasses.replace(CIFAR_INFO[key], classes=classes)
    else:
        from lmsearch.data.synthetic import make_synthetic

        info, full, test = make_synthetic(seed=seed, **options)
    where = f" in {root}" if root is not None else ""
    train, val = split_train(full, val_fraction=val_fraction, seed=seed, subset=subset, source=f"{key}{where}")
    return DatasetSplits(info, train, val, test)
