"""Pareto fronts, non-dominated sorting, crowding distance and hypervolume.

Pure numpy/pandas maths, no torch. Two layers:

* array functions on **minimisation** points (an ``(n, m)`` float array, smaller
  is better in every column): :func:`dominated_mask`, :func:`nondominated_rank`,
  :func:`crowding_distance`, :func:`hypervolume_points`;
* DataFrame functions that read objectives with their directions from a trials
  table (:func:`pareto_front`, :func:`hypervolume`), flipping maximised
  objectives before calling the array layer.

Conventions (the same as Optuna's):

* ``a`` dominates ``b`` when ``a`` is no worse in every objective and strictly
  better in at least one. Rows with identical objective vectors do not
  dominate each other, so exact duplicates and ties on the front are **all
  kept**.
* A row whose objectives contain NaN takes no part (it is neither on the front
  nor dominates anything). Where a ``state`` column exists, only ``COMPLETE``
  rows take part.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"val_acc": [0.9, 0.8, 0.95, 0.9], "params": [10, 5, 40, 20]})
    >>> pareto_front(df).index.tolist()
    [2, 0, 1]
    >>> hypervolume(df, ref={"val_acc": 0.0, "params": 50})
    40.5
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from lmsearch.states import COMPLETE

__all__ = [
    "DEFAULT_OBJECTIVES",
    "Objectives",
    "normalize_objectives",
    "objective_matrix",
    "dominated_mask",
    "nondominated_rank",
    "crowding_distance",
    "hypervolume_points",
    "pareto_front",
    "hypervolume",
    "aggregate_seeds",
    "repeats_seeds",
    "front_table",
]

#: The default trade-off: accuracy up, parameters down.
DEFAULT_OBJECTIVES: dict[str, str] = {"val_acc": "max", "params": "min"}

Objectives = Mapping[str, str] | Sequence[tuple[str, str]] | Sequence[str] | None

_DIRECTIONS = {
    "max": "max",
    "maximize": "max",
    "maximise": "max",
    "min": "min",
    "minimize": "min",
    "minimise": "min",
}

# Pairwise domination is evaluated in blocks of this many rows so memory stays
# O(block * n * m) instead of O(n^2 * m).
_BLOCK = 1024


# --------------------------------------------------------------------------- objectives
def normalize_objectives(objectives: Objectives = None) -> list[tuple[str, str]]:
    """Objectives as a list of ``(column, "max"|"min")`` pairs.

    Accepts a dict ``{column: direction}``, a list of ``(column, direction)``
    pairs, a list of ``"column:direction"`` strings, or ``None`` for
    :data:`DEFAULT_OBJECTIVES`. Directions may be spelt ``max``/``maximize``/
    ``min``/``minimize``.

    Example:
        >>> normalize_objectives({"val_acc": "maximize", "params": "min"})
        [('val_acc', 'max'), ('params', 'min')]
        >>> normalize_objectives(["val_acc:max", "flops:min"])
        [('val_acc', 'max'), ('flops', 'min')]
    """
    if objectives is None:
        objectives = DEFAULT_OBJECTIVES
    items: Iterable
    if isinstance(objectives, Mapping):
        items = objectives.items()
    elif isinstance(objectives, str):
        raise TypeError(f"objectives must be a mapping or a list, not a single string {objectives!r}")
    else:
        items = objectives
    out: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            column, sep, direction = item.rpartition(":")
            if not sep:
                raise ValueError(f"objective {item!r} needs a direction, e.g. '{item}:max'")
        else:
            column, direction = item
        key = str(direction).lower()
        if key not in _DIRECTIONS:
            raise ValueError(f"direction of objective {column!r} must be 'max' or 'min'; got {direction!r}")
        out.append((str(column), _DIRECTIONS[key]))
    if not out:
        raise ValueError("at least one objective is needed")
    columns = [c for c, _ in out]
    if len(set(columns)) != len(columns):
        raise ValueError(f"objectives name a column twice: {columns}")
    return out


def objective_matrix(df: pd.DataFrame, objectives: Objectives = None) -> np.ndarray:
    """The objectives of ``df`` as a float minimisation matrix (maximised columns negated).

    Missing values become NaN. Raises ``KeyError`` naming an absent column and
    ``ValueError`` naming a column that is not numeric (text such as ``scheme``).

    Example:
        >>> objective_matrix(pd.DataFrame({"val_acc": [0.5], "params": [7]})).tolist()
        [[-0.5, 7.0]]
    """
    objs = normalize_objectives(objectives)
    missing = [c for c, _ in objs if c not in df.columns]
    if missing:
        raise KeyError(f"objective column(s) {missing} not in the table; columns are {list(df.columns)}")
    for column, _ in objs:
        if not _is_numeric(df[column]):
            numeric = [c for c in df.columns if _is_numeric(df[c])]
            raise ValueError(f"objective column {column!r} is not numeric; numeric columns are {numeric}")
    cols = []
    for column, direction in objs:
        values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        cols.append(-values if direction == "max" else values)
    return np.column_stack(cols) if cols else np.empty((len(df), 0))


def _is_numeric(series: pd.Series) -> bool:
    """A numeric column, or an object column whose values are all numbers or missing (a seed-means table)."""
    if pd.api.types.is_numeric_dtype(series):
        return True
    if series.dtype != object:
        return False
    present = series[series.notna().to_numpy(dtype=bool)]
    return bool(pd.to_numeric(present, errors="coerce").notna().all())


def _eligible(df: pd.DataFrame, points: np.ndarray, states: Sequence[str] | None) -> np.ndarray:
    """Rows that take part: finite objectives and, where ``state`` exists, a wanted state."""
    ok = np.all(np.isfinite(points), axis=1)
    if states is not None and "state" in df.columns:
        ok &= df["state"].astype(object).isin(list(states)).to_numpy(dtype=bool)
    return ok


# --------------------------------------------------------------------------- array layer
def _as_points(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"points must be a 2-D array (n points x m objectives); got shape {arr.shape}")
    return arr


def dominated_mask(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Boolean mask: ``True`` where a point is dominated by another (minimisation).

    Identical points do not dominate each other. Rows containing NaN are
    reported as dominated and never dominate others.

    Example:
        >>> dominated_mask([[1, 2], [2, 1], [2, 2], [1, 2]]).tolist()
        [False, False, True, False]
    """
    pts = _as_points(points)
    n = len(pts)
    finite = np.all(np.isfinite(pts), axis=1)
    valid = pts[finite]
    out = np.ones(n, dtype=bool)
    if len(valid):
        out[finite] = _dominated_within(valid)
    return out


def _dominated_within(pts: np.ndarray) -> np.ndarray:
    """``dominated[j]``: some row of ``pts`` dominates row ``j`` (all finite)."""
    n = len(pts)
    dominated = np.zeros(n, dtype=bool)
    for start in range(0, n, _BLOCK):
        a = pts[start : start + _BLOCK, None, :]  # candidates that might dominate
        le = np.all(a <= pts[None, :, :], axis=2)
        lt = np.any(a < pts[None, :, :], axis=2)
        dominated |= np.any(le & lt, axis=0)
    return dominated


def nondominated_rank(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Non-dominated sorting (NSGA-II): the front index of every point, 0 = Pareto front.

    Minimisation in every column. Rows containing NaN get rank ``-1``.

    Example:
        >>> nondominated_rank([[1, 4], [2, 2], [3, 3], [4, 4], [1, 4]]).tolist()
        [0, 0, 1, 2, 0]
    """
    pts = _as_points(points)
    n = len(pts)
    rank = np.full(n, -1, dtype=int)
    finite = np.flatnonzero(np.all(np.isfinite(pts), axis=1))
    if not len(finite):
        return rank
    valid = pts[finite]
    # dom[i, j]: i dominates j. Count how many dominate each point, then peel fronts.
    counts = np.zeros(len(valid), dtype=int)
    dom_rows = []
    for start in range(0, len(valid), _BLOCK):
        a = valid[start : start + _BLOCK, None, :]
        dom = np.all(a <= valid[None], axis=2) & np.any(a < valid[None], axis=2)
        dom_rows.append(dom)
        counts += dom.sum(axis=0)
    dom_all = np.concatenate(dom_rows, axis=0)
    sub_rank = np.full(len(valid), -1, dtype=int)
    current = np.flatnonzero(counts == 0)
    level = 0
    while len(current):
        sub_rank[current] = level
        counts -= dom_all[current].sum(axis=0)
        counts[current] = -1  # never selected again
        current = np.flatnonzero(counts == 0)
        level += 1
    rank[finite] = sub_rank
    return rank


def crowding_distance(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """NSGA-II crowding distance of the points of one front.

    For each objective the points are sorted; the extreme points get ``inf``
    and an inner point adds ``(next - previous) / (max - min)`` of its
    neighbours. An objective with no spread (max == min) adds nothing. Exact
    duplicates share the distance of the first of them in sort order, so a
    duplicate never looks more isolated than its twin. Direction does not
    matter (the distance is symmetric), so it may be called on minimisation
    or raw points.

    Example:
        >>> crowding_distance([[0, 4], [1, 2], [2, 1], [4, 0]]).tolist()
        [inf, 1.25, 1.25, inf]
    """
    pts = _as_points(points)
    n, m = pts.shape
    dist = np.zeros(n, dtype=float)
    if n <= 2:
        dist[:] = np.inf
        return dist
    for j in range(m):
        order = np.argsort(pts[:, j], kind="stable")
        col = pts[order, j]
        span = col[-1] - col[0]
        dist[order[0]] = np.inf
        dist[order[-1]] = np.inf
        if span <= 0 or not np.isfinite(span):
            continue
        dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    # Exact duplicates: give every copy the smallest distance among its copies.
    _, inverse = np.unique(pts, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    smallest = np.full(inverse.max() + 1, np.inf)
    np.minimum.at(smallest, inverse, dist)
    return smallest[inverse]


def hypervolume_points(points: np.ndarray | Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Exact hypervolume dominated by minimisation ``points`` and bounded by ``ref``.

    Points that are not strictly better than ``ref`` in every objective add no
    volume and are ignored (Optuna raises on them instead), as are rows with
    NaN. 1-D and 2-D by a sweep, higher dimensions by slicing along the last
    objective (exact; meant for 2-3 objectives, exponential in general).

    Example:
        >>> hypervolume_points([[1, 3], [2, 2], [3, 1]], ref=[4, 4])
        6.0
    """
    pts = _as_points(points)
    r = np.asarray(ref, dtype=float).reshape(-1)
    if pts.shape[1] != len(r):
        raise ValueError(f"ref has {len(r)} coordinates but the points have {pts.shape[1]} objectives")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"ref must be finite; got {r.tolist()}")
    keep = np.all(np.isfinite(pts), axis=1) & np.all(pts < r, axis=1)
    pts = pts[keep]
    if not len(pts):
        return 0.0
    pts = np.unique(pts, axis=0)
    pts = pts[~_dominated_within(pts)]
    return float(_hv(pts, r))


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of mutually non-dominated points, all strictly inside ``ref``."""
    m = pts.shape[1]
    if m == 1:
        return float(ref[0] - pts[:, 0].min())
    if m == 2:
        return _hv2d(pts, ref)
    # Slice along the last objective: between consecutive levels z_i < z_{i+1}
    # the cross-section is the (m-1)-D volume of the points with z <= z_i.
    order = np.argsort(pts[:, -1], kind="stable")
    pts = pts[order]
    levels = np.append(pts[:, -1], ref[-1])
    total = 0.0
    i = 0
    n = len(pts)
    while i < n:
        j = i
        while j + 1 < n and pts[j + 1, -1] == pts[i, -1]:
            j += 1
        height = levels[j + 1] - pts[j, -1]
        if height > 0:
            section = pts[: j + 1, :-1]
            section = np.unique(section, axis=0)
            section = section[~_dominated_within(section)]
            total += _hv(section, ref[:-1]) * height
        i = j + 1
    return total


def _hv2d(pts: np.ndarray, ref: np.ndarray) -> float:
    """2-D sweep: sort by the first objective, add the strip each point opens."""
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    x = pts[order, 0]
    y = pts[order, 1]
    # Running best y: a point adds area only where it lowers it.
    best = np.minimum.accumulate(y)
    prev = np.concatenate(([ref[1]], best[:-1]))
    widths = ref[0] - x
    return float(np.sum(widths * np.maximum(prev - best, 0.0)))


# --------------------------------------------------------------------------- DataFrame layer
def pareto_front(
    df: pd.DataFrame,
    objectives: Objectives = None,
    by: str | Sequence[str] | None = None,
    states: Sequence[str] | None = (COMPLETE,),
) -> pd.DataFrame:
    """The non-dominated rows of a trials table.

    Args:
        df: one row per trial (e.g. :func:`lmsearch.load_results`).
        objectives: ``{column: "max"|"min"}`` or ``[(column, direction), ...]``;
            default ``{"val_acc": "max", "params": "min"}``. Any number.
        by: a column (or columns), e.g. ``"scheme"``: one front per group,
            concatenated in group order.
        states: where a ``state`` column exists, only rows in these states
            take part (default COMPLETE only, so pruned, failed and running
            trials are excluded); ``None`` keeps every row.

    Returns:
        The front rows with their original index and all columns, sorted by
        the first objective best first (ties by the next objectives). Rows
        with identical objective vectors on the front are all kept; rows with
        NaN in an objective are excluded.

    Example:
        >>> df = pd.DataFrame({"scheme": ["lm", "lm", "euler", "euler"],
        ...                    "val_acc": [0.9, 0.8, 0.85, 0.95], "params": [10, 20, 5, 50]})
        >>> pareto_front(df, by="scheme")[["scheme", "val_acc"]].values.tolist()
        [['euler', 0.95], ['euler', 0.85], ['lm', 0.9]]
    """
    objs = normalize_objectives(objectives)
    if by is not None:
        keys = [by] if isinstance(by, str) else list(by)
        missing = [k for k in keys if k not in df.columns]
        if missing:
            raise KeyError(f"by column(s) {missing} not in the table")
        parts = [
            pareto_front(group, objs, by=None, states=states)
            for _, group in df.groupby(keys if len(keys) > 1 else keys[0], sort=True, dropna=False, observed=True)
        ]
        parts = [p for p in parts if len(p)]
        return pd.concat(parts) if parts else df.iloc[:0]
    points = objective_matrix(df, objs)
    eligible = np.flatnonzero(_eligible(df, points, states))
    if not len(eligible):
        return df.iloc[:0]
    on_front = eligible[~_dominated_within(points[eligible])]
    front_pts = points[on_front]
    # Best first on the first objective, then the next ones; stable for full ties.
    order = np.lexsort(tuple(front_pts[:, j] for j in reversed(range(front_pts.shape[1]))))
    return df.iloc[on_front[order]]


def hypervolume(
    df: pd.DataFrame,
    ref: Mapping[str, float] | Sequence[float],
    objectives: Objectives = None,
    states: Sequence[str] | None = (COMPLETE,),
) -> float:
    """Hypervolume of a trials table's objectives with respect to ``ref``.

    ``ref`` is given in the objectives' own units and directions, as a
    mapping ``{column: value}`` or a sequence in the order of ``objectives``
    (e.g. ``{"val_acc": 0.0, "params": 5e6}``: at least 0 accuracy, at most 5M
    parameters). Maximised objectives are negated internally, so the value
    agrees with Optuna's minimisation-based hypervolume on flipped points.
    Rows that do not beat ``ref`` in every objective add nothing; the same
    rows as in :func:`pareto_front` are excluded (NaN, not COMPLETE).

    Example:
        >>> df = pd.DataFrame({"val_acc": [0.5, 0.8], "params": [1.0, 3.0]})
        >>> hypervolume(df, ref={"val_acc": 0.0, "params": 4.0})
        1.8
    """
    objs = normalize_objectives(objectives)
    if isinstance(ref, Mapping):
        missing = [c for c, _ in objs if c not in ref]
        if missing:
            raise KeyError(f"ref has no value for objective(s) {missing}")
        ref_values = [float(ref[c]) for c, _ in objs]
    else:
        ref_values = [float(v) for v in ref]
        if len(ref_values) != len(objs):
            raise ValueError(f"ref has {len(ref_values)} values for {len(objs)} objectives {[c for c, _ in objs]}")
    ref_min = np.array([-v if d == "max" else v for v, (_, d) in zip(ref_values, objs, strict=True)])
    points = objective_matrix(df, objs)
    points = points[_eligible(df, points, states)]
    return hypervolume_points(points, ref_min)


# --------------------------------------------------------------------------- seeds as replicates
#: Metrics :func:`aggregate_seeds` averages (each gets ``<name>_sem`` beside it).
SEED_METRICS = ("val_acc", "val_loss", "test_acc", "wall_time_s")


def _recipe_without_seed(train_json: object) -> str:
    if not isinstance(train_json, str) or not train_json:
        return ""
    recipe = json.loads(train_json)
    recipe.pop("seed", None)
    return json.dumps(recipe, sort_keys=True)


def _replicate_keys(df: pd.DataFrame) -> pd.DataFrame:
    """What makes two trials replicates: experiment, architecture, recipe without its seed, budget, data."""
    keys = pd.DataFrame(index=df.index)
    for column in ("experiment", "arch_json", "epochs", "dataset"):
        if column in df.columns:
            keys[column] = df[column].astype(object).fillna("")
    if "train_json" in df.columns:
        keys["recipe"] = [_recipe_without_seed(v) for v in df["train_json"].astype(object)]
    if "arch_json" not in keys.columns:
        raise KeyError("aggregate_seeds needs the arch_json column of a trials table (lmsearch.load_results)")
    return keys


def repeats_seeds(df: pd.DataFrame, states: Sequence[str] | None = (COMPLETE,)) -> bool:
    """Whether a trials table holds some architecture (and recipe) under more than one seed."""
    if "arch_json" not in df.columns or not len(df):
        return False
    rows = df if states is None or "state" not in df.columns else df[df["state"].astype(object).isin(states)]
    return bool(len(rows)) and bool(_replicate_keys(rows).duplicated().any())


def front_table(df: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """The table a front is read from, and whether it is over seed means.

    Seeds are replicates: where a trials table repeats an architecture under several
    seeds, fronts are over the architectures' means (:func:`aggregate_seeds`), else over
    the trials themselves. ``lmsearch pareto`` and a search's summary both use this.
    """
    replicated = repeats_seeds(df)
    return (aggregate_seeds(df) if replicated else df), replicated


def aggregate_seeds(df: pd.DataFrame, states: Sequence[str] | None = (COMPLETE,)) -> pd.DataFrame:
    """One row per architecture and recipe, its seeds taken as replicates.

    ``df`` is a trials table (:func:`lmsearch.load_results`, one row per trial);
    trials that differ only in their seed are one group. Each row keeps the
    first trial's columns (architecture, params, ...), with ``seed`` replaced
    by ``seeds`` (the sorted list), plus ``n`` (trials in the group), and for
    each of :data:`SEED_METRICS` present the mean (under the metric's own name)
    and ``<metric>_sem``, the standard error of that mean (NaN when n = 1).
    ``trial_id`` lists the group's trial ids joined by ``+``. Only trials in
    ``states`` count (default COMPLETE). :func:`pareto_front` and
    :func:`hypervolume` accept the result as they accept a trials table.

    Example:
        >>> df = pd.DataFrame({"trial_id": ["a", "b", "c"], "state": "COMPLETE",
        ...                    "arch_json": ['{"depth": 20}', '{"depth": 20}', '{"depth": 32}'],
        ...                    "train_json": ['{"seed": 1}', '{"seed": 2}', '{"seed": 1}'],
        ...                    "seed": [1, 2, 1], "params": [10, 10, 16], "val_acc": [0.75, 0.85, 0.9]})
        >>> agg = aggregate_seeds(df)
        >>> agg[["trial_id", "n", "seeds", "val_acc"]].values.tolist()
        [['a+b', 2, [1, 2], 0.8], ['c', 1, [1], 0.9]]
    """
    rows = df if states is None or "state" not in df.columns else df[df["state"].astype(object).isin(states)]
    if not len(rows):
        out = rows.iloc[:0].copy()
        out["n"] = pd.Series(dtype="int64")
        return out
    keys = _replicate_keys(rows)
    groups = rows.groupby([keys[c] for c in keys.columns], sort=False, dropna=False).indices
    out = []
    for positions in groups.values():
        group = rows.iloc[sorted(positions)]
        if "seed" in group.columns:  # the same seed twice is one run (training is deterministic), not two replicates
            group = group[~(group["seed"].notna() & group["seed"].duplicated(keep="last")).to_numpy(dtype=bool)]
        first = group.iloc[0].to_dict()
        first["n"] = len(group)
        if "trial_id" in group.columns:
            first["trial_id"] = "+".join(str(t) for t in group["trial_id"])
        if "seed" in group.columns:
            first["seeds"] = sorted(int(v) for v in group["seed"].dropna())
            first.pop("seed")
        for metric in SEED_METRICS:
            if metric in group.columns:
                values = pd.to_numeric(group[metric], errors="coerce").astype(float).dropna()
                first[metric] = float(values.mean()) if len(values) else np.nan
                first[f"{metric}_sem"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 \
                    else np.nan
        out.append(first)
    result = pd.DataFrame(out)
    result.attrs = dict(df.attrs)
    return result
