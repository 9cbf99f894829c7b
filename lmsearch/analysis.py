"""What a search's results mean: learned LM coefficients and the compression table.

**Modified equation of an LM step.** An LM-ResNet step is the linear two-step
scheme

    x_{n+1} = (1 - k_n) x_n + k_n x_{n-1} + dt f(x_n).

Expanding x_{n+1} and x_{n-1} around t_n with x_{n+-1} = u +- dt u' + dt^2/2 u''
gives x_{n+1} - (1 - k) x_n - k x_{n-1} = (x_{n+1} - x_n) + k (x_n - x_{n-1})
= dt [(1 + k) u' + (1 - k) dt/2 u''] + O(dt^3), so the step is consistent with

    (1 + k_n) u' + (1 - k_n) dt/2 u'' = f(u)          (Lu et al., 2018, eq. 5)

a second-order ("momentum") ODE. :func:`lm_coefficients` reports, per LM
step, ``first_order = 1 + k_n`` and ``second_order = (1 - k_n) dt / 2``.
In the network ``dt`` is absorbed into f, so the default ``dt = 1`` reads the
coefficients in units of one step. k_n = 0 is the ResNet (forward Euler) step
plus the dt/2 u'' term every first-order scheme carries.

**Compression table.** :func:`compression_table` turns a grid search over
scheme x depth x seed into the paper's table (see its docstring for the exact
rule) and :func:`monotonicity` checks the precondition that makes it
meaningful: ResNet accuracy must rise with depth by more than seed noise.
:func:`interpolated_compression` places every LM net on ResNet's
accuracy-vs-log(params) curve, with a bootstrap interval over seeds, and
:func:`compression_verdict` reads the paper's claim off it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from lmsearch.states import COMPLETE

__all__ = ["lm_coefficients", "lm_steps", "experiment_lm_coefficients", "lm_coefficients_by_depth",
           "compression_table", "monotonicity", "power_check",
           "family_of", "matched_params", "interpolated_compression", "compression_verdict"]


# =========================================================================== LM coefficients
def _lm_class() -> type | None:
    try:
        from lmsearch.nn.registry import get_scheme

        return get_scheme("lm")
    except (ImportError, ValueError):
        return None


def _own_k(module: Any) -> Any:
    params = getattr(module, "_parameters", {})
    return params.get("k") if isinstance(params, dict) else None


def _position(name: str, module: Any) -> tuple[int, int]:
    """(stage, step) from the module's attributes, else from integers in its name."""
    stage = getattr(module, "stage", getattr(module, "stage_index", None))
    step = getattr(module, "step", getattr(module, "step_index", None))
    if isinstance(stage, int) and isinstance(step, int):
        return stage, step
    numbers = [int(n) for n in re.findall(r"\d+", name)]
    if len(numbers) >= 2:
        return numbers[0], numbers[-1]
    return 0, numbers[-1] if numbers else 0


def lm_steps(model: Any) -> list[tuple[str, Any]]:
    """``(qualified name, module)`` of every LM step of ``model``, in forward order.

    An LM step is a module carrying its own parameter named ``k`` whose class
    is (a subclass of) the class registered as scheme ``"lm"``; when no module
    is of that class (e.g. a model from elsewhere), every module owning a
    parameter ``k`` counts.
    """
    lm_cls = _lm_class()
    with_k = [(name, m) for name, m in model.named_modules() if _own_k(m) is not None]
    if lm_cls is not None:
        typed = [(name, m) for name, m in with_k if isinstance(m, lm_cls)]
        if typed:
            return typed
    return with_k


_COEFFICIENT_COLUMNS = ["name", "stage", "step", "index", "k", "k_min", "k_max", "k_std", "n_k", "first_order",
                        "second_order"]


def lm_coefficients(model: Any, dt: float = 1.0) -> pd.DataFrame:
    """The learned k_n of every LM step and its modified-equation coefficients.

    Columns: ``name`` (module path), ``stage``, ``step`` (within the stage),
    ``index`` (0, 1, ... over all LM steps in depth order), ``k`` (k_n; the
    mean when k is per channel), ``k_min``, ``k_max``, ``k_std`` (0 for a
    scalar), ``n_k`` (number of coefficients), ``first_order`` = 1 + k_n,
    ``second_order`` = (1 - k_n) dt / 2 (both from the mean k_n). Each
    stage's first step is a plain Euler step with no k_n and is not listed.

    Example:
        >>> import torch
        >>> class Step(torch.nn.Module):
        ...     def __init__(self, k):
        ...         super().__init__()
        ...         self.k = torch.nn.Parameter(torch.tensor(k))
        >>> net = torch.nn.Sequential(Step(-0.05), Step(0.5))
        >>> lm_coefficients(net)[["index", "k", "first_order", "second_order"]].round(3).values.tolist()
        [[0.0, -0.05, 0.95, 0.525], [1.0, 0.5, 1.5, 0.25]]
    """
    rows = []
    for index, (name, module) in enumerate(lm_steps(model)):
        k = _own_k(module).detach().double().cpu().reshape(-1).numpy()
        stage, step = _position(name, module)
        mean = float(k.mean())
        rows.append({
            "name": name,
            "stage": stage,
            "step": step,
            "index": index,
            "k": mean,
            "k_min": float(k.min()),
            "k_max": float(k.max()),
            "k_std": float(k.std()) if k.size > 1 else 0.0,
            "n_k": int(k.size),
            "first_order": 1.0 + mean,
            "second_order": (1.0 - mean) * dt / 2.0,
        })
    out = pd.DataFrame(rows, columns=_COEFFICIENT_COLUMNS)
    return out.astype({"stage": "int64", "step": "int64", "index": "int64", "n_k": "int64"})


def experiment_lm_coefficients(exp_dir: Any, states: tuple[str, ...] = (COMPLETE,)) -> pd.DataFrame:
    """:func:`lm_coefficients` of every LM trial of an experiment whose final weights are on disk.

    One row per trial and LM step: the trial's ``trial_id``, ``number``,
    ``depth``, ``width``, ``noise``, ``seed`` and ``test_acc`` columns, then the
    coefficient columns. Weights are looked up as ``lmsearch export`` does
    (``exp_dir/weights/<id>/`` or the trial's last Ray checkpoint); trials
    without weights on disk (e.g. a committed experiment without its ``ray/``)
    are left out and listed in ``df.attrs["missing"]``, and trials whose weights cannot be read
    (damaged, a Git LFS pointer) in ``df.attrs["unreadable"]`` (trial id -> why); ``df.attrs["read"]``
    lists the trials read (an LM net with one step per stage has none to show).

    Example (a committed experiment has no weights, only its tables):
        >>> k = experiment_lm_coefficients("results/compression-fashion-mnist/cpu")
        >>> len(k), len(k.attrs["missing"])
        (0, 9)
    """
    from lmsearch.archfile import load_architecture
    from lmsearch.export import find_trial_weights
    from lmsearch.results import load_results

    trials = load_results(exp_dir)
    lm = trials[(trials["scheme"] == "lm") & trials["state"].isin(states)]
    keep = [c for c in ("experiment", "trial_id", "number", "depth", "width", "params", "noise", "seed", "test_acc",
                        "lm_k_init") if c in lm.columns]
    frames, missing, unreadable, read = [], [], {}, []
    for row in lm.itertuples(index=False):
        weights = find_trial_weights(exp_dir, row.trial_id)
        if weights is None:
            missing.append(row.trial_id)
            continue
        try:
            coefficients = lm_coefficients(load_architecture(weights))
        except (OSError, ValueError, RuntimeError) as exc:  # one damaged file must not hide the others
            unreadable[row.trial_id] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            continue
        read.append(row.trial_id)
        for col in reversed(keep):
            coefficients.insert(0, col, getattr(row, col))
        frames.append(coefficients)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=keep + _COEFFICIENT_COLUMNS)
    out.attrs.update(missing=missing, unreadable=unreadable, read=read)
    return out


_BY_DEPTH_COLUMNS = ["family", "depth", "width", "params", "trials", "steps", "k_mean", "k_sem", "k_min", "k_max",
                     "outside_init", "first_order", "second_order"]
_INIT_TOLERANCE = 1e-6  # weights are float32: an init bound such as -0.1 is stored a few 1e-9 away from itself


def _init_range(text: Any) -> tuple[float, float]:
    """``lm_k_init`` as written in trials.csv (``"[-0.1, 0.0]"``); (nan, nan) for anything else."""
    try:
        low, high = (float(v) for v in json.loads(text))
    except (TypeError, ValueError):  # not JSON, not a pair, not numbers
        return math.nan, math.nan
    return low, high


def lm_coefficients_by_depth(coefficients: pd.DataFrame) -> pd.DataFrame:
    """The learned k_n of :func:`experiment_lm_coefficients` summed up per LM net, over its seeds.

    A net is a (family, depth, width, params) as in :func:`compression_table` (width and params
    when the columns are there); a trial is a (experiment, trial_id). Columns: ``family``
    (``lm``, or ``lm+<noise>``), ``depth``, ``width``, ``params`` (NaN without the column),
    ``trials``, ``steps`` (k_n rows: LM steps x trials), ``k_mean`` (the mean of the trials'
    mean k_n), ``k_sem`` (its standard error over the trials; NaN for one trial), ``k_min``,
    ``k_max`` (over steps and, for per-channel k, channels), ``outside_init`` (steps with a k
    that left its initial range ``lm_k_init``, within float32 rounding; NaN when a trial's range
    is unknown), and the modified-equation coefficients of ``k_mean``: ``first_order`` = 1 + k,
    ``second_order`` = (1 - k) / 2.

    Example:
        >>> k = pd.DataFrame({"trial_id": ["a", "a", "b", "b"], "depth": 20, "noise": "none",
        ...                   "lm_k_init": "[-0.1, 0.0]", "k": [-0.05, 0.3, 0.1, -0.2]})
        >>> row = lm_coefficients_by_depth(k).iloc[0].to_dict()
        >>> [row["trials"], row["outside_init"]], [round(float(row[c]), 4) for c in ("k_mean", "first_order")]
        ([2, 3], [0.0375, 1.0375])
    """
    if not len(coefficients):
        return pd.DataFrame(columns=_BY_DEPTH_COLUMNS)
    data = coefficients.copy()
    noise = data["noise"] if "noise" in data.columns else pd.Series([None] * len(data), index=data.index)
    data["family"] = [family_of("lm", n) for n in noise.astype(object)]
    for col in ("width", "params", "experiment"):
        if col not in data.columns:
            data[col] = math.nan
    data["k"] = data["k"].astype(float)
    low_k = data["k_min"].astype(float) if "k_min" in data.columns else data["k"]
    high_k = data["k_max"].astype(float) if "k_max" in data.columns else data["k"]
    bounds = ([_init_range(v) for v in data["lm_k_init"]] if "lm_k_init" in data.columns
              else [(math.nan, math.nan)] * len(data))
    low = np.array([b[0] for b in bounds], dtype=float)
    high = np.array([b[1] for b in bounds], dtype=float)
    left = (low_k.to_numpy() < low - _INIT_TOLERANCE) | (high_k.to_numpy() > high + _INIT_TOLERANCE)
    data["_out"] = np.where(np.isnan(low) | np.isnan(high), np.nan, left)
    data["_low"], data["_high"] = low_k, high_k
    rows = []
    keys = ["family", "depth", "width", "params"]
    for key, group in data.groupby(keys, sort=True, dropna=False):
        per_trial = group.groupby(["experiment", "trial_id"], dropna=False)["k"].mean()
        mean = float(per_trial.mean())
        out = group["_out"]
        rows.append({
            **dict(zip(keys, key, strict=True)), "trials": len(per_trial), "steps": len(group), "k_mean": mean,
            "k_sem": float(per_trial.std(ddof=1) / math.sqrt(len(per_trial))) if len(per_trial) > 1 else math.nan,
            "k_min": float(group["_low"].min()), "k_max": float(group["_high"].max()),
            "outside_init": int(out.sum()) if out.notna().all() else math.nan,
            "first_order": 1.0 + mean, "second_order": (1.0 - mean) / 2.0,
        })
    return pd.DataFrame(rows, columns=_BY_DEPTH_COLUMNS)


# =========================================================================== compression
def family_of(scheme: Any, noise: Any = None) -> str:
    """Row family of a net: the scheme, plus ``+noise`` when it has a noise term.

    Example:
        >>> family_of("lm", "stochastic_depth"), family_of("euler", "none")
        ('lm+stochastic_depth', 'euler')
    """
    if noise is None or (isinstance(noise, float) and math.isnan(noise)) or noise is pd.NA or noise in ("", "none"):
        return str(scheme)
    return f"{scheme}+{noise}"


def _finished(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    missing = [c for c in ("scheme", "depth", "params", metric) if c not in df.columns]
    if missing:
        raise KeyError(f"compression_table needs column(s) {missing}; the table has {list(df.columns)}")
    out = df
    if "state" in out.columns:
        out = out[out["state"].astype(object).eq(COMPLETE).to_numpy(dtype=bool)]
    values = pd.to_numeric(out[metric], errors="coerce")
    params = pd.to_numeric(out["params"], errors="coerce")
    return out[(values.notna() & params.notna()).to_numpy(dtype=bool)]


def compression_table(
    df: pd.DataFrame,
    metric: str = "test_acc",
    baseline: str = "euler",
    compressed: str = "lm",
    by_noise: bool = True,
) -> pd.DataFrame:
    """The paper's compression table from a trials table (one row per trial and seed).

    Rows: one per (family, depth, width, params), where the family is the
    scheme, or ``scheme+noise`` when ``by_noise`` and the net has a noise term
    (so "lm + stochastic depth" is its own family). Only COMPLETE trials with
    a value of ``metric`` count. Columns:

    * ``family``, ``scheme``, ``noise`` (if present and ``by_noise``), ``depth``, ``width``
      (if present), ``params``;
    * ``n``: trials (seeds) in the row; ``acc_mean``, ``acc_std`` (sample std,
      ddof=1; NaN for n = 1), ``acc_sem`` = acc_std / sqrt(n): the standard
      error of the mean; ``err_mean`` = 1 - acc_mean, ``err_std`` = acc_std;
    * on ``baseline`` rows (``family == "euler"``): ``threshold`` =
      acc_mean - acc_sem of that ResNet (its own standard error; acc_mean
      when n = 1), and for every family F of scheme ``compressed``:
      ``match_depth:F``, ``match_params:F``: the smallest-params net of F whose
      acc_mean >= threshold (ties: the shallower), and ``ratio:F`` =
      match_params / ResNet params (NaN when no net of F qualifies). A ratio
      of 0.5 means an LM net with half the parameters matches the ResNet.

    Rows are sorted: baseline first, then the compressed families, then any
    other, each by depth and params.

    Example:
        >>> df = pd.DataFrame({"scheme": ["euler"] * 4 + ["lm"] * 2, "depth": [20, 20, 32, 32, 20, 20],
        ...                    "params": [10, 10, 16, 16, 11, 11],
        ...                    "test_acc": [0.80, 0.82, 0.86, 0.88, 0.86, 0.87]})
        >>> t = compression_table(df)
        >>> t[["family", "depth", "n", "ratio:lm"]].values.tolist()
        [['euler', 20, 2, 1.1], ['euler', 32, 2, 0.6875], ['lm', 20, 2, nan]]
    """
    data = _finished(df, metric).copy()
    noise = data["noise"] if ("noise" in data.columns and by_noise) else pd.Series([None] * len(data), index=data.index)
    data["family"] = [family_of(s, n) for s, n in zip(data["scheme"].astype(object), noise.astype(object), strict=True)]
    data["_acc"] = pd.to_numeric(data[metric], errors="coerce").astype(float)
    keys = ["family", "scheme"] + (["noise"] if "noise" in data.columns and by_noise else []) + ["depth"]
    keys += (["width"] if "width" in data.columns else []) + ["params"]
    for key in keys:
        data[key] = data[key].astype(object)
    grouped = data.groupby(keys, sort=False, dropna=False)["_acc"]
    table = grouped.agg(n="count", acc_mean="mean", acc_std=lambda s: s.std(ddof=1)).reset_index()
    table["acc_sem"] = table["acc_std"] / np.sqrt(table["n"].astype(float))
    table["err_mean"] = 1.0 - table["acc_mean"]
    table["err_std"] = table["acc_std"]

    families = list(dict.fromkeys(table["family"]))
    lm_families = sorted(f for f in families if f.split("+")[0] == compressed)
    rank = {f: i for i, f in enumerate([baseline, *lm_families])}
    table["_rank"] = [rank.get(f, len(rank)) for f in table["family"]]
    table = table.sort_values(["_rank", "family", "depth", "params"], kind="stable").drop(columns="_rank")
    table = table.reset_index(drop=True)

    is_base = (table["family"] == baseline).to_numpy()
    sem = table["acc_sem"].fillna(0.0)
    table["threshold"] = np.where(is_base, table["acc_mean"] - sem, np.nan)
    for fam in lm_families:
        cands = table[table["family"] == fam]
        match_depth: list[Any] = []
        match_params: list[Any] = []
        ratio: list[float] = []
        for base, threshold, params in zip(is_base, table["threshold"], table["params"], strict=True):
            ok = cands[cands["acc_mean"] >= threshold - 1e-12] if base else cands.iloc[:0]
            if len(ok):
                best = ok.sort_values(["params", "depth"], kind="stable").iloc[0]
                match_depth.append(best["depth"])
                match_params.append(best["params"])
                ratio.append(float(best["params"]) / float(params))
            else:
                match_depth.append(pd.NA)
                match_params.append(pd.NA)
                ratio.append(np.nan)
        table[f"match_depth:{fam}"] = pd.array(match_depth, dtype="Int64")
        table[f"match_params:{fam}"] = pd.array(match_params, dtype="Int64")
        table[f"ratio:{fam}"] = np.array(ratio, dtype=float)

    for key in ("depth", "width", "params"):
        if key in table.columns:
            table[key] = pd.to_numeric(table[key]).astype("int64") if table[key].notna().all() else table[key]
    for key in ("family", "scheme", "noise"):
        if key in table.columns:
            table[key] = table[key].astype("string")
    table["n"] = table["n"].astype("int64")
    return table


def monotonicity(
    df: pd.DataFrame, metric: str = "test_acc", family: str = "euler"
) -> pd.DataFrame:
    """Does ``family``'s mean accuracy rise with depth by more than the seed spread?

    ``df`` is a trials table or a :func:`compression_table`. One row per pair
    of consecutive depths (by params where a depth appears with several
    widths): ``depth_from``, ``depth_to``, ``acc_from``, ``acc_to``,
    ``gain`` = acc_to - acc_from, ``spread`` = the larger of the two
    seed-to-seed standard deviations (acc_std), and ``rises`` = gain > spread
    (False when a spread is unknown, i.e. a single seed). The compression
    table is meaningful only where ``rises.all()``.

    Example:
        >>> df = pd.DataFrame({"scheme": ["euler"] * 4, "depth": [20, 20, 32, 32], "params": [1, 1, 2, 2],
        ...                    "test_acc": [0.80, 0.82, 0.86, 0.88]})
        >>> monotonicity(df)[["depth_from", "depth_to", "rises"]].values.tolist()
        [[20, 32, True]]
    """
    table = df if "acc_mean" in df.columns else compression_table(df, metric=metric)
    rows = table[table["family"].astype(object) == family].sort_values(["depth", "params"], kind="stable")
    out = []
    for a, b in zip(rows.iloc[:-1].itertuples(index=False), rows.iloc[1:].itertuples(index=False), strict=True):
        spread = max(a.acc_std, b.acc_std) if not (pd.isna(a.acc_std) or pd.isna(b.acc_std)) else np.nan
        gain = b.acc_mean - a.acc_mean
        out.append({
            "depth_from": int(a.depth), "depth_to": int(b.depth), "acc_from": a.acc_mean, "acc_to": b.acc_mean,
            "gain": gain, "spread": spread, "rises": bool(not pd.isna(spread) and gain > spread),
        })
    columns = ["depth_from", "depth_to", "acc_from", "acc_to", "gain", "spread", "rises"]
    return pd.DataFrame(out, columns=columns).astype({"rises": bool})


def power_check(table: pd.DataFrame, baseline: str = "euler", fraction: float = 1 / 3) -> pd.DataFrame:
    """Are there seeds enough? Every net's standard error against ``fraction`` of the baseline's gain.

    ``table`` is a :func:`compression_table`. The baseline's gain is the mean accuracy of its
    largest net (by params) minus that of its smallest; the limit is ``fraction`` x gain. One row
    per net (every family): ``family``, ``depth``, ``params``, ``n``, ``acc_std``, ``acc_sem``,
    ``limit``, ``powered`` (acc_sem <= limit; False for one seed, whose error is unknown, and for
    every net when the gain is not positive: then no seed count can resolve the comparison) and
    ``seeds_needed`` = ceil((acc_std / limit)^2), at least 2 and at least n (NaN when unknown).
    ``attrs["gain"]`` and ``attrs["limit"]`` hold the two numbers.

    Example:
        >>> t = pd.DataFrame({"family": ["euler", "euler", "lm"], "depth": [20, 56, 20], "params": [1, 4, 1],
        ...                   "n": [3, 3, 3], "acc_mean": [0.90, 0.93, 0.92], "acc_std": [0.003, 0.003, 0.03]})
        >>> t["acc_sem"] = t["acc_std"] / np.sqrt(t["n"])
        >>> power_check(t)[["family", "powered", "seeds_needed"]].values.tolist()
        [['euler', True, 3], ['euler', True, 3], ['lm', False, 9]]
    """
    columns = ["family", "depth", "params", "n", "acc_std", "acc_sem", "limit", "powered", "seeds_needed"]
    base = table[table["family"].astype(object) == baseline].sort_values("params", kind="stable")
    gain = float(base["acc_mean"].iloc[-1] - base["acc_mean"].iloc[0]) if len(base) > 1 else math.nan
    limit = fraction * gain if gain > 0 else math.nan
    rows = []
    for row in table.itertuples(index=False):
        known = not (pd.isna(row.acc_std) or pd.isna(limit))
        rows.append({
            "family": row.family, "depth": row.depth, "params": row.params, "n": int(row.n),
            "acc_std": row.acc_std, "acc_sem": row.acc_sem, "limit": limit,
            "powered": bool(known and row.acc_sem <= limit),
            "seeds_needed": max(2, int(row.n), math.ceil((row.acc_std / limit) ** 2 - 1e-9)) if known else math.nan,
        })
    out = pd.DataFrame(rows, columns=columns)
    out.attrs.update(gain=gain, limit=limit)
    return out


# =========================================================================== interpolated compression
def matched_params(acc: float, params: np.ndarray, means: np.ndarray) -> tuple[float, str]:
    """The baseline parameter count whose accuracy equals ``acc`` on the curve ``(params, means)``.

    The curve is piecewise linear in log(params) through the baseline's mean
    accuracies, sorted by params; the first crossing walking up in params counts.
    Returns ``(P*, bound)``: ``bound`` is ``""`` for an interpolated value, ``">="``
    when ``acc`` is above every point (P* is then at least the largest params) and
    ``"<="`` when it is below the smallest net (P* at most the smallest params).

    Example:
        >>> matched_params(0.85, np.array([100.0, 400.0]), np.array([0.80, 0.90]))
        (200.0, '')
        >>> matched_params(0.95, np.array([100.0, 400.0]), np.array([0.80, 0.90]))
        (400.0, '>=')
    """
    if acc < means[0]:
        return float(params[0]), "<="
    if acc == means[0]:
        return float(params[0]), ""
    above = np.flatnonzero(means >= acc)
    if not len(above):
        return float(params[-1]), ">="
    j = int(above[0])
    t = (acc - means[j - 1]) / (means[j] - means[j - 1])
    log_p = np.log(params[j - 1]) + t * (np.log(params[j]) - np.log(params[j - 1]))
    return float(np.round(np.exp(log_p), 6)), ""


def _seed_values(data: pd.DataFrame, keys: list[str]) -> list[tuple[tuple, np.ndarray]]:
    return [(key if isinstance(key, tuple) else (key,), group["_acc"].to_numpy(dtype=float))
            for key, group in data.groupby(keys, sort=True, dropna=False)]


def interpolated_compression(
    df: pd.DataFrame,
    metric: str = "test_acc",
    baseline: str = "euler",
    compressed: str = "lm",
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Every ``compressed`` net placed on the ``baseline``'s accuracy-vs-log(params) curve.

    ``df`` is a trials table with one row per trial and seed (``load_results``);
    only COMPLETE trials with a value of ``metric`` count. The baseline curve runs
    through the mean accuracy of each baseline net (one point per depth/width).
    For each net of a family of scheme ``compressed`` (``lm``, ``lm+stochastic_depth``,
    ...), one row:

    * ``family, depth, width, params, n, acc_mean, acc_sem``;
    * ``matched_params``: the baseline parameter count with the same mean accuracy
      (:func:`matched_params`), ``bound``: ``""``, ``">="`` or ``"<="`` (beyond the curve);
    * ``compression`` = 1 - params / matched_params (0.5: half the parameters);
    * ``ci_low``, ``ci_high``: the ``confidence`` percentile interval of the compression
      over ``n_boot`` bootstrap resamples of the seeds of every net (baseline and
      compressed, each with replacement), the matching redone in each resample;
      ``beyond_curve``: the share
      of resamples that fell beyond it. A resample above the curve counts with its
      lower bound; one below it as -inf (nothing bounds it from below), so a net
      less accurate than the smallest baseline never supports a compression claim.

    Example:
        >>> df = pd.DataFrame({"scheme": ["euler"] * 4 + ["lm"] * 2, "depth": [20, 20, 56, 56, 20, 20],
        ...                    "params": [100, 100, 400, 400, 101, 101],
        ...                    "test_acc": [0.80, 0.80, 0.90, 0.90, 0.85, 0.85]})
        >>> row = interpolated_compression(df, n_boot=100).iloc[0]
        >>> float(row.matched_params), round(float(row.compression), 3), float(row.ci_low)
        (200.0, 0.495, 0.495)
    """
    data = _finished(df, metric).copy()
    noise = data["noise"] if "noise" in data.columns else pd.Series([None] * len(data), index=data.index)
    data["family"] = [family_of(s, n) for s, n in zip(data["scheme"].astype(object), noise.astype(object), strict=True)]
    data["_acc"] = pd.to_numeric(data[metric], errors="coerce").astype(float)
    data["params"] = pd.to_numeric(data["params"]).astype(float)
    keys = ["depth", "width", "params"] if "width" in data.columns else ["depth", "params"]
    base = _seed_values(data[data["family"] == baseline], ["params", *[k for k in keys if k != "params"]])
    columns = ["family", "depth", "width", "params", "n", "acc_mean", "acc_sem", "matched_params", "bound",
               "compression", "ci_low", "ci_high", "beyond_curve"]
    if not base:
        return pd.DataFrame(columns=columns)
    base_params = np.array([key[0] for key, _ in base])
    base_means = np.array([values.mean() for _, values in base])
    rng = np.random.default_rng(seed)

    def resampled_means(values: np.ndarray) -> np.ndarray:
        return values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)

    boot_base = np.stack([resampled_means(values) for _, values in base], axis=1)  # (n_boot, nets)
    rows = []
    for family in sorted(f for f in data["family"].unique() if str(f).split("+")[0] == compressed):
        for key, values in _seed_values(data[data["family"] == family], keys):
            fields = dict(zip(keys, key, strict=True))
            p = float(fields["params"])
            acc = float(values.mean())
            matched, bound = matched_params(acc, base_params, base_means)
            boot_acc = resampled_means(values)
            boot = np.empty(n_boot)
            beyond = 0
            for b in range(n_boot):
                m, bnd = matched_params(boot_acc[b], base_params, boot_base[b])
                # above the curve, the largest ResNet's params give a lower bound of the compression: kept,
                # conservative; below it nothing bounds it from below: -inf, so it never counts for the claim
                boot[b] = -np.inf if bnd == "<=" else 1.0 - p / m
                beyond += bnd != ""
            tail = (1.0 - confidence) / 2
            rows.append({
                "family": family, "depth": int(fields["depth"]), "width": fields.get("width"), "params": int(p),
                "n": len(values), "acc_mean": acc,
                "acc_sem": float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else np.nan,
                "matched_params": matched, "bound": bound, "compression": 1.0 - p / matched,
                # order statistics, no interpolation (which an -inf resample would turn into NaN)
                "ci_low": float(np.quantile(boot, tail, method="inverted_cdf")),
                "ci_high": float(np.quantile(boot, 1.0 - tail, method="inverted_cdf")),
                "beyond_curve": beyond / n_boot,
            })
    return pd.DataFrame(rows, columns=columns)


def compression_verdict(table: pd.DataFrame, target: float = 0.5) -> str:
    """The paper's claim read off :func:`interpolated_compression`, decided by the intervals.

    ``reproduced``: the interval of some net lies entirely above ``target``;
    ``no compression``: every interval contains 0 or lies below it;
    ``partial``: otherwise (compression shown, but not ``target``);
    ``undecided``: no net to judge.

    Example:
        >>> compression_verdict(pd.DataFrame({"ci_low": [0.1, 0.55], "ci_high": [0.3, 0.7]}))
        'reproduced'
    """
    if not len(table):
        return "undecided"
    if (table["ci_low"] > target).any():
        return "reproduced"
    if (table["ci_low"] <= 0).all():
        return "no compression"
    return "partial"
