"""``lmsearch train`` run as a user runs it: the console entry point on real files (one run as a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

needs_fashion = pytest.mark.fashion


def lmsearch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmsearch", "train", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={k: v for k, v in os.environ.items() if k != "LMSEARCH_DATA"})


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``lmsearch train ARGS`` in this process (the same entry point as the console script)."""
    from lmsearch.cli import main

    try:
        code = main(["train", *args])
    except SystemExit as exc:  # argparse (--help, usage errors)
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_has_examples(capsys: pytest.CaptureFixture) -> None:
    code, stdout, _ = cli(capsys, "--help")
    assert code == 0
    for text in ("MODEL|ARCH.json", "--dataset", "--epochs", "--subset", "--save", "--device", "examples:",
                 "lmsearch train lm_resnet20"):
        assert text in stdout


def test_cli_names_and_defaults_match_the_library() -> None:
    import dataclasses

    from lmsearch.cli import train_cmd
    from lmsearch.data import DATASETS
    from lmsearch.train import SCHEDULES, TrainConfig

    assert train_cmd.DATASET_NAMES == tuple(DATASETS) and train_cmd.SCHEDULE_NAMES == SCHEDULES
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert {k: defaults[k] for k in train_cmd.DEFAULTS} == train_cmd.DEFAULTS


def test_cli_defaults_suit_short_runs_and_the_paper_recipe_is_flags() -> None:
    import argparse

    from lmsearch.cli import train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    args = parser.parse_args(["lm_resnet20"])
    # a 2-epoch run under the step schedule spends its second epoch at lr / 10 and / 100
    assert (args.schedule, args.batch_size, args.lr) == ("cosine", 64, 0.1)
    paper = parser.parse_args(["lm_resnet20", *train_cmd.PAPER_RECIPE.split()])
    assert (paper.schedule, paper.batch_size, paper.lr, paper.weight_decay, paper.nesterov, paper.epochs) == (
        "step", 128, 0.1, 1e-4, False, 160)


@needs_fashion
def test_train_spec_json_on_fashion_mnist_and_save(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps({"scheme": "lm", "depth": 14, "width": 8, "in_channels": 3, "num_classes": 7}))
    out = lmsearch(str(spec), "--epochs", "1", "--subset", "600", "--val-fraction", "0.02", "--batch-size", "64",
                   "--threads", "2", "--no-progress", "--save", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    assert "in_channels 3 -> 1, num_classes 7 -> 10" in out.stderr  # adapted to the dataset
    lines = out.stdout.splitlines()
    assert "fashion-mnist: 600 train / 1200 val / 10000 test images" in lines[0]
    assert any(line.startswith("epoch 1/1") and "val_acc" in line and "img/s" in line for line in lines)
    assert any(line.startswith("test accuracy") and "(10000 images)" in line for line in lines)
    assert (tmp_path / "out" / "arch.json").is_file() and (tmp_path / "out" / "model.safetensors").is_file()

    from lmsearch.archfile import load_architecture

    model = load_architecture(tmp_path / "out")
    assert (model.spec.scheme, model.spec.depth, model.spec.in_channels, model.spec.num_classes) == ("lm", 14, 1, 10)
    assert model.metadata["metrics"]["test_acc"] > 0.1 and model.metadata["provenance"]["dataset"] == "fashion-mnist"

    # the export directory is itself a MODEL; --init-weights continues from its weights
    code, stdout, stderr = cli(capsys, str(tmp_path / "out"), "--epochs", "1", "--subset", "200",
                               "--val-fraction", "0.02", "--lr", "0.01", "--init-weights", "--threads", "2")
    assert code == 0, stderr
    assert "test accuracy" in stdout and "adapted" not in stderr


def test_zoo_model_on_synthetic(capsys: pytest.CaptureFixture) -> None:
    code, stdout, stderr = cli(capsys, "resnet20", "--dataset", "synthetic", "--epochs", "1", "--subset", "128",
                               "--batch-size", "64")
    assert code == 0, stderr
    assert "training zoo:resnet20" in stdout and "test accuracy" in stdout


def test_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = cli(capsys, "no_such_net", "--dataset", "synthetic")
    assert code == 2 and "zoo models:" in err and "resnet20" in err

    code, _, err = cli(capsys, "resnet20", "--data-dir", str(tmp_path / "empty"))
    assert code == 2 and "apt-get install dataset-fashion-mnist" in err
    assert str(tmp_path / "empty") in err and "Traceback" not in err

    bad = tmp_path / "bad.json"
    bad.write_text('{"scheme": "lm", "depth": 15}')
    code, _, err = cli(capsys, str(bad), "--dataset", "synthetic")
    assert code == 2 and "not a valid ArchSpec" in err and "depth" in err

    code, _, err = cli(capsys, str(tmp_path / "missing.json"))
    assert code == 2 and "no such file" in err

    code, _, err = cli(capsys, "resnet20", "--init-weights", "--dataset", "synthetic")
    assert code == 2 and "--init-weights needs an export directory" in err

    code, _, err = cli(capsys, "resnet20", "--dataset", "synthetic", "--lr", "-1")
    assert code == 2 and "lr must be > 0" in err

    code, _, err = cli(capsys, "")  # `lmsearch train "$MODEL"` with MODEL unset
    assert code == 2 and "argument MODEL|ARCH.json: must not be empty" in err
    for option in ("--save", "--data-dir"):  # an empty --save would train, then save nothing
        code, _, err = cli(capsys, "resnet20", "--dataset", "synthetic", option, " ")
        assert code == 2 and f"argument {option}: must not be empty or blank" in err

    code, _, err = cli(capsys, "resnet20", "--dataset", "synthetic", "--image-size", "0")  # 0 is a value, not "unset"
    assert code == 2 and "--image-size is only for --dataset imagenet or folder" in err
    for cls in ("a", "b"):
        (tmp_path / "folder" / cls).mkdir(parents=True)
    code, _, err = cli(capsys, "resnet20", "--dataset", "folder", "--data-dir", str(tmp_path / "folder"),
                       "--image-size", "0")
    assert code == 2 and "image_size must be a positive integer (pixels); got 0" in err


def test_divergence_exits_1_and_saves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = cli(capsys, "resnet20", "--dataset", "synthetic", "--subset", "256", "--epochs", "2",
                         "--batch-size", "32", "--lr", "1e12", "--save", str(tmp_path / "out"))
    assert code == 1 and "diverged at epoch 1" in err and "nothing saved" in err
    assert "train_loss nan" in out and "test accuracy" not in out
    assert not (tmp_path / "out").exists()


def test_save_refuses_untrained_or_nonfinite_weights(tmp_path: Path) -> None:
    """As a user runs it: nothing is written and the exit status is non-zero."""
    base = ("resnet20", "--dataset", "synthetic", "--subset", "32", "--batch-size", "32", "--threads", "1",
            "--no-progress")
    out = tmp_path / "out"
    proc = lmsearch(*base, "--epochs", "0", "--save", str(out))
    assert proc.returncode == 2 and "--save with --epochs 0 would save untrained weights" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()

    for flag in ("--lr", "--weight-decay", "--momentum", "--warmup-epochs", "--label-smoothing"):
        proc = lmsearch(*base, flag, "inf", "--save", str(out))
        assert proc.returncode == 2 and f"argument {flag}: must be a finite number; got 'inf'" in proc.stderr
    assert not out.exists()

    # one step whose loss is finite but whose weights then overflow the network: the validation loss is NaN
    proc = lmsearch(*base, "--epochs", "1", "--lr", "1e37", "--save", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "diverged in epoch 1: the validation loss is nan" in proc.stderr and "nothing saved" in proc.stderr
    assert "test accuracy" not in proc.stdout and not out.exists()


def test_absurd_widths_are_clear_errors(tmp_path: Path) -> None:
    from lmsearch.arch import ArchSpec
    from lmsearch.archfile import save_architecture
    from lmsearch.nn.network import build_model

    spec = ArchSpec(scheme="lm", depth=8, width=4, in_channels=3)
    export = save_architecture(build_model(spec), spec, tmp_path / "export")
    doc = json.loads((export / "arch.json").read_text())
    doc["spec"]["width"] = 10**6  # 36 TB of weights
    (export / "arch.json").write_text(json.dumps(doc))
    proc = lmsearch(str(export), "--init-weights", "--dataset", "synthetic", "--epochs", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert ("arch.json: the network of this spec cannot be built (width 1000000, depth 8): this network has at "
            "least 1.89e+14 parameters") in proc.stderr

    big = tmp_path / "big.json"
    big.write_text(json.dumps(doc["spec"]))
    proc = lmsearch(str(big), "--dataset", "synthetic", "--epochs", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{big}: cannot build the network (width 1000000, depth 8)" in proc.stderr

    # 66 billion parameters that each fit in memory page by page: refused by arithmetic, before any allocation
    big.write_text(json.dumps({"scheme": "euler", "depth": 2000, "width": 1024}))
    proc = lmsearch(str(big), "--dataset", "synthetic", "--epochs", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (f"{big}: cannot build the network (width 1024, depth 2000): this network has at least 6.6e+10 "
            f"parameters; at most 1e+09 are allowed") in proc.stderr
