"""CIFAR-10 and CIFAR-100 through torchvision's loaders, from a local root (downloaded only when asked).

torchvision checks every file against its md5 table, so a truncated or
altered file is reported as corrupt rather than read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from lmsearch.data.base import DatasetInfo, DatasetNotFoundError, TensorSplit
from lmsearch.data.roots import ENV_VAR, default_download_root, search_roots

__all__ = ["CIFAR_INFO", "load_cifar"]

CIFAR_INFO = {
    "cifar10": DatasetInfo(name="cifar10", num_classes=10, in_channels=3, image_size=(32, 32),
                           mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), hflip=True, crop_padding=4),
    "cifar100": DatasetInfo(name="cifar100", num_classes=100, in_channels=3, image_size=(32, 32),
                            mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), hflip=True, crop_padding=4),
}


def _dataset_class(name: str) -> type:
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR10 if name == "cifar10" else CIFAR100


def _to_split(ds: object) -> TensorSplit:
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # type: ignore[attr-defined]
    return TensorSplit(images, torch.as_tensor(ds.targets, dtype=torch.int64))  # type: ignore[attr-defined]


def _download(cls: type, target: Path) -> None:
    """Download and unpack into a temporary folder next to ``target``, then rename into place."""
    if (target / cls.base_folder).is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as tmp:
        try:
            cls(tmp, train=True, download=True)
        except Exception as exc:
            raise DatasetNotFoundError(f"downloading {cls.url} into {target} failed ({type(exc).__name__}: {exc}); "
                                       f"on a machine without internet, copy {cls.base_folder}/ there instead") from exc
        try:
            os.rename(Path(tmp) / cls.base_folder, target / cls.base_folder)
        except OSError:
            if not (target / cls.base_folder).is_dir():  # not a concurrent download that won the race
                raise


def load_cifar(name: str, root: str | os.PathLike | None = None, *,
               download: bool = False) -> tuple[TensorSplit, TensorSplit, tuple[str, ...]]:
    """``(train, test, class names)`` of ``cifar10`` / ``cifar100`` as uint8 ``(N, 3, 32, 32)`` tensors."""
    cls = _dataset_class(name)
    roots = search_roots(root) or [default_download_root()]
    folder = cls.base_folder
    if download:
        _download(cls, roots[0])
        roots = [roots[0]]
    else:
        present = [r for r in roots if (r / folder).is_dir()]
        if not present:
            where = ", ".join(str(r / folder) for r in roots)
            raise DatasetNotFoundError(
                f"{name} not found: looked for torchvision's {folder}/ folder in {where}. Pass the folder that "
                f"contains {folder}/ as --data-dir / root= (or set ${ENV_VAR}); on a machine with internet, "
                f"download=True (lmsearch train --download) fetches it from {cls.url}."
            )
        roots = present
    base = roots[0]
    try:
        train = cls(str(base), train=True, download=False)
        test = cls(str(base), train=False, download=False)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        raise DatasetNotFoundError(
            f"{name} in {Path(base) / folder} is incomplete or corrupt: torchvision's md5 check of "
            f"{', '.join(files)} failed ({exc}). Replace the folder with a fresh copy of {cls.url} "
            f"(download=True on a machine with internet)."
        ) from exc
    except Exception as exc:  # a file that passes the md5 table cannot fail to unpickle, but be clear anyway
        raise DatasetNotFoundError(f"{name} in {Path(base) / folder} is unreadable: {type(exc).__name__}: {exc}") from exc
    return _to_split(train), _to_split(test), tuple(train.classes)
