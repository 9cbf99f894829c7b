"""Issue 7's experiment at toy size: the committed CPU grid file, shrunk, run and analysed as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import lmsearch
from lmsearch.arch import ArchSpec
from lmsearch.nn.counting import count_params

pytestmark = [pytest.mark.slow, pytest.mark.fashion]

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "search_spaces" / "compression_fashion_cpu.yaml"


def _toy_copy(tmp_path: Path) -> tuple[Path, dict]:
    """The committed grid with only its size cut: tiny data, one epoch, the two shallowest depths."""
    space = yaml.safe_load(GRID.read_text())
    space["dataset"].update(subset=256, val_fraction=0.01)
    space["budget"]["epochs"] = 1
    space["architecture"]["depth"] = sorted(space["architecture"]["depth"])[:2]
    path = tmp_path / "toy_grid.yaml"
    path.write_text(yaml.safe_dump(space))
    return path, space


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmsearch", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled"})


def test_compression_grid_runs_end_to_end_at_toy_size(tmp_path: Path) -> None:
    path, space = _toy_copy(tmp_path)
    grid = lmsearch.load_space(path).grid()
    schemes, depths, seeds = (space["architecture"]["scheme"], space["architecture"]["depth"],
                              space["training"]["seed"])
    assert len(seeds) >= 3 and {"euler", "lm"} <= set(schemes)
    assert len(grid) == len(schemes) * len(depths) * len(seeds)

    exp = tmp_path / "exp"
    proc = _run("search", str(path), "--out", str(exp), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]

    trials = lmsearch.load_results(exp)
    assert trials.state.tolist() == ["COMPLETE"] * len(grid)
    # every grid point ran exactly once, with the file's shared recipe
    ran = sorted(zip(trials.scheme, trials.depth, trials.seed, strict=True))
    assert ran == sorted((s, d, seed) for s in schemes for d in depths for seed in seeds)
    for recipe in trials.train_json:
        train = json.loads(recipe)
        assert (train["lr"], train["schedule"]) == (space["training"]["lr"], "step")
    assert (trials.epochs_run == 1).all() and trials.test_acc.between(0.0, 1.0).all()

    table = lmsearch.compression_table(trials)
    assert sorted(zip(table.family, table.depth, table.n, strict=True)) == sorted(
        (s, d, len(seeds)) for s in schemes for d in depths)
    for row in table.itertuples():
        spec = ArchSpec(scheme=row.scheme, depth=row.depth, width=space["architecture"]["width"],
                        preact=True, in_channels=1, num_classes=10)
        assert row.params == count_params(spec)
        mine = trials[(trials.scheme == row.scheme) & (trials.depth == row.depth)].test_acc
        assert row.acc_mean == pytest.approx(mine.mean())

    report = _run("pareto", str(exp), "--compression")
    assert report.returncode == 0, report.stderr[-3000:]
    assert "ratio" in report.stdout and "euler" in report.stdout and "lm" in report.stdout
