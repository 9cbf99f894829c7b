"""Fashion-MNIST from the standard IDX files (Debian's ``dataset-fashion-mnist``), read by torchvision.

The files may be gzipped (as Debian ships them) or plain, directly in the
folder, in ``<folder>/fashion-mnist`` or in torchvision's own layout
``<folder>/FashionMNIST/raw``. torchvision's :class:`~torchvision.datasets.FashionMNIST`
reads plain files from ``<root>/FashionMNIST/raw``, so the files are staged
there in a private temporary folder (gunzipped, or linked when already
plain) that is removed after reading: nothing is written next to the data,
nothing half-written is left behind. Debian recompressed the archives, so
torchvision's md5 table of the .gz files does not apply; a damaged file is
caught by gzip's CRC and by checking the parsed shapes and labels.

Horizontal flip is used as augmentation: no Fashion-MNIST class depends on
left/right (a mirrored shoe or shirt is still a shoe or shirt), and flips are
common practice on this set.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import torch

from lmsearch.data.base import DatasetInfo, DatasetNotFoundError, TensorSplit
from lmsearch.data.roots import ENV_VAR, search_roots

__all__ = ["DEFAULT_ROOT", "FILES", "INFO", "load_fashion_mnist", "find_fashion_mnist"]

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
INFO = DatasetInfo(name="fashion-mnist", num_classes=10, in_channels=1, image_size=(28, 28), mean=(0.2860,),
                   std=(0.3530,), hflip=True, crop_padding=4, classes=CLASSES)
_HOW = (f"Install it with `apt-get install dataset-fashion-mnist` (files in {DEFAULT_ROOT}), or put the four "
        f"IDX files ({', '.join(f + '[.gz]' for f in FILES)}) in a folder and pass it as --data-dir / root=, "
        f"or set ${ENV_VAR}.")


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(root: str | os.PathLike | None = None) -> dict[str, Path]:
    """The four IDX files (plain or .gz) by base name; raises :class:`DatasetNotFoundError` naming every place tried."""
    tried = []
    for base in search_roots(root, DEFAULT_ROOT):
        for folder in (base, base / "fashion-mnist", base / "FashionMNIST" / "raw"):
            found = {name: _find_file(folder, name) for name in FILES}
            if all(found.values()):
                return found  # type: ignore[return-value]
            tried.append(folder)
    where = ", ".join(str(t) for t in tried) or "(nowhere: no root given)"
    raise DatasetNotFoundError(f"Fashion-MNIST not found: looked for {', '.join(FILES)} (optionally .gz) in {where}. "
                               + _HOW)


def _stage(files: dict[str, Path], raw: Path) -> None:
    raw.mkdir(parents=True)
    for name, path in files.items():
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
        else:
            os.symlink(path.resolve(), raw / name)


def _check(images: torch.Tensor, labels: torch.Tensor, part: str) -> None:
    if images.dim() != 3 or tuple(images.shape[1:]) != INFO.image_size or images.dtype != torch.uint8:
        raise ValueError(f"{part} images have shape {tuple(images.shape)} ({images.dtype}); expected (N, 28, 28) uint8")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{part} has {images.shape[0]} images but {labels.numel()} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= INFO.num_classes):
        raise ValueError(f"{part} labels outside 0..9")


def load_fashion_mnist(root: str | os.PathLike | None = None) -> tuple[TensorSplit, TensorSplit]:
    """``(train, test)`` as uint8 ``(N, 1, 28, 28)`` tensors, read with torchvision's FashionMNIST."""
    from torchvision.datasets import FashionMNIST

    files = find_fashion_mnist(root)
    folder = files[FILES[0]].parent
    parts = []
    with tempfile.TemporaryDirectory(prefix="lmsearch-fmnist-") as tmp:
        try:
            _stage(files, Path(tmp) / "FashionMNIST" / "raw")
            for train in (True, False):
                ds = FashionMNIST(tmp, train=train, download=False)
                images, labels = ds.data, ds.targets.to(torch.int64)
                _check(images, labels, "train" if train else "test")
                parts.append(TensorSplit(images.unsqueeze(1).contiguous(), labels))
        except (OSError, EOFError, AssertionError, RuntimeError, ValueError, KeyError) as exc:
            raise DatasetNotFoundError(
                f"Fashion-MNIST in {folder} is unreadable or corrupt ({type(exc).__name__}: {exc}). "
                f"Reinstall it (`apt-get install --reinstall dataset-fashion-mnist`) or replace the files. " + _HOW
            ) from exc
    return parts[0], parts[1]
