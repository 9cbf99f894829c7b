"""Datasets for training and search: Fashion-MNIST (the default), CIFAR-10/100, ImageNet, your own image
folders (``folder``: grey or colour, any size), synthetic.

See :func:`load_dataset`. Small sets are uint8 tensors held whole
(:class:`TensorSplit`), large ones stream from disk (:class:`StreamSplit`).
"""

from __future__ import annotations

from lmsearch.data.base import DatasetInfo, DatasetNotFoundError, DatasetSplits, Split, StreamSplit, TensorSplit
from lmsearch.data.loading import DATASETS, load_dataset

__all__ = ["DATASETS", "DatasetInfo", "DatasetNotFoundError", "DatasetSplits", "Split", "StreamSplit", "TensorSplit",
           "load_dataset"]
