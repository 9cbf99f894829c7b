"""The replay benchmark's bookkeeping (benchmarks/pruning.py): subsets, cuts, canonical schemes, shares."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent


def _load_benchmark():  # benchmarks/ is scripts, not a package
    spec = importlib.util.spec_from_file_location("bench_pruning", REPO / "benchmarks" / "pruning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()


def _table() -> pd.DataFrame:
    """Six trials x 3 epochs; final accuracies rise with size except the lm-8 (an euler net)."""
    rows = []
    trials = [("a", "euler", 8, 100, 0.70), ("b", "lm", 8, 100, 0.72), ("c", "lm", 14, 300, 0.80),
              ("d", "rev", 14, 200, 0.60), ("e", "poly", 8, 150, 0.75), ("f", "euler", 20, 500, 0.85)]
    for tid, scheme, depth, params, final in trials:
        for epoch in (1, 2, 3):
            rows.append({"trial_id": tid, "scheme": scheme, "depth": depth, "width": 4, "params": params,
                         "epoch": epoch, "val_acc": final - 0.1 * (3 - epoch), "seconds": 1.0})
    return pd.DataFrame(rows)


def test_lm_without_lm_steps_is_replayed_as_euler() -> None:
    table = bench.canonical_schemes(_table())
    schemes = table.groupby("trial_id").scheme.first().to_dict()
    assert schemes == {"a": "euler", "b": "euler", "c": "lm", "d": "rev", "e": "poly", "f": "euler"}


def test_a_subset_is_the_start_of_the_seeded_order() -> None:
    table = _table()
    for seed in range(5):
        full = bench.trial_order(table, seed)
        assert sorted(full) == list("abcdef")
        assert bench.trial_order(table, seed, 4) == full[:4]


def test_no_pruning_scores_one_on_every_subset_and_the_cut_sets_the_budget() -> None:
    b = bench.Bench(bench.canonical_schemes(_table()), seeds=4, workers=2, epochs=2, trials=4)
    assert b.budget == 2
    assert b.none["epochs"] == 4 * 2 and b.none["completed"] == 4
    assert b.none["hv_share"] == pytest.approx(1.0) and b.none["front_found"] == 1.0
    # the true front of the whole table at epoch 2: b (0.62, 100), e (0.65, 150), c (0.70, 300), f (0.75, 500)
    assert b.true_front == {"b", "e", "c", "f"}
    whole = bench.Bench(bench.canonical_schemes(_table()), seeds=2, workers=2, epochs=2)
    assert whole.none["schemes_on_front"] == 3  # b and f euler, e poly, c lm


def test_bad_cut_or_subset_is_refused() -> None:
    with pytest.raises(SystemExit, match="--epochs must be between 1 and 3"):
        bench.Bench(_table(), seeds=1, workers=1, epochs=4)
    with pytest.raises(SystemExit, match="--trials must be between 1 and 6"):
        bench.Bench(_table(), seeds=1, workers=1, trials=7)
