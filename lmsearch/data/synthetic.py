"""Synthetic images for tests and benchmarks only: seeded, instant, and weakly learnable.

Each class has a fixed random template; an image is its class template
blended with noise, so a network can beat chance on it (useful to check that
a search or a trainer does something) while costing nothing to load.
"""

from __future__ import annotations

import torch

from lmsearch.data.base import DatasetInfo, TensorSplit

__all__ = ["make_synthetic"]


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
