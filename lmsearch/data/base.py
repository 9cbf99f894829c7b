"""What a loaded dataset is: its metadata and its train / val / test parts.

Two kinds of part exist. A :class:`TensorSplit` holds a small dataset whole, as
uint8 images ``(N, C, H, W)`` and int64 labels, so a trainer can put it on the
training device and augment there in batch (airbench style). A
:class:`StreamSplit` wraps a torchvision dataset read from disk image by image
(ImageFolder, ImageNet) and hands out a :class:`~torch.utils.data.DataLoader`
of uint8 batches; augmentation for it happens in the loader's transform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = ["DatasetInfo", "DatasetSplits", "TensorSplit", "StreamSplit", "Split", "DatasetNotFoundError"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is missing or unreadable; the message says what, where, and how to get it."""


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a dataset.

    Fields:
        name: the dataset's name as given to :func:`lmsearch.data.load_dataset`.
        num_classes: classifier outputs.
        in_channels: image channels (1 for Fashion-MNIST, 3 for colour sets).
        image_size: ``(H, W)`` of the images a model sees.
        mean, std: per-channel normalisation on the 0..1 scale.
        hflip: whether a random horizontal flip is a label-preserving augmentation.
        crop_padding: zero padding of the random-crop augmentation (0 = no crop).
        classes: class names where the dataset has them.
        streaming: True when the parts are :class:`StreamSplit` (read from disk).
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool = True
    crop_padding: int = 4
    classes: tuple[str, ...] | None = None
    streaming: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return (self.in_channels, *self.image_size)


@dataclass(frozen=True)
class TensorSplit:
    """One part of a small dataset, held whole: uint8 ``images (N, C, H, W)`` and int64 ``labels (N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W); got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be int64 (N,) with N={self.images.shape[0]}; "
                             f"got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, indices: torch.Tensor) -> TensorSplit:
        """The images at ``indices`` (a copy)."""
        return TensorSplit(self.images[indices].contiguous(), self.labels[indices].contiguous())


@dataclass(frozen=True)
class StreamSplit:
    """One part of a dataset read from disk: ``dataset`` yields ``(uint8 (C, H, W) tensor, int label)``.

    ``indices`` restricts it to a subset (the seeded validation split or
    ``subset=N``); ``None`` means every item. ``num_workers`` DataLoader
    processes decode the images; ``None`` decides when the loader is made, in
    the process that trains: its torch threads, at most 4 (so a search trial
    given one CPU decodes in one worker, not in one per core of the machine).
    """

    dataset: Dataset
    indices: tuple[int, ...] | None = None
    num_workers: int | None = None

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)  # type: ignore[arg-type]

    def workers(self) -> int:
        """The number of DataLoader worker processes :meth:`loader` uses here."""
        return min(4, torch.get_num_threads()) if self.num_workers is None else self.num_workers

    def loader(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
               pin_memory: bool = False) -> DataLoader:
        """A DataLoader of ``(uint8 images (B, C, H, W), int64 labels)``; the order is seeded by ``seed``."""
        dataset: Dataset = self.dataset if self.indices is None else Subset(self.dataset, list(self.indices))
        generator = torch.Generator().manual_seed(seed)
        workers = self.workers()
        kwargs: dict[str, Any] = {"persistent_workers": False, "prefetch_factor": 4} if workers > 0 else {}
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
                          num_workers=workers, pin_memory=pin_memory, **kwargs)


Split = TensorSplit | StreamSplit


@dataclass(frozen=True)
class DatasetSplits:
    """A loaded dataset: ``train`` (to fit), ``val`` (held out of the training set, to score a search),
    ``test`` (final reports only) and its :class:`DatasetInfo`."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split

    @property
    def name(self) -> str:
        return self.info.name

    def __repr__(self) -> str:
        return (f"DatasetSplits({self.info.name!r}, train={len(self.train)}, val={len(self.val)}, "
                f"test={len(self.test)}, shape={self.info.shape}, classes={self.info.num_classes})")
