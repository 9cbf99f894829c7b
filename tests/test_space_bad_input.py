"""Bad space files are refused by load_space, on one short line naming file, key path, value and what is allowed.

Each file in ``tests/data/bad_spaces/`` is one case; its first two lines say
what the error must be::

    # key: training.momentum
    # expect: must be >= 0 and < 1; got 1.0
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from lmsearch.space import SpaceError, load_space

BAD = Path(__file__).resolve().parent / "data" / "bad_spaces"
CASES = sorted(p.name for p in BAD.iterdir())


def expectation(path: Path) -> tuple[str, str]:
    """``(key, fragment)`` from a case file's ``# key:`` and ``# expect:`` lines."""
    key_line, expect_line = path.read_bytes().split(b"\n")[:2]
    key, expect = key_line.decode(), expect_line.decode()
    assert key.startswith("# key: ") and expect.startswith("# expect: "), f"{path.name}: header missing"
    return key.removeprefix("# key: "), expect.removeprefix("# expect: ")


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("case", CASES)
def test_bad_space_is_refused_with_a_short_clear_line(case: str) -> None:
    path = BAD / case
    key, fragment = expectation(path)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: ") and info.value.key == key
    assert fragment in message
    assert "\n" not in message and len(message) <= 500  # the alias bomb once made 5.8 MB


def test_every_case_is_distinct() -> None:
    texts = [(BAD / c).read_bytes().split(b"\n", 2)[2] for c in CASES]
    assert len(set(texts)) == len(texts) and len(CASES) >= 40


# ----------------------------------------------------------------------- the file itself
def test_directory_is_not_a_space_file(tmp_path: Path) -> None:
    (tmp_path / "quick.yaml").write_text("name: q\n")
    with pytest.raises(SpaceError, match=r"\(file\): is a directory, not a search-space file; give a YAML file, "
                                         r"e\.g\. .*quick\.yaml"):
        load_space(tmp_path)


def test_pipe_is_refused_without_reading_it(tmp_path: Path) -> None:
    fifo = tmp_path / "space.yaml"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(SpaceError, match="is not a regular file"):
        load_space(fifo)


def test_utf8_with_a_byte_order_mark_is_read_and_utf16_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("utf-8-sig"))
    assert load_space(path).name == "caf\u00e9"
    path.write_bytes("name: caf\u00e9\n".encode("utf-16"))
    with pytest.raises(SpaceError, match=r"\(file\): is UTF-16 text; save it as UTF-8"):
        load_space(path)


def test_missing_file_still_says_it_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")


def test_yaml_conveniences_still_work(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, """
        name: q
        training: {lr: 1e-3}                # a YAML 1.2 float without a dot
        architecture:
          scheme: [euler, lm]
          depth: {euler: &d [14, 20], lm: *d}  # one anchor used twice is neither a duplicate nor a bomb
    """))
    assert space.train["lr"].choices == (0.001,)
    assert space.depth_by_scheme is not None and space.depth_by_scheme["lm"].choices == (14, 20)


def test_merge_key_overridden_is_not_a_duplicate(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, """
        name: q
        training:
          <<: {lr: 0.5, batch_size: 32}
          lr: 0.2
    """))
    assert space.train["lr"].choices == (0.2,) and space.train["batch_size"].choices == (32,)


# ----------------------------------------------------------------------- name and data
def test_name_given_on_the_command_line_is_checked_too(tmp_path: Path) -> None:
    path = write(tmp_path, "name: fine\n")
    with pytest.raises(SpaceError, match=r"name: must be a folder name .*; got '\.\.' \(given with --name\)"):
        load_space(path, name="..")
    assert load_space(path, name="other").name == "other"


def test_name_from_the_file_stem_is_checked(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="taken from the file name"):
        load_space(write(tmp_path, "budget: {epochs: 1}\n", name="..yaml"))


def test_data_dir_check_can_be_skipped_for_a_space_from_another_machine(tmp_path: Path) -> None:
    path = write(tmp_path, "dataset: {name: cifar10, data_dir: /nonexistent/lmsearch-data}\n")
    space = load_space(path, check_data_dir=False)
    assert space.data_dir == "/nonexistent/lmsearch-data" and space.data_root == "/nonexistent/lmsearch-data"


def make_image_folder(root: Path, train: tuple[str, ...] = ("cat", "dog"), test: tuple[str, ...] | None = ("cat", "dog"),
                      images: int = 1, flat: bool = False) -> Path:
    """``root/train/<class>`` and ``root/val/<class>`` (or ``root/<class>`` when ``flat``) with tiny PNGs."""
    from PIL import Image

    parts = {"": train} if flat else {"train": train, **({"val": test} if test is not None else {})}
    for part, classes in parts.items():
        (root / part).mkdir(parents=True, exist_ok=True)
        for name in classes:
            (root / part / name).mkdir()
            for i in range(images):
                Image.new("RGB", (12, 10), (40 * i, 80, 120)).save(root / part / name / f"{i}.png")
    return root


def test_folder_dataset_is_accepted_and_passed_to_load_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    make_image_folder(tmp_path / "pets", images=5)
    monkeypatch.chdir(tmp_path)  # a relative data_dir is relative to the working directory
    space = load_space(write(tmp_path, """
        name: pets
        dataset: {name: folder, data_dir: pets, image_size: 16, val_fraction: 0.2}
        architecture: {scheme: euler, depth: 8, width: 4}
    """))
    assert (space.dataset, space.data_dir, space.image_size, space.test_fraction) == ("folder", "pets", 16, None)
    assert space.data_root == str(tmp_path / "pets") and space.val_fraction == 0.2
    kwargs = space.dataset_kwargs()
    assert kwargs == {"name": "folder", "root": str(tmp_path / "pets"), "val_fraction": 0.2, "seed": 0,
                      "subset": None, "image_size": 16}
    from lmsearch.data import load_dataset

    data = load_dataset(**kwargs)
    assert data.info.num_classes == 2 and data.info.shape[1:] == (16, 16)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 2, 10)


def test_flat_folder_holds_out_test_fraction(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "flat", images=5, flat=True)
    space = load_space(write(tmp_path, f"dataset: {{name: folder, data_dir: {tmp_path / 'flat'}, "
                                       f"test_fraction: 0.2}}\n"))
    assert space.image_size is None and space.test_fraction == 0.2  # load_dataset chooses the size
    kwargs = space.dataset_kwargs()
    assert kwargs["test_fraction"] == 0.2 and "image_size" not in kwargs
    from lmsearch.data import load_dataset

    data = load_dataset(**kwargs)
    assert len(data.test) == 2 and len(data.train) + len(data.val) == 8
    assert "test_fraction" not in load_space(write(tmp_path, "dataset: cifar10\n", "c.yaml"),
                                             check_data_dir=False).dataset_kwargs()


def test_folder_classes_set_the_classifier_checked_against_max_params(tmp_path: Path) -> None:
    # euler-8 of width 4 has 5,166 parameters for 10 classes and 8,396 for 200 (16 features per class)
    make_image_folder(tmp_path / "many", train=tuple(f"c{i}" for i in range(200)), test=None)
    text = (f"dataset: {{name: folder, data_dir: {tmp_path / 'many'}}}\n"
            "architecture: {scheme: euler, depth: 8, width: 4}\nmax_params: 8000\n")
    with pytest.raises(SpaceError, match="max_params: no architecture"):
        load_space(write(tmp_path, text))


@pytest.mark.parametrize("layout, key, fragment", [
    ("empty", "dataset.data_dir", "holds no class folders"),
    ("train_without_classes", "dataset.data_dir", "holds no class folders"),
    ("class_without_images", "dataset.data_dir", "/train/dog holds no image (.jpg"),
    ("different_classes", "dataset.data_dir", "the class folders of"),
    ("imagenet_without_val", "dataset.data_dir", "has no train/ and val/ (or test/) folders"),
    ("test_fraction_with_val", "dataset.test_fraction", "/val is one; remove test_fraction or that folder"),
])
def test_folder_layout_is_checked(tmp_path: Path, layout: str, key: str, fragment: str) -> None:
    root, name, extra = tmp_path / "imgs", "folder", ""
    if layout == "empty":
        root.mkdir()
    elif layout == "train_without_classes":
        make_image_folder(root, train=(), test=())
    elif layout == "class_without_images":
        make_image_folder(root)
        for image in (root / "train" / "dog").iterdir():
            image.unlink()
        (root / "train" / "dog" / ".hidden.png").write_bytes(b"")  # hidden files are not images
    elif layout == "different_classes":
        make_image_folder(root, train=("cat", "dog"), test=("cat", "cow"))
    elif layout == "imagenet_without_val":
        make_image_folder(root, test=None)
        name = "imagenet"
    else:
        make_image_folder(root)
        extra = ", test_fraction: 0.1"
    with pytest.raises(SpaceError) as info:
        load_space(write(tmp_path, f"dataset: {{name: {name}, data_dir: {root}{extra}}}\n"))
    assert info.value.key == key and fragment in str(info.value)


# ----------------------------------------------------------------------- every value a range can give
def test_every_sampled_value_trains_and_builds(tmp_path: Path) -> None:
    """Ranges whose ends are the extremes allowed: whatever is sampled must pass TrainConfig and ArchSpec."""
    from lmsearch.train import TrainConfig

    space = load_space(write(tmp_path, """
        budget: {epochs: 5}
        architecture:
          scheme: [euler, lm]
          depth: [8, 14]
          width: [1, 4]
          noise: [none, stochastic_depth]
          noise_prob: {low: 0.000001, high: 0.999999}
        training:
          lr: {low: 1.0e-8, high: 10.0, log: true}
          momentum: {low: 0.0, high: 0.999999}
          weight_decay: {low: 0, high: 1}
          label_smoothing: {low: 0.0, high: 0.99}
          batch_size: {low: 1, high: 1048576, log: true}
          warmup_epochs: {low: 0, high: 5}
          seed: {low: 0, high: 9223372036854775807}
        search: {seed: 4294967295}
        resources: {cpu: 0.0001, gpu: 0}
    """))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        config = space.suggest(trial)
        space.arch_spec(config["arch"], in_channels=1, num_classes=10)
        TrainConfig(epochs=space.epochs, device="cpu", **config["train"])
        study.tell(trial, 0.0)


# ----------------------------------------------------------------------- the command line
@pytest.mark.parametrize("case", ["momentum_one.yaml", "name_dotdot.yaml", "duplicate_key.yaml"])
def test_cli_prints_one_line_and_leaves_nothing_behind(tmp_path: Path, case: str) -> None:
    (tmp_path / case).write_bytes((BAD / case).read_bytes())
    proc = subprocess.run([sys.executable, "-m", "lmsearch", "search", case], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    key, fragment = expectation(BAD / case)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(lines) == 1 and lines[0].startswith(f"lmsearch search: error: {case}: {key}: ") and fragment in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [case]  # no results/, no space.yaml copy, no lock
