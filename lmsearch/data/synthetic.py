"""Synthetic images for tests and benchmarks only: seeded, instant, and weakly learnable.

Each class has a fixed random template; an image is its class template
blended with noise, so a network can beat chance on it (useful to check that
a search or a trainer does something) while costing nothing to load.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lmsearch.data.base import DatasetInfo, TensorSplit

__all__ = ["make_synthetic", "write_image_folder"]


def make_synthetic(*, num_train: int = 5000, num_test: int = 1000, shape: tuple[int, int, int] = (3, 32, 32),
                   num_classes: int = 10, seed: int = 0) -> tuple[DatasetInfo, TensorSplit, TensorSplit]:
    """``(info, train, test)`` of random uint8 images of ``shape`` in ``num_classes`` classes."""
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (C, H, W) of positive sizes; got {shape!r}")
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand((num_classes, *shape), generator=g)

    def part(n: int) -> TensorSplit:
        labels = torch.randint(num_classes, (n,), generator=g)
        noise = torch.rand((n, *shape), generator=g)
        images = (255 * (0.5 * templates[labels] + 0.5 * noise)).round().to(torch.uint8)
        return TensorSplit(images, labels)

    c = shape[0]
    info = DatasetInfo(name="synthetic", num_classes=num_classes, in_channels=c, image_size=(shape[1], shape[2]),
                       mean=(0.5,) * c, std=(0.2,) * c, hflip=True, crop_padding=4)
    return info, part(num_train), part(num_test)


def write_image_folder(root: str | os.PathLike, *, classes: int = 3, per_class: int = 20, test_per_class: int = 0,
                       size: tuple[int, int] = (32, 32), mode: str = "RGB", seed: int = 0,
                       suffix: str = ".png") -> Path:
    """Write a small, weakly learnable class-per-folder image set (for tests and for trying ``folder`` out).

    Layout: ``root/train/class_<k>/<i><suffix>``, plus ``root/val/class_<k>/...``
    when ``test_per_class`` > 0. Images are ``size`` = ``(H, W)`` pixels in PIL
    ``mode`` ``"RGB"`` or ``"L"`` (grey): a fixed random template per class
    blended with noise, as :func:`make_synthetic`. Returns ``root``.
    """
    from PIL import Image

    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L'; got {mode!r}")
    g = torch.Generator().manual_seed(seed)
    channels = 3 if mode == "RGB" else 1
    templates = torch.rand((classes, size[0], size[1], channels), generator=g)
    root = Path(root)
    for part, n in (("train", per_class), ("val", test_per_class)):
        for k in range(classes if n else 0):
            folder = root / part / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            noise = torch.rand((n, size[0], size[1], channels), generator=g)
            pixels = (255 * (0.6 * templates[k] + 0.4 * noise)).round().to(torch.uint8).numpy()
            for i in range(n):
                image = pixels[i] if channels == 3 else pixels[i, :, :, 0]
                Image.fromarray(image).save(folder / f"{i}{suffix}")  # (H, W, 3) -> RGB, (H, W) -> L
    return root
