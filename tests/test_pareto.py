"""Pareto front, non-dominated sorting, crowding distance and hypervolume against brute force and Optuna."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from optuna._hypervolume import compute_hypervolume

from lmsearch.pareto import (
    crowding_distance,
    dominated_mask,
    hypervolume,
    hypervolume_points,
    nondominated_rank,
    normalize_objectives,
    pareto_front,
)


def _brute_dominated(points: np.ndarray) -> np.ndarray:
    n = len(points)
    out = np.zeros(n, dtype=bool)
    for i, j in itertools.permutations(range(n), 2):
        a, b = points[j], points[i]
        if all(a <= b) and any(a < b):
            out[i] = True
    return out


def _brute_hv_grid(points: np.ndarray, ref: int) -> int:
    """Unit cells [c, c+1]^d below ref dominated by some integer point (exact for integer points)."""
    d = points.shape[1]
    count = 0
    for cell in itertools.product(range(ref), repeat=d):
        if any(all(p[k] <= cell[k] for k in range(d)) for p in points):
            count += 1
    return count


@pytest.mark.parametrize("m", [2, 3, 4])
def test_front_matches_brute_force_with_ties(m: int) -> None:
    rng = np.random.default_rng(m)
    for _ in range(20):
        # small integer range forces ties and exact duplicates
        pts = rng.integers(0, 5, size=(rng.integers(1, 30), m)).astype(float)
        assert dominated_mask(pts).tolist() == _brute_dominated(pts).tolist()
        df = pd.DataFrame(pts, columns=[f"o{j}" for j in range(m)])
        front = pareto_front(df, {f"o{j}": "min" for j in range(m)})
        assert sorted(front.index) == sorted(np.flatnonzero(~_brute_dominated(pts)))


def test_directions_are_respected() -> None:
    df = pd.DataFrame({"val_acc": [0.9, 0.8, 0.95, 0.9, 0.7], "params": [10, 5, 40, 20, 1]})
    assert sorted(pareto_front(df).index) == [0, 1, 2, 4]
    # maximising params instead: only the biggest-and-most-accurate survives
    assert pareto_front(df, {"val_acc": "max", "params": "max"}).index.tolist() == [2]
    # list-of-pairs and "col:dir" forms are the same objectives
    assert normalize_objectives([("val_acc", "maximize"), ("params", "minimize")]) == normalize_objectives(
        ["val_acc:max", "params:min"]
    )
    with pytest.raises(ValueError, match="direction"):
        normalize_objectives({"val_acc": "up"})
    with pytest.raises(KeyError, match="flops"):
        pareto_front(df, {"flops": "min"})


def test_text_objective_column_is_refused() -> None:
    df = pd.DataFrame({"scheme": pd.Series(["lm", "euler"], dtype="string"), "val_acc": [0.9, 0.8],
                       "params": pd.Series([10, None], dtype=object)})  # object numbers, as in a seed-means table
    with pytest.raises(ValueError, match=r"objective column 'scheme' is not numeric; numeric columns are "
                                         r"\['val_acc', 'params'\]"):
        pareto_front(df, {"scheme": "max", "params": "min"})
    with pytest.raises(ValueError, match="'scheme' is not numeric"):
        hypervolume(df, ref=[0.0], objectives=["scheme:max"])
    assert pareto_front(df).index.tolist() == [0]


def test_duplicates_kept_and_sorted_best_first() -> None:
    df = pd.DataFrame({"val_acc": [0.9, 0.9, 0.95, 0.8], "params": [10, 10, 40, 10]})
    front = pareto_front(df)
    assert front.index.tolist() == [2, 0, 1]  # both copies of (0.9, 10); (0.8, 10) is dominated


def test_non_complete_and_nan_rows_excluded() -> None:
    df = pd.DataFrame({
        "state": ["COMPLETE", "PRUNED", "FAILED", "RUNNING", "COMPLETE", "COMPLETE"],
        "val_acc": [0.8, 0.99, 0.99, 0.99, np.nan, 0.7],
        "params": [10, 1, 1, 1, 1, 20],
    })
    assert pareto_front(df).index.tolist() == [0]
    assert sorted(pareto_front(df, states=None).index) == [1, 2, 3]
    assert hypervolume(df, ref={"val_acc": 0.0, "params": 30}) == pytest.approx(0.8 * 20)


def test_by_group_equals_groupwise_fronts() -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"scheme": rng.choice(["euler", "lm", "rk2"], 60),
                       "val_acc": rng.random(60).round(2), "params": rng.integers(1, 20, 60)})
    by = pareto_front(df, by="scheme")
    for scheme, group in df.groupby("scheme"):
        assert sorted(by[by.scheme == scheme].index) == sorted(pareto_front(group).index)
    assert list(dict.fromkeys(by.scheme)) == ["euler", "lm", "rk2"]


def test_empty_and_all_excluded() -> None:
    df = pd.DataFrame({"state": ["PRUNED"], "val_acc": [0.5], "params": [3]})
    assert len(pareto_front(df)) == 0
    assert list(pareto_front(df).columns) == list(df.columns)
    assert hypervolume(df, ref=[0.0, 10]) == 0.0


@pytest.mark.parametrize("m", [1, 2, 3])
def test_hypervolume_matches_grid_count(m: int) -> None:
    rng = np.random.default_rng(10 + m)
    for _ in range(15):
        pts = rng.integers(0, 6, size=(rng.integers(1, 12), m))
        assert hypervolume_points(pts, [6] * m) == _brute_hv_grid(pts, 6)


@pytest.mark.parametrize("m", [2, 3])
def test_hypervolume_agrees_with_optuna(m: int) -> None:
    rng = np.random.default_rng(100 + m)
    for _ in range(40):
        n = int(rng.integers(1, 60))
        pts = rng.random((n, m))
        if rng.random() < 0.3:  # exact duplicates and ties
            pts = np.vstack([pts, pts[: n // 2]])
            pts[:, 0] = np.round(pts[:, 0], 1)
        ref = np.full(m, 1.05)
        assert abs(hypervolume_points(pts, ref) - compute_hypervolume(pts, ref)) <= 1e-9


def test_dataframe_hypervolume_flips_maximised_objectives_like_optuna() -> None:
    rng = np.random.default_rng(7)
    df = pd.DataFrame({"val_acc": rng.uniform(0.5, 0.95, 50), "params": rng.integers(10_000, 2_000_000, 50),
                       "flops": rng.integers(10**6, 10**8, 50)})
    ref = {"val_acc": 0.4, "params": 2_500_000, "flops": 2 * 10**8}
    for objs in ({"val_acc": "max", "params": "min"}, {"val_acc": "max", "params": "min", "flops": "min"}):
        cols = list(objs)
        loss = np.column_stack([-df[c].to_numpy(float) if objs[c] == "max" else df[c].to_numpy(float) for c in cols])
        r = np.array([-ref[c] if objs[c] == "max" else ref[c] for c in cols], dtype=float)
        expected = compute_hypervolume(loss, r)
        assert hypervolume(df, ref=ref, objectives=objs) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # ref as a sequence in objective order gives the same value
    assert hypervolume(df, ref=[0.4, 2_500_000]) == hypervolume(df, ref={"val_acc": 0.4, "params": 2_500_000})


def test_points_beyond_ref_add_nothing() -> None:
    assert hypervolume_points([[1, 1], [5, 0]], ref=[4, 4]) == 9.0
    assert hypervolume_points([[4, 1]], ref=[4, 4]) == 0.0
    with pytest.raises(ValueError, match="coordinates"):
        hypervolume_points([[1, 1]], ref=[4, 4, 4])


def _brute_rank(points: np.ndarray) -> list[int]:
    rank = [-1] * len(points)
    left = set(range(len(points)))
    level = 0
    while left:
        sub = sorted(left)
        dom = _brute_dominated(points[sub])
        front = [sub[i] for i in range(len(sub)) if not dom[i]]
        for i in front:
            rank[i] = level
        left -= set(front)
        level += 1
    return rank


def test_nondominated_rank_matches_peeling() -> None:
    rng = np.random.default_rng(3)
    for m in (2, 3):
        pts = rng.integers(0, 6, size=(40, m)).astype(float)
        assert nondominated_rank(pts).tolist() == _brute_rank(pts)
    assert nondominated_rank([[0.0, np.nan], [1.0, 1.0]]).tolist() == [-1, 0]


def test_crowding_distance() -> None:
    pts = np.array([[0, 4], [1, 2], [2, 1], [4, 0]], dtype=float)
    assert crowding_distance(pts).tolist() == [np.inf, 1.25, 1.25, np.inf]
    # a duplicate of an inner point is no more isolated than its twin
    dup = np.vstack([pts, pts[1]])
    d = crowding_distance(dup)
    assert d[1] == d[4] <= 1.25
    assert crowding_distance([[1, 2], [3, 4]]).tolist() == [np.inf, np.inf]


def test_aggregate_seeds_groups_replicates_only() -> None:
    from lmsearch.pareto import aggregate_seeds, repeats_seeds

    arch = ['{"scheme": "lm", "depth": 20}'] * 4 + ['{"scheme": "lm", "depth": 32}']
    train = ['{"lr": 0.1, "seed": 1}', '{"lr": 0.1, "seed": 2}', '{"lr": 0.05, "seed": 1}',
             '{"lr": 0.1, "seed": 3}', '{"lr": 0.1, "seed": 1}']
    df = pd.DataFrame({"trial_id": list("abcde"), "state": ["COMPLETE", "COMPLETE", "COMPLETE", "FAILED", "COMPLETE"],
                       "arch_json": arch, "train_json": train, "seed": [1, 2, 1, 3, 1], "params": [10, 10, 10, 10, 16],
                       "val_acc": [0.80, 0.90, 0.70, 0.99, 0.95], "test_acc": [0.79, 0.89, 0.69, 0.98, 0.94]})
    assert repeats_seeds(df) and not repeats_seeds(df.iloc[2:])
    agg = aggregate_seeds(df)
    # a and b differ only in their seed; c has another lr; the FAILED d does not count
    assert agg.trial_id.tolist() == ["a+b", "c", "e"]
    assert agg.n.tolist() == [2, 1, 1] and agg.seeds.tolist() == [[1, 2], [1], [1]]
    assert agg.val_acc.tolist() == pytest.approx([0.85, 0.70, 0.95])
    assert agg.val_acc_sem.iloc[0] == pytest.approx(0.05) and np.isnan(agg.val_acc_sem.iloc[1])
    assert "seed" not in agg.columns
    assert pareto_front(agg).trial_id.tolist() == ["e", "a+b"]


def test_aggregate_seeds_counts_a_repeated_seed_once() -> None:
    from lmsearch.pareto import aggregate_seeds, repeats_seeds

    df = pd.DataFrame({"trial_id": ["a", "b"], "state": "COMPLETE", "arch_json": ['{"depth": 20}'] * 2,
                       "train_json": ['{"seed": 1}'] * 2, "seed": [1, 1], "params": [10, 10], "val_acc": [0.8, 0.8]})
    agg = aggregate_seeds(df)
    assert agg.n.tolist() == [1] and agg.seeds.tolist() == [[1]] and np.isnan(agg.val_acc_sem.iloc[0])
    assert agg.trial_id.tolist() == ["b"]
    assert not repeats_seeds(df.assign(seed=[1, 2], train_json=['{"seed": 1}', '{"seed": 2}']).iloc[:1])
