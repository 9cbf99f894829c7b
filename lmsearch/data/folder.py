"""ImageNet and any class-per-folder image set, streamed from disk through torchvision's ImageFolder.

Layouts (``<root>`` is ``data_dir`` / ``root=``):

* ``<root>/train/<class>/<image>`` and ``<root>/val/<class>/<image>`` (``test/``
  instead of ``val/`` also works): the ``val/`` folder is the test split. This
  is the only layout ``imagenet`` accepts.
* ``folder`` also reads ``<root>/train/<class>/<image>`` without a ``val/``
  folder, or just ``<root>/<class>/<image>``: then ``test_fraction`` of the
  images (drawn with a fixed seed, so every experiment on the folder shares
  one test split) is held out as the test split.

In every layout the validation split is ``val_fraction`` of the training
images held out with the run's seed. Hidden files and folders (``.DS_Store``,
``._x.jpg``, ``.ipynb_checkpoints``) are ignored.

``folder`` images may be grey or colour and of any size: a set whose images
are all grey (PIL modes 1, L, LA, I, I;16, F) is read with one channel, any
other with three (RGB); every image is resized to ``image_size`` (default:
the median shorter side of the images). Training images get
RandomResizedCrop + horizontal flip in the loader's workers; evaluation
images are resized and centre-cropped. Both come out as uint8 tensors; the
trainer normalises them on its device.
"""

from __future__ import annotations

import copy
import os
import statistics
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets import ImageFolder

from lmsearch.data.base import DatasetInfo, DatasetNotFoundError, StreamSplit
from lmsearch.data.roots import ENV_VAR, search_roots
from lmsearch.data.splits import split_indices

__all__ = ["load_image_folder", "class_folders", "probe_images", "ClassFolders", "ImageLoader", "IMAGENET_MEAN",
           "IMAGENET_STD", "IMAGE_EXTENSIONS", "GREY_MODES"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = (0.449,), (0.226,)  # ImageNet's, averaged over the channels
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
_TEST_DIRS = ("val", "test")
_PROBE = 512  # images whose headers decide grey/RGB and the default size
_FOLDER_CROP_SCALE = (0.35, 1.0)  # RandomResizedCrop scale for ``folder``: small images lose little


class ImageLoader:
    """Opens one image file as PIL ``mode`` (``"RGB"`` or ``"L"``); an unreadable file is an error naming it."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, path: str) -> Any:
        from PIL import Image, UnidentifiedImageError

        try:
            with open(path, "rb") as f:
                return Image.open(f).convert(self.mode)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DatasetNotFoundError(f"{path} is not a readable image ({type(exc).__name__}: {exc}); "
                                       f"remove or replace it") from exc


class ClassFolders(ImageFolder):
    """torchvision's ImageFolder without hidden class folders (``.ipynb_checkpoints``)."""

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {c: i for i, c in enumerate(classes)}


def class_folders(directory: Path, *, transform: Any, mode: str, allow_empty: bool = False) -> ClassFolders:
    """:class:`ClassFolders` over ``directory`` (hidden files skipped); problems raise DatasetNotFoundError."""

    def valid(path: str) -> bool:
        name = os.path.basename(path)
        return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)

    try:
        return ClassFolders(str(directory), transform=transform, loader=ImageLoader(mode), is_valid_file=valid,
                            allow_empty=allow_empty)
    except FileNotFoundError as exc:
        if "class folder" in str(exc):
            raise DatasetNotFoundError(
                f"{directory} holds no class folders: expected one folder per class with the images in it, "
                f"{directory}/<class>/<image> ({', '.join(IMAGE_EXTENSIONS)})") from None
        raise DatasetNotFoundError(
            f"{directory}: {str(exc).strip()} Every class folder needs at least one image ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} (hidden files are skipped).") from None
    except OSError as exc:
        raise DatasetNotFoundError(f"{directory} cannot be read: {exc.strerror or exc}") from exc


def _imagenet_transforms(size: int) -> tuple[Any, Any]:
    from torchvision import transforms as T

    train = T.Compose([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip(), T.PILToTensor()])
    evaluate = T.Compose([T.Resize(round(size / 0.875), antialias=True), T.CenterCrop(size), T.PILToTensor()])
    return train, evaluate


def _folder_transforms(size: int) -> tuple[Any, Any]:
    """Milder than ImageNet's: images of unknown content and size, often small, keep most of themselves."""
    from torchvision import transforms as T

    train = T.Compose([T.RandomResizedCrop(size, scale=_FOLDER_CROP_SCALE, antialias=True), T.RandomHorizontalFlip(),
                       T.PILToTensor()])
    evaluate = T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size), T.PILToTensor()])
    return train, evaluate


def _no_root(name: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"{name}: no folder given. Pass --data-dir / root= / the space file's dataset.data_dir "
                                f"(or set ${ENV_VAR}) to a folder with train/<class>/<image> and val/<class>/<image>"
                                + (" (or just <class>/<image>)" if name == "folder" else "") + ".")


def _check_dir(name: str, base: Path) -> None:
    if not base.exists():
        raise DatasetNotFoundError(f"{name}: the data folder {base} does not exist")
    if not base.is_dir():
        raise DatasetNotFoundError(f"{name}: the data folder {base} is not a directory")


def _find_split(name: str, root: str | os.PathLike | None) -> tuple[Path, Path]:
    """``(train/, val/ or test/)`` of an ImageNet-style layout; ImageNet also looks in ``<root>/imagenet``."""
    roots = search_roots(root)
    if not roots:
        raise _no_root(name)
    tried = []
    for base in roots:
        _check_dir(name, base)
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


def _find_folder(root: str | os.PathLike | None) -> tuple[Path, Path | None]:
    """``(training folder, test folder or None)`` of a ``folder`` set."""
    roots = search_roots(root)
    if not roots:
        raise _no_root("folder")
    base = roots[0]
    _check_dir("folder", base)
    if (base / "train").is_dir():
        test = next((base / d for d in _TEST_DIRS if (base / d).is_dir()), None)
        return base / "train", test
    return base, None


def probe_images(dataset: Any, seed: int = 0) -> tuple[bool, int]:
    """``(all grey, median shorter side)`` read from the headers of up to 512 of ``dataset``'s images."""
    from PIL import Image

    n = len(dataset.samples)
    picks = range(n) if n <= _PROBE else torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:_PROBE]
    grey, sides = True, []
    for i in picks:
        path = dataset.samples[int(i)][0]
        try:
            with Image.open(path) as img:  # reads the header only
                grey = grey and img.mode in GREY_MODES
                sides.append(min(img.size))
        except OSError as exc:
            raise DatasetNotFoundError(f"{path} is not a readable image ({type(exc).__name__}: {exc}); "
                                       f"remove or replace it") from exc
    return grey, int(statistics.median(sides))


def _hold_out_test(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted ``(rest, test)`` indices: ``fraction`` of ``n`` (at least one when n >= 2), fixed seed 0."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {fraction}")
    n_test = int(round(n * fraction))
    if n_test == 0 and n >= 2:
        n_test = 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def load_image_folder(name: str, root: str | os.PathLike | None = None, *, val_fraction: float, seed: int,
                      subset: int | None, image_size: int | None = None, num_workers: int | None = None,
                      test_fraction: float | None = None
                      ) -> tuple[DatasetInfo, StreamSplit, StreamSplit, StreamSplit]:
    """``(info, train, val, test)`` streaming parts of ``imagenet`` or a ``folder`` image set (see the module doc).

    ``image_size`` defaults to 224 for ImageNet and to the images' median
    shorter side for ``folder``; ``num_workers`` (DataLoader processes)
    defaults to the torch threads of the process that trains, at most 4;
    ``test_fraction`` (default 0.1) is only for a ``folder`` without ``val/``.
    """
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise ValueError(f"image_size must be a positive integer (pixels); got {image_size!r}")
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                    or num_workers < 0):
        raise ValueError(f"num_workers must be an integer >= 0; got {num_workers!r}")
    if name == "imagenet":
        train_dir, test_dir = _find_split(name, root)
        mode, size = "RGB", image_size or 224
        train_tf, eval_tf = _imagenet_transforms(size)
        train_ds = class_folders(train_dir, transform=train_tf, mode=mode)
        where = train_dir.parent
    else:
        train_dir, test_dir = _find_folder(root)
        probe = class_folders(train_dir, transform=None, mode="RGB")
        grey, median_side = probe_images(probe)
        mode, size = ("L" if grey else "RGB"), image_size or median_side
        train_tf, eval_tf = _folder_transforms(size)
        train_ds = copy.copy(probe)
        train_ds.transform, train_ds.loader = train_tf, ImageLoader(mode)
        where = train_dir if test_dir is None else train_dir.parent

    if test_dir is not None and test_fraction is not None:
        raise ValueError(f"test_fraction is for a folder without a val/ or test/ folder; {test_dir} is one "
                         f"(its images are the test split): leave test_fraction out or remove that folder")
    if test_dir is not None:
        test_ds = class_folders(test_dir, transform=eval_tf, mode=mode, allow_empty=True)
        if train_ds.classes != test_ds.classes:
            only_train = sorted(set(train_ds.classes) - set(test_ds.classes))
            only_test = sorted(set(test_ds.classes) - set(train_ds.classes))
            raise DatasetNotFoundError(
                f"{name}: the class folders of {train_dir} ({len(train_ds.classes)}) and {test_dir} "
                f"({len(test_ds.classes)}) differ: only in {train_dir.name}/: {', '.join(only_train) or '-'}; "
                f"only in {test_dir.name}/: {', '.join(only_test) or '-'}. Both need the same class folders.")
        pool = torch.arange(len(train_ds))
        test_idx: tuple[int, ...] | None = None
    else:
        test_ds = copy.copy(train_ds)  # same file list, evaluation transform
        test_ds.transform = eval_tf
        rest, held = _hold_out_test(len(train_ds), 0.1 if test_fraction is None else test_fraction)
        pool, test_idx = rest, tuple(held.tolist())
    val_ds = copy.copy(train_ds)  # same file list, evaluation transform
    val_ds.transform = eval_tf
    source = f"{name} in {where}" + (" after its test split" if test_idx is not None else "")
    train_pos, val_pos = split_indices(len(pool), val_fraction=val_fraction, seed=seed, subset=subset,
                                       source=source)
    train_idx, val_idx = pool[train_pos], pool[val_pos]
    info = DatasetInfo(name=name, num_classes=len(train_ds.classes), in_channels=1 if mode == "L" else 3,
                       image_size=(size, size), mean=GREY_MEAN if mode == "L" else IMAGENET_MEAN,
                       std=GREY_STD if mode == "L" else IMAGENET_STD, hflip=True, crop_padding=0,
                       classes=tuple(train_ds.classes), streaming=True)
    return (info,
            StreamSplit(train_ds, tuple(train_idx.tolist()), num_workers),
            StreamSplit(val_ds, tuple(val_idx.tolist()), num_workers),
            StreamSplit(test_ds, test_idx, num_workers))
