"""What a search prints: one line per trial event, and the summary at the end."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from lmsearch.progress import ENDED, EPOCH, RETRY, STARTED, SearchProgress, search_summary

OBJECTIVES = [("val_acc", "max"), ("params", "min")]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _row(number: int, state: str = "RUNNING", **fields) -> dict:
    base = {"trial_id": f"t{number}", "number": number, "state": state, "scheme": "lm", "depth": 14, "width": 8,
            "lr": 0.0612, "seed": 0, "epochs_run": 0, "val_acc": None, "params": 1000 * (number + 1), "error": ""}
    return {**base, **fields}


def _progress(total: int = 4, earlier: list[dict] | None = None) -> tuple[SearchProgress, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    return SearchProgress(total, 3, OBJECTIVES, earlier=earlier or [], stream=out, clock=clock), out, clock


def test_one_line_per_event_with_counts_front_and_time_left() -> None:
    progress, out, clock = _progress()
    progress.event(STARTED, _row(0))
    clock.now += 30
    progress.event(EPOCH, _row(0, epochs_run=1, val_acc=0.71234))
    clock.now += 30
    progress.event(ENDED, _row(0, "COMPLETE", epochs_run=3, val_acc=0.8, params=2000))
    clock.now += 60
    progress.event(ENDED, _row(1, "PRUNED", epochs_run=1, val_acc=0.5))
    progress.event(ENDED, _row(2, "COMPLETE", epochs_run=3, val_acc=0.9, params=5000))
    progress.event(ENDED, _row(3, "COMPLETE", epochs_run=3, val_acc=0.7, params=9000))  # dominated by trial 0
    assert out.getvalue().splitlines() == [
        "[   0:00] trial 0 started: lm-14 w8 lr 0.0612",
        "[   0:30] trial 0 epoch 1/3: val_acc 0.7123",
        "[   1:00] trial 0 completed: val_acc 0.8000, 2,000 params | 1/4 ended (1 completed, 0 pruned, 0 failed), "
        "0 running, front 1, ~3 min left",  # 60 s per ended trial x 3 left
        "[   2:00] trial 1 pruned at epoch 1/3: val_acc 0.5000 | 2/4 ended (1 completed, 1 pruned, 0 failed), "
        "0 running, front 1, ~2 min left",
        "[   2:00] trial 2 completed: val_acc 0.9000, 5,000 params | 3/4 ended (2 completed, 1 pruned, 0 failed), "
        "0 running, front 2, ~40 s left",
        "[   2:00] trial 3 completed: val_acc 0.7000, 9,000 params | 4/4 ended (3 completed, 1 pruned, 0 failed), "
        "0 running, front 2",
    ]


def test_failure_line_names_the_error_and_the_traceback_file() -> None:
    progress, out, _ = _progress(total=2)
    progress.event(RETRY, _row(5, epochs_run=2))
    progress.event(ENDED, _row(5, "FAILED", epochs_run=2, error="RuntimeError: boom\nmore", error_file="/x/error.txt"))
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("trial 5: its worker failed at epoch 2/3; retrying from its last checkpoint")
    assert lines[1].endswith("trial 5 failed at epoch 2/3: RuntimeError: boom (traceback: /x/error.txt) | "
                             "1/2 ended (0 completed, 0 pruned, 1 failed), 0 running, front 0, ~1 s left")


def test_a_resumed_search_counts_earlier_trials_once() -> None:
    earlier = [_row(0, "COMPLETE", epochs_run=3, val_acc="0.8", params="2000"), _row(1, "RUNNING", epochs_run=1)]
    progress, out, _ = _progress(total=3, earlier=earlier)
    progress.event(ENDED, _row(0, "COMPLETE", epochs_run=3, val_acc=0.8, params=2000))  # Ray re-announces it
    assert out.getvalue() == ""
    progress.event(ENDED, _row(1, "COMPLETE", epochs_run=3, val_acc=0.9, params=3000))
    assert "2/3 ended (2 completed, 0 pruned, 0 failed), 0 running, front 2" in out.getvalue()


def test_summary_front_plot_and_next_commands() -> None:
    table = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d"], "number": [0, 1, 2, 3],
        "state": ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"], "scheme": ["euler", "lm", "rk2", "lm"],
        "depth": [20, 14, 14, 20], "width": [8, 4, 4, 8], "lr": [0.1] * 4, "seed": [0] * 4,
        "params": [5000, 1000, 1500, 6000], "val_acc": [0.9, 0.8, 0.5, 0.85], "test_acc": [0.89, 0.79, np.nan, 0.84],
        "epochs_run": [3, 3, 1, 3], "epochs": [3, 3, 3, 3], "error": [""] * 4,
    })
    text = search_summary(Path("res/x"), table, OBJECTIVES, finished=True, plot=Path("res/x/pareto.png"), wall_s=75)
    assert "4 trials: 3 completed, 1 pruned, 0 failed; 10 of 12 epochs trained; 1:15 wall time" in text
    assert "Pareto front of res/x: 2 trials" in text  # d is dominated by a
    assert "Front plot: res/x/pareto.png" in text
    # the most accurate front trial, and the most accurate LM trial on the front since the best is not LM
    assert "lmsearch export res/x --trial 0 --out best/   # euler-20 w8 lr 0.1" in text
    assert "lmsearch export res/x --trial 1 --out best-lm/   # lm-14 w4 lr 0.1" in text
    assert "optuna-dashboard sqlite:///res/x/study.db" in text
    assert "did not finish" not in text
    unfinished = search_summary(Path("res/x"), table, OBJECTIVES, finished=False)
    assert "lmsearch search res/x/space.yaml --out res/x --resume" in unfinished


def test_summary_front_is_over_seed_means_when_seeds_repeat() -> None:
    arch = '{"scheme": "lm", "depth": 14}'
    table = pd.DataFrame({
        "trial_id": ["a", "b"], "number": [0, 1], "state": ["COMPLETE"] * 2, "scheme": ["lm"] * 2,
        "depth": [14, 14], "arch_json": [arch, arch], "train_json": ['{"lr": 0.1}'] * 2, "seed": [1, 2],
        "params": [1000, 1000], "val_acc": [0.8, 0.9], "test_acc": [0.8, 0.9], "epochs_run": [3, 3],
        "epochs": [3, 3], "error": ["", ""],
    })
    text = search_summary(Path("e"), table, OBJECTIVES, finished=True)
    assert "Pareto front of e: 1 architecture, means over seeds" in text
    assert "0.85" in text  # the mean of the two seeds


def test_summary_exports_the_mean_front_architectures_by_their_best_seed() -> None:
    """A lucky seed does not pick the export: the front is over means, each exported as its best trial."""
    lm, euler = '{"scheme": "lm", "depth": 14}', '{"scheme": "euler", "depth": 20}'
    table = pd.DataFrame({
        "trial_id": ["a", "b", "c"], "number": [0, 1, 2], "state": ["COMPLETE"] * 3, "scheme": ["lm", "lm", "euler"],
        "depth": [14, 14, 20], "width": [4, 4, 8], "lr": [0.1] * 3, "arch_json": [lm, lm, euler],
        "train_json": ['{"lr": 0.1}'] * 3, "seed": [1, 2, 1], "params": [1000, 1000, 5000],
        "val_acc": [0.80, 0.90, 0.88], "test_acc": [0.80, 0.90, 0.88], "epochs_run": [3] * 3, "epochs": [3] * 3,
        "error": [""] * 3,
    })
    text = search_summary(Path("e"), table, OBJECTIVES, finished=True)
    assert "Pareto front of e: 2 architectures, means over seeds" in text
    # euler-20 (0.88) beats lm-14's mean (0.85), though lm-14's seed 2 alone (0.90) would beat it
    assert "lmsearch export e --trial 2 --out best/   # euler-20 w8 lr 0.1" in text
    assert "lmsearch export e --trial 1 --out best-lm/   # lm-14 w4 lr 0.1 seed 2" in text


def test_a_trial_that_starts_again_is_announced_as_resumed_not_started() -> None:
    """A worker retry, or a trial a restored search continues: one "resumed" line, the counts unchanged."""
    earlier = [_row(1, "RUNNING", epochs_run=2, val_acc="0.7")]  # running when the driver stopped
    progress, out, _ = _progress(total=2, earlier=earlier)
    progress.event(STARTED, _row(0))
    progress.event(EPOCH, _row(0, epochs_run=1, val_acc=0.6))
    progress.event(RETRY, _row(0, epochs_run=1, val_acc=0.6))
    progress.event(STARTED, _row(0))  # Ray restarts the retried trial
    progress.event(STARTED, _row(1))  # the restored search continues trial 1
    lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines[3:] == ["trial 0 resumed from epoch 1/3", "trial 1 resumed from epoch 2/3"]
    assert lines[0].startswith("trial 0 started: ")
    assert progress.counts()["RUNNING"] == 2
