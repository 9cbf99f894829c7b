"""lmsearch.data: real Fashion-MNIST, CIFAR in its real pickle format, image folders, synthetic, errors."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lmsearch.data import DatasetNotFoundError, StreamSplit, TensorSplit, load_dataset
from lmsearch.data.fashion_mnist import FILES
from lmsearch.data.synthetic import write_image_folder

needs_fashion = pytest.mark.fashion


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMSEARCH_DATA", raising=False)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private system temp dir, to check that nothing is left behind in it."""
    tmp = tmp_path / "systmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


# ------------------------------------------------------------------ Fashion-MNIST
def _idx(array: np.ndarray) -> bytes:
    """Bytes of an IDX (ubyte) file: magic 0x0000 08 ndim, big-endian sizes, data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(folder: Path, n_train: int = 40, n_test: int = 10, gz: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        FILES[0]: rng.integers(0, 256, (n_train, 28, 28)), FILES[1]: np.arange(n_train) % 10,
        FILES[2]: rng.integers(0, 256, (n_test, 28, 28)), FILES[3]: np.arange(n_test) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = _idx(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@needs_fashion
def test_real_fashion_mnist_default_root() -> None:
    data = load_dataset("fashion-mnist", subset=500, seed=3)
    assert isinstance(data.train, TensorSplit)
    assert (len(data.train), len(data.val), len(data.test)) == (500, 6000, 10000)
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape == (500, 1, 28, 28)
    assert data.train.labels.dtype == torch.int64 and set(data.test.labels.tolist()) == set(range(10))
    info = data.info
    assert (info.num_classes, info.in_channels, info.shape, info.hflip) == (10, 1, (1, 28, 28), True)
    # the validation split does not depend on subset and is disjoint from training (compare whole images)
    full = load_dataset("fashion-mnist", seed=3, val_fraction=0.1)
    assert torch.equal(full.val.images, data.val.images) and len(full.train) == 54000
    val_rows = {bytes(x.numpy()) for x in full.val.images[:2000]}
    assert not any(bytes(x.numpy()) in val_rows for x in data.train.images)
    other = load_dataset("fashion-mnist", subset=500, seed=4)
    assert not torch.equal(other.val.labels, data.val.labels)


@pytest.mark.parametrize("layout,gz", [("flat", True), ("torchvision", False), ("sub", True)])
def test_fashion_layouts_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_tmp: Path,
                                 layout: str, gz: bool) -> None:
    root = tmp_path / "data"
    folder = {"flat": root, "torchvision": root / "FashionMNIST" / "raw", "sub": root / "fashion-mnist"}
    arrays = _write_fashion(folder[layout], gz=gz)
    monkeypatch.setenv("LMSEARCH_DATA", str(root))
    data = load_dataset("fashion-mnist", val_fraction=0.25, seed=1)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 10)
    assert torch.equal(data.test.images[:, 0], torch.from_numpy(arrays[FILES[2]].astype(np.uint8)))
    assert torch.equal(data.test.labels, torch.from_numpy(arrays[FILES[3]]))
    assert list(private_tmp.iterdir()) == []  # the staging folder is gone
    assert sorted(p.name for p in folder[layout].iterdir()) == sorted(
        f + (".gz" if gz else "") for f in FILES)  # nothing written next to the data


def test_fashion_missing_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path / "nowhere") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg


def test_fashion_corrupt_file(tmp_path: Path, private_tmp: Path) -> None:
    _write_fashion(tmp_path / "data")
    path = tmp_path / "data" / f"{FILES[0]}.gz"
    path.write_bytes(path.read_bytes()[:-40])  # truncated download
    with pytest.raises(DatasetNotFoundError, match="corrupt"):
        load_dataset("fashion-mnist", root=tmp_path / "data")
    assert list(private_tmp.iterdir()) == []


# -------------------------------------------------------------------------- CIFAR
def _pickle(path: Path, obj: dict) -> str:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_cifar10(root: Path, per_batch: int = 4) -> np.ndarray:
    """The real layout: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}; returns the test images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    md5 = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)  # R plane, G plane, B plane per row
        md5[name] = _pickle(folder / name, {"batch_label": name, "labels": list(range(per_batch)),
                                            "data": rows, "filenames": [f"{name}_{i}.png" for i in range(per_batch)]})
        if name == "test_batch":
            test_rows = rows
    md5["batches.meta"] = _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)],
                                                            "num_cases_per_batch": per_batch, "num_vis": 3072})
    (root / "md5.pkl").write_bytes(pickle.dumps(md5))
    return test_rows


def _write_cifar100(root: Path, n: int = 8) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    md5 = {}
    for name in ("train", "test"):
        md5[name] = _pickle(folder / name, {"filenames": [str(i) for i in range(n)], "batch_label": name,
                                            "fine_labels": [i * 7 % 100 for i in range(n)],
                                            "coarse_labels": [i % 20 for i in range(n)],
                                            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)})
    md5["meta"] = _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                                            "coarse_label_names": [f"k{i}" for i in range(20)]})
    (root / "md5.pkl").write_bytes(pickle.dumps(md5))


def _trust_tiny_files(monkeypatch: pytest.MonkeyPatch, cls: type, root: Path) -> None:
    """Point torchvision's md5 table (class attributes, this test only) at the tiny files' digests."""
    md5 = pickle.loads((root / "md5.pkl").read_bytes())
    monkeypatch.setattr(cls, "train_list", [[n, md5[n]] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5[n]] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5[cls.meta["filename"]]})


def test_cifar10_real_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import CIFAR10

    test_rows = _write_cifar10(tmp_path)
    _trust_tiny_files(monkeypatch, CIFAR10, tmp_path)
    data = load_dataset("cifar10", root=tmp_path, val_fraction=0.2, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, 4)
    assert data.train.images.shape == (16, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.info.classes == tuple(f"c{i}" for i in range(10)) and data.info.num_classes == 10
    # channel planes land in channel order: row = R(1024) G(1024) B(1024), each row-major 32x32
    assert torch.equal(data.test.images.reshape(4, 3072), torch.from_numpy(test_rows))
    assert data.test.labels.tolist() == [0, 1, 2, 3]


def test_cifar100_real_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import CIFAR100

    _write_cifar100(tmp_path)
    _trust_tiny_files(monkeypatch, CIFAR100, tmp_path)
    monkeypatch.setenv("LMSEARCH_DATA", str(tmp_path))
    data = load_dataset("cifar100", val_fraction=0.25)
    assert (len(data.train), len(data.val), len(data.test), data.info.num_classes) == (6, 2, 8, 100)
    assert data.test.labels.tolist() == [i * 7 % 100 for i in range(8)]


def test_cifar_md5_mismatch_is_corrupt(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)  # the real md5 table applies: tiny files fail it
    with pytest.raises(DatasetNotFoundError, match="corrupt"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar100", root=tmp_path)
    assert "cifar-100-python" in str(err.value) and "download=True" in str(err.value)


# -------------------------------------------------------------------- image folder
def _write_pngs(root: Path, per_class: int = 6) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", per_class), ("val", 2)):
        for c, name in enumerate(("cat", "dog", "emu")):
            (root / part / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8) // 4 + 60 * c
                Image.fromarray(pixels.astype(np.uint8)).save(root / part / name / f"{i}.png")


def test_image_folder_streams(tmp_path: Path) -> None:
    _write_pngs(tmp_path)
    data = load_dataset("folder", root=tmp_path, val_fraction=1 / 6, seed=0, image_size=16, num_workers=0)
    assert isinstance(data.train, StreamSplit) and data.info.streaming
    assert (len(data.train), len(data.val), len(data.test)) == (15, 3, 6)
    assert data.info.classes == ("cat", "dog", "emu") and data.info.shape == (3, 16, 16)
    images, labels = next(iter(data.test.loader(4)))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 16, 16) and labels.tolist() == [0, 0, 1, 1]
    assert not set(data.train.indices) & set(data.val.indices)
    sub = load_dataset("folder", root=tmp_path, val_fraction=1 / 6, subset=5, image_size=16, num_workers=0)
    assert len(sub.train) == 5 and sub.val.indices == data.val.indices


def test_image_folder_missing(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="val/"):
        load_dataset("imagenet", root=tmp_path)


def _batch(part: StreamSplit, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(part.loader(n)))


def test_grey_folder_16px_is_one_channel(tmp_path: Path) -> None:
    """A grey set is read grey (one channel), not as three copies of it; the default size is the images' own."""
    write_image_folder(tmp_path, classes=3, per_class=10, test_per_class=2, size=(16, 16), mode="L")
    data = load_dataset("folder", root=tmp_path, val_fraction=0.2, seed=0, num_workers=0)
    assert data.info.shape == (1, 16, 16) and data.info.in_channels == 1 and len(data.info.mean) == 1
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 6)
    images, labels = _batch(data.test)
    assert images.dtype == torch.uint8 and images.shape == (6, 1, 16, 16)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    # the evaluation transform keeps a same-size grey image exactly as stored
    from PIL import Image

    first = np.array(Image.open(tmp_path / "val" / "class_0" / "0.png"))
    assert torch.equal(images[0, 0], torch.from_numpy(first))
    train_images, _ = _batch(data.train)
    assert train_images.shape == (24, 1, 16, 16)


def test_rgb_folder_96px_resized_to_image_size(tmp_path: Path) -> None:
    write_image_folder(tmp_path, classes=3, per_class=6, test_per_class=2, size=(96, 100), mode="RGB")
    data = load_dataset("folder", root=tmp_path, val_fraction=1 / 6, image_size=64, num_workers=0)
    assert data.info.shape == (3, 64, 64) and data.info.classes == ("class_0", "class_1", "class_2")
    for part in (data.train, data.val, data.test):
        images, _ = _batch(part)
        assert images.shape[1:] == (3, 64, 64) and images.dtype == torch.uint8
    native = load_dataset("folder", root=tmp_path, num_workers=0)
    assert native.info.shape == (3, 96, 96)  # default: the median shorter side


def test_mixed_grey_and_colour_is_rgb(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "a", classes=2, per_class=3, size=(12, 12), mode="L")
    write_image_folder(tmp_path / "b", classes=1, per_class=3, size=(12, 12), mode="RGB")
    (tmp_path / "a" / "train" / "class_0").rename(tmp_path / "a" / "train" / "grey")
    (tmp_path / "b" / "train" / "class_0").rename(tmp_path / "a" / "train" / "red")
    data = load_dataset("folder", root=tmp_path / "a", num_workers=0)
    assert data.info.in_channels == 3 and _batch(data.test)[0].shape[1] == 3


@pytest.mark.parametrize("layout", ["train_only", "flat"])
def test_folder_without_val_holds_out_a_fixed_test_split(tmp_path: Path, layout: str) -> None:
    write_image_folder(tmp_path / "set", classes=2, per_class=20, size=(8, 8), mode="L")
    root = tmp_path / "set" if layout == "train_only" else tmp_path / "set" / "train"
    a = load_dataset("folder", root=root, val_fraction=0.25, seed=1, num_workers=0)
    assert (len(a.train), len(a.val), len(a.test)) == (27, 9, 4)
    assert a.info.classes == ("class_0", "class_1")
    parts = [set(a.train.indices), set(a.val.indices), set(a.test.indices)]
    assert set().union(*parts) == set(range(40)) and sum(map(len, parts)) == 40  # disjoint, complete
    b = load_dataset("folder", root=root, val_fraction=0.25, seed=2, num_workers=0)
    assert b.test.indices == a.test.indices  # the test split does not move with the seed
    assert b.val.indices != a.val.indices  # the validation split does
    assert a.val.indices == load_dataset("folder", root=root, val_fraction=0.25, seed=1, num_workers=0).val.indices
    c = load_dataset("folder", root=root, test_fraction=0.5, num_workers=0)
    assert len(c.test) == 20
    write_image_folder(tmp_path / "split", classes=2, per_class=2, test_per_class=1, size=(8, 8))
    with pytest.raises(ValueError, match=f"test_fraction is for a folder without a val/ .*{tmp_path / 'split' / 'val'}"):
        load_dataset("folder", root=tmp_path / "split", test_fraction=0.2)


def test_folder_ignores_hidden_files_and_folders(tmp_path: Path) -> None:
    write_image_folder(tmp_path, classes=2, per_class=3, test_per_class=1, size=(8, 8))
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "val" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "train" / "class_0" / "._0.png").write_bytes(b"AppleDouble")  # macOS resource fork
    (tmp_path / "train" / "class_0" / "notes.txt").write_text("not an image")
    data = load_dataset("folder", root=tmp_path, val_fraction=0.0, num_workers=0)
    assert data.info.classes == ("class_0", "class_1") and len(data.train) == 6
    assert _batch(data.train)[0].shape == (6, 3, 8, 8)


def test_folder_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=f"{tmp_path / 'nope'} does not exist"):
        load_dataset("folder", root=tmp_path / "nope")
    (tmp_path / "file").write_text("")
    with pytest.raises(DatasetNotFoundError, match="is not a directory"):
        load_dataset("folder", root=tmp_path / "file")
    with pytest.raises(DatasetNotFoundError, match="no folder given"):
        load_dataset("folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=f"{tmp_path / 'empty'} holds no class folders"):
        load_dataset("folder", root=tmp_path / "empty")
    (tmp_path / "noimg" / "cats").mkdir(parents=True)
    (tmp_path / "noimg" / "cats" / "a.txt").write_text("")
    with pytest.raises(DatasetNotFoundError, match=r"noimg: .*cats.*\.png"):
        load_dataset("folder", root=tmp_path / "noimg")
    write_image_folder(tmp_path / "odd", classes=2, per_class=2, test_per_class=1, size=(8, 8))
    (tmp_path / "odd" / "val" / "class_1").rename(tmp_path / "odd" / "val" / "dog")
    with pytest.raises(DatasetNotFoundError, match="only in train/: class_1; only in val/: dog"):
        load_dataset("folder", root=tmp_path / "odd")


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    write_image_folder(tmp_path, classes=2, per_class=2, size=(8, 8))
    bad = tmp_path / "train" / "class_1" / "1.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetNotFoundError, match=f"{bad} is not a readable image"):
        load_dataset("folder", root=tmp_path)


def test_subset_larger_than_the_data_names_both(tmp_path: Path) -> None:
    write_image_folder(tmp_path, classes=2, per_class=10, test_per_class=1, size=(8, 8))
    with pytest.raises(ValueError, match=f"subset=19 is larger than the 18 training images of folder in {tmp_path}"):
        load_dataset("folder", root=tmp_path, val_fraction=0.1, subset=19)
    with pytest.raises(ValueError, match=r"subset=46 is larger than the 45 training images of synthetic"):
        load_dataset("synthetic", num_train=50, subset=46)
    data = load_dataset("folder", root=tmp_path, val_fraction=0.1, subset=np.int64(18), num_workers=0)
    assert len(data.train) == 18  # a numpy integer (from a results table) is an integer
    with pytest.raises(ValueError, match="leaves none to train on"):
        load_dataset("synthetic", num_train=1, val_fraction=0.6)


def test_stream_workers_follow_the_training_threads(tmp_path: Path) -> None:
    """A search trial given one CPU decodes in one loader worker, not in one per core of the machine."""
    write_image_folder(tmp_path, classes=2, per_class=4, size=(8, 8))
    data = load_dataset("folder", root=tmp_path)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert data.train.workers() == 1 and data.train.loader(2).num_workers == 1
        torch.set_num_threads(2)
        assert data.train.workers() == 2
    finally:
        torch.set_num_threads(threads)
    assert load_dataset("folder", root=tmp_path, num_workers=0).train.loader(2).num_workers == 0
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("folder", root=tmp_path, image_size=0)


# ---------------------------------------------------------------- synthetic, args
def test_synthetic_is_seeded() -> None:
    a = load_dataset("synthetic", num_train=100, num_test=20, shape=(1, 8, 8), num_classes=3, seed=5)
    b = load_dataset("synthetic", num_train=100, num_test=20, shape=(1, 8, 8), num_classes=3, seed=5)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.train.images.shape == (90, 1, 8, 8) and a.info.num_classes == 3 and a.info.shape == (1, 8, 8)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist-of-dreams")
    with pytest.raises(TypeError, match="image_size"):
        load_dataset("synthetic", image_size=3)
    with pytest.raises(ValueError, match="subset"):
        load_dataset("synthetic", num_train=50, subset=100)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("synthetic", val_fraction=1.0)
    with pytest.raises(ValueError, match="download"):
        load_dataset("fashion-mnist", download=True)


def test_no_validation_part() -> None:
    data = load_dataset("synthetic", num_train=50, val_fraction=0.0)
    assert len(data.train) == 50 and len(data.val) == 0
    assert os.environ.get("LMSEARCH_DATA") is None
