"""A torchvision base through the command line: ``lmsearch train torchvision:NAME --lm`` and a search on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lmsearch
from lmsearch.arch import ArchSpec
from lmsearch.data.synthetic import write_image_folder

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmsearch", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def test_train_a_grey_lm_resnet18_and_save(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", classes=3, per_class=10, test_per_class=2, size=(16, 16),
                              mode="L")
    out = run("train", "torchvision:resnet18", "--lm", "--k-init", "paper", "--per-channel-k",
              "--stochastic-depth", "0.2", "--dataset", "folder", "--data-dir", str(root), "--image-size", "16",
              "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.2", "--threads", "1", "--no-progress",
              "--save", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "training torchvision:resnet18 (lm, depth 18, width 64" in out.stdout
    spec = json.loads((tmp_path / "out" / "arch.json").read_text())["spec"]
    assert spec["base"] == "torchvision:resnet18" and spec["in_channels"] == 1 and spec["num_classes"] == 3
    model = lmsearch.load_architecture(tmp_path / "out")
    assert model.conv1.weight.shape == (64, 1, 7, 7) and model.fc.out_features == 3  # adapted to the data
    k = lmsearch.lm_coefficients(model)
    assert len(k) == 4 and (k["n_k"] == [64, 128, 256, 512]).all()
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 3)


def test_train_refuses_lm_options_without_a_base_and_unknown_bases(tmp_path: Path) -> None:
    from lmsearch.cli import main

    assert main(["train", "resnet20", "--lm", "--dataset", "synthetic", "--epochs", "0"]) == 2
    assert main(["train", "torchvision:resnet19", "--dataset", "synthetic", "--epochs", "0"]) == 2
    assert main(["train", "torchvision:resnet18", "--stochastic-depth", "1", "--dataset", "synthetic",
                 "--epochs", "0"]) == 2


@pytest.mark.parametrize("option", [["--k-init", "paper"], ["--per-channel-k"]])
def test_train_refuses_k_options_without_lm(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """k_n options on a plain (euler) torchvision net would be ignored: a usage error instead."""
    from lmsearch.cli import main

    assert main(["train", "torchvision:resnet18", *option, "--dataset", "synthetic", "--epochs", "0"]) == 2
    assert "--k-init and --per-channel-k set the k_n of the LM steps: add --lm" in capsys.readouterr().err


SPACE = """
name: tv-lm
dataset: {{name: folder, data_dir: {root}, image_size: 16, val_fraction: 0.25}}
budget: {{epochs: 1}}
architecture:
  base: torchvision:resnet18
  scheme: [euler, lm]
  k_init: paper
  noise: stochastic_depth
  noise_prob: 0.2
training:
  lr: 0.01
  batch_size: 8
search: {{sampler: grid, seed: 0, max_concurrent: 1}}
resources: {{cpu: 1, max_failures: 0}}
"""


@pytest.mark.slow
def test_search_scheme_and_noise_on_a_torchvision_base(tmp_path: Path) -> None:
    """The two trials of a grid over scheme (LM with the paper's k init, stochastic depth) on resnet18, 1 epoch on a tiny image folder, via ``lmsearch search``."""
    root = write_image_folder(tmp_path / "images", classes=2, per_class=8, test_per_class=2, size=(16, 16))
    space = tmp_path / "space.yaml"
    space.write_text(textwrap.dedent(SPACE.format(root=root)))
    proc = run("search", str(space), "--out", str(tmp_path / "exp"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    df = lmsearch.load_results(tmp_path / "exp")
    assert len(df) == 2 and (df["state"] == "COMPLETE").all(), df[["state", "error"]].to_string()
    assert (df["base"] == "torchvision:resnet18").all() and (df["depth"] == 18).all()
    assert sorted(df["scheme"]) == ["euler", "lm"] and (df["noise"] == "stochastic_depth").all()
    for _, row in df.iterrows():
        spec = ArchSpec.from_json(row["arch_json"])
        assert spec.base == "torchvision:resnet18" and spec.in_channels == 3 and spec.num_classes == 2
        assert row["params"] == lmsearch.count_params(spec)
        model = lmsearch.load_architecture(tmp_path / "exp" / "weights" / row["trial_id"])
        assert model.spec == spec
        assert len(lmsearch.lm_coefficients(model)) == (4 if spec.scheme == "lm" else 0)


def test_stochastic_depth_help_says_what_the_first_block_drops() -> None:
    import argparse

    from lmsearch.cli.train_cmd import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = " ".join(next(a.help for a in parser._actions if a.dest == "stochastic_depth").split())
    assert "the first drops P / N" in text and "to 0 at the first" not in text
