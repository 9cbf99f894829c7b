"""ImageNet and any class-per-folder image set, streamed from disk through torchvision's ImageFolder.

Layout: ``<root>/train/<class>/<image>`` and ``<root>/val/<class>/<image>``
(``test/`` instead of ``val/`` also works); the ``val/`` folder is the test
split, and the validation split is a seeded part held out of ``train/``.
Training images get RandomResizedCrop + horizontal flip in the loader's
workers; evaluation images are resized and centre-cropped. Both come out as
uint8 tensors; the trainer normalises them on its device.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from lmsearch.data.base import DatasetInfo, DatasetNotFoundError, StreamSplit
from lmsearch.data.roots import ENV_VAR, search_roots
from lmsearch.data.splits import split_indices

__all__ = ["load_image_folder", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TEST_DIRS = ("val", "test")


def _transforms(size: int) -> tuple[object, object]:
    from torchvision import transforms as T

    train = T.Compose([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip(), T.PILToTensor()])
    evaluate = T.Compose([T.Resize(round(size / 0.875), antialias=True), T.CenterCrop(size), T.PILToTensor()])
    return train, evaluate


def _find(name: str, root: str | os.PathLike | None) -> tuple[Path, Path]:
    roots = search_roots(root)
    if not roots:
        raise DatasetNotFoundError(f"{name}: no folder given. Pass --data-dir / root= (or set ${ENV_VAR}) to a folder "
                                   f"with train/<class>/*.jpg and val/<class>/*.jpg.")
    tried = []
    for base in roots:
        for folder in (base, base / name):
            tried.append(folder)
            test = next((folder / d for d in _TEST_DIRS if (folder / d).is_dir()), None)
            if (folder / "train").is_dir() and test is not None:
                return folder / "train", test
    raise DatasetNotFoundError(
        f"{name} not found: looked for train/ and val/ (or test/) class folders in {', '.join(map(str, tried))}. "
        f"Expected <root>/train/<class>/<image> and <root>/val/<class>/<image>, e.g. ImageNet's ILSVRC2012 "
        f"images sorted into one folder per class; pass that root as --data-dir / root= (or set ${ENV_VAR})."
    )


def load_image_folder(name: str, root: str | os.PathLike | None = None, *, val_fraction: float, seed: int,
                      subset: int | None, image_size: int = 224,
                      num_workers: int | None = None) -> tuple[DatasetInfo, StreamSplit, StreamSplit, StreamSplit]:
    """``(info, train, val, test)`` streaming parts of a class-per-folder image set."""
    from torchvision.datasets import ImageFolder

    train_dir, test_dir = _find(name, root)
    train_tf, eval_tf = _transforms(image_size)
    try:
        train_ds = ImageFolder(str(train_dir), transform=train_tf)
        test_ds = ImageFolder(str(test_dir), transform=eval_tf)
    except (FileNotFoundError, OSError) as exc:
        raise DatasetNotFoundError(f"{name} in {train_dir.parent} is unusable: {exc}") from exc
    if train_ds.classes != test_ds.classes:
        raise DatasetNotFoundError(f"{name}: the class folders of {train_dir} ({len(train_ds.classes)}) and "
                                   f"{test_dir} ({len(test_ds.classes)}) differ")
    val_ds = copy.copy(train_ds)  # same file list, evaluation transform
    val_ds.transform = eval_tf
    train_idx, val_idx = split_indices(len(train_ds), val_fraction=val_fraction, seed=seed, subset=subset)
    workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
    info = DatasetInfo(name=name, num_classes=len(train_ds.classes), in_channels=3, image_size=(image_size, image_size),
                       mean=IMAGENET_MEAN, std=IMAGENET_STD, hflip=True, crop_padding=0,
                       classes=tuple(train_ds.classes), streaming=True)
    return (info,
            StreamSplit(train_ds, tuple(train_idx.tolist()), workers),
            StreamSplit(val_ds, tuple(val_idx.tolist()), workers),
            StreamSplit(test_ds, None, workers))
