"""Shared test set-up: tiny, deterministic, loopback-only."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny nets: a second thread costs more than it gives

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
HAVE_FASHION = os.path.isfile(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``fashion`` need the real Fashion-MNIST: skipped without it, except in CI."""
    if HAVE_FASHION:
        return
    if os.environ.get("CI"):
        raise pytest.UsageError(f"CI needs Fashion-MNIST in {FASHION_DIR}: apt-get install dataset-fashion-mnist")
    skip = pytest.mark.skip(reason=f"Fashion-MNIST is not installed in {FASHION_DIR} "
                                   "(apt-get install dataset-fashion-mnist)")
    for item in items:
        if "fashion" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
