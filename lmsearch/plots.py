"""Plots of a search: the front, learning curves, hypervolume over trials, learned k_n.

Matplotlib with the non-interactive Agg backend (works on headless machines);
every function writes one image and returns its path, in the format its
extension names (``.png``, ``.pdf``, ``.svg``, ... see :data:`PLOT_FORMATS`).

Example:
    >>> import tempfile, lmsearch
    >>> df = lmsearch.load_results("results/fashion_quick_reference")
    >>> out = tempfile.mkdtemp()
    >>> plot_pareto(df, f"{out}/front.png").name
    'front.png'
    >>> plot_hypervolume(df, f"{out}/hv.png", ref={"val_acc": 0, "params": 5e6}).name
    'hv.png'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402

from lmsearch.pareto import Objectives, hypervolume, normalize_objectives, pareto_front  # noqa: E402
from lmsearch.states import COMPLETE

__all__ = ["PLOT_FORMATS", "plot_format", "plot_pareto", "plot_curves", "plot_hypervolume", "hypervolume_curve",
           "plot_lm_coefficients", "plot_compression", "trial_label"]

_LABELS = {"val_acc": "validation accuracy", "test_acc": "test accuracy", "params": "parameters",
           "flops": "FLOPs", "val_loss": "validation loss", "wall_time_s": "wall time (s)"}


#: File extensions a plot may be written as (matplotlib's formats but pgf, which needs a TeX install).
PLOT_FORMATS: tuple[str, ...] = tuple(sorted(set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"}))


def plot_format(path: str | os.PathLike) -> str:
    """The image format ``path``'s extension names, e.g. ``"pdf"``; ``ValueError`` for any other name.

    Example:
        >>> plot_format("front.PDF")
        'pdf'
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise ValueError(f"{path}: a plot's file name must end in one of {', '.join('.' + f for f in PLOT_FORMATS)}")
    return suffix


def _num(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def trial_label(row: Mapping[str, Any] | pd.Series) -> str:
    """Short name of a trial's architecture, e.g. ``lm-56`` or ``euler-20+sd``.

    Example:
        >>> trial_label({"scheme": "lm", "depth": 56, "noise": "stochastic_depth"})
        'lm-56+sd'
    """
    scheme = row.get("scheme")
    depth = row.get("depth")
    text = f"{scheme}-{int(depth)}" if scheme is not None and not pd.isna(depth) else str(row.get("trial_id", "?"))
    noise = row.get("noise")
    if isinstance(noise, str) and noise not in ("none", ""):
        text += "+" + {"stochastic_depth": "sd", "shake_shake": "ss"}.get(noise, noise)
    return text


def _save(fig: Any, path: str | os.PathLike) -> Path:
    out = Path(path)
    try:
        fmt = plot_format(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format=fmt, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out


def _step_xy(x: np.ndarray, y: np.ndarray, x_dir: str, y_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Staircase through front points: sorted along x from best to worst x."""
    order = np.argsort(x if x_dir == "min" else -x, kind="stable")
    return x[order], y[order]


def plot_pareto(
    df: pd.DataFrame,
    path: str | os.PathLike,
    objectives: Objectives = None,
    by: str | None = "scheme",
    label_front: bool = True,
    title: str | None = None,
) -> Path:
    """Scatter of all finished trials with the front drawn as a step line and labelled.

    ``df`` may also be :func:`lmsearch.aggregate_seeds`'s table: each point is then an
    architecture's mean over its seeds, with a bar of one standard error.

    The first two objectives are plotted: by default ``val_acc`` (y) against
    ``params`` (x, log scale, as every objective named params/flops is).
    Colours by the ``by`` column; the overall front (over all colours) is the
    black staircase, each front point labelled with :func:`trial_label`.
    Non-COMPLETE trials are drawn faint as crosses.
    """
    objs = normalize_objectives(objectives)
    if len(objs) < 2:
        raise ValueError("plot_pareto needs two objectives")
    (y_col, y_dir), (x_col, x_dir) = objs[0], objs[1]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    done = df["state"].astype(object).eq(COMPLETE).to_numpy(dtype=bool) if "state" in df.columns else np.ones(len(df), bool)
    other = df[~done]
    finished = df[done]
    if len(other):
        ax.scatter(_num(other[x_col]), _num(other[y_col]), marker="x", s=14, color="0.7", label="not complete")
    groups = [(None, finished)] if by is None or by not in df.columns else list(
        finished.groupby(finished[by].astype(object).fillna("?"), sort=True))
    for name, group in groups:
        points = ax.scatter(_num(group[x_col]), _num(group[y_col]), s=22, alpha=0.8,
                            label=None if name is None else str(name))
        if f"{y_col}_sem" in group.columns:  # means over seeds (lmsearch.aggregate_seeds): one standard error
            ax.errorbar(_num(group[x_col]), _num(group[y_col]), yerr=_num(group[f"{y_col}_sem"]), fmt="none",
                        ecolor=points.get_facecolor()[0], elinewidth=1, capsize=2, alpha=0.8)
    front = pareto_front(df, objs[:2]) if len(objs) == 2 else pareto_front(df, objs)
    if len(front):
        fx, fy = _step_xy(_num(front[x_col]), _num(front[y_col]), x_dir, y_dir)
        ax.step(fx, fy, where="post", color="black", linewidth=1.2, label="Pareto front")
        ax.scatter(fx, fy, s=40, facecolors="none", edgecolors="black")
        if label_front:
            for (_, row), x, y in zip(front.iterrows(), _num(front[x_col]), _num(front[y_col]), strict=True):
                ax.annotate(trial_label(row), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if x_col in ("params", "flops"):
        xs = _num(df[x_col])
        if np.nanmin(xs, initial=np.inf) > 0:
            ax.set_xscale("log")
    ax.set_xlabel(_LABELS.get(x_col, x_col))
    ax.set_ylabel(_LABELS.get(y_col, y_col))
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_curves(
    curves: pd.DataFrame,
    path: str | os.PathLike,
    metric: str = "val_acc",
    trials: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Learning curves: ``metric`` against epoch, one line per trial.

    ``curves`` is :func:`lmsearch.results.load_curves` output; ``trials``
    restricts to some trial ids; ``labels`` maps trial id to legend text (the
    legend is shown for at most 12 trials).
    """
    data = curves if trials is None else curves[curves["trial_id"].astype(object).isin(list(trials))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ids = list(dict.fromkeys(data["trial_id"].astype(object)))
    for trial_id in ids:
        part = data[data["trial_id"].astype(object) == trial_id]
        part = part.sort_values("epoch")
        name = (labels or {}).get(trial_id, str(trial_id))
        ax.plot(_num(part["epoch"]), _num(part[metric]), marker="o", markersize=2.5, linewidth=1, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(_LABELS.get(metric, metric))
    ax.grid(True, alpha=0.3)
    if 0 < len(ids) <= 12:
        ax.legend(fontsize=7)
    return _save(fig, path)


def hypervolume_curve(
    df: pd.DataFrame, ref: Mapping[str, float] | Sequence[float], objectives: Objectives = None
) -> pd.DataFrame:
    """Hypervolume of the first ``i`` finished trials (in trial-number order) for each ``i``.

    Returns columns ``trials`` (i), ``number`` (the i-th finished trial's
    number) and ``hypervolume``.
    """
    done = df
    if "state" in df.columns:
        done = df[df["state"].astype(object).eq(COMPLETE).to_numpy(dtype=bool)]
    if "number" in done.columns:
        done = done.sort_values("number", kind="stable")
    values = [hypervolume(done.iloc[: i + 1], ref, objectives) for i in range(len(done))]
    numbers = done["number"].to_numpy() if "number" in done.columns else np.arange(len(done))
    return pd.DataFrame({"trials": np.arange(1, len(done) + 1), "number": numbers, "hypervolume": values})


def plot_hypervolume(
    df: pd.DataFrame,
    path: str | os.PathLike,
    ref: Mapping[str, float] | Sequence[float],
    objectives: Objectives = None,
) -> Path:
    """Hypervolume of the first i finished trials against i (see :func:`hypervolume_curve`)."""
    curve = hypervolume_curve(df, ref, objectives)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(curve["trials"], curve["hypervolume"], where="post")
    ax.set_xlabel("finished trials")
    ax.set_ylabel("hypervolume")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_lm_coefficients(coefficients: pd.DataFrame, path: str | os.PathLike, title: str | None = None) -> Path:
    """Learned k_n over depth from :func:`lmsearch.analysis.lm_coefficients`.

    One line per stage against the step's global index; per-channel k_n are
    drawn as their mean with a min-max band. The dotted lines mark the
    authors' initial range U(-0.1, 0) and k = 0 (the Euler/ResNet step).
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    x = _num(coefficients["index"])
    for stage, part in coefficients.groupby("stage", sort=True):
        px = _num(part["index"])
        ax.plot(px, _num(part["k"]), marker="o", markersize=3, label=f"stage {stage}")
        if "k_min" in part.columns and (_num(part["k_max"]) > _num(part["k_min"])).any():
            ax.fill_between(px, _num(part["k_min"]), _num(part["k_max"]), alpha=0.2)
    ax.axhline(0.0, color="black", linewidth=0.8, linestyle=":")
    ax.axhline(-0.1, color="0.5", linewidth=0.8, linestyle=":")
    ax.set_xlabel("LM step (depth order)")
    ax.set_ylabel("learned $k_n$")
    if len(x):
        ax.set_xlim(np.nanmin(x) - 0.5, np.nanmax(x) + 0.5)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if len(coefficients):
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_compression(table: pd.DataFrame, path: str | os.PathLike, trials: pd.DataFrame | None = None,
                     metric: str = "test_acc", title: str | None = None) -> Path:
    """Error vs parameters per family from :func:`lmsearch.analysis.compression_table`.

    Each family (euler, lm, lm+stochastic_depth, ...) is a line through its
    mean error per depth with +-1 std error bars, each point labelled with its
    depth; with ``trials`` (the trials table), every seed is drawn as a faint dot.
    """
    from lmsearch.analysis import family_of

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (family, part) in enumerate(table.groupby("family", sort=False)):
        part = part.sort_values("params")
        colour = f"C{i}"
        x, err = _num(part["params"]), 100 * _num(part["err_mean"])
        ax.errorbar(x, err, yerr=100 * np.nan_to_num(_num(part["err_std"])), color=colour, marker="o",
                    capsize=3, label=str(family))
        for xi, yi, depth in zip(x, err, part["depth"], strict=True):
            ax.annotate(str(depth), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour)
        if trials is not None and len(trials):
            done = trials[trials["state"].astype(object).eq(COMPLETE).to_numpy(dtype=bool)]
            noise = done["noise"] if "noise" in done.columns else pd.Series([None] * len(done), index=done.index)
            mine = done[[family_of(s, n) == family for s, n in zip(done["scheme"], noise, strict=True)]]
            ax.scatter(_num(mine["params"]), 100 * (1 - _num(mine[metric])), color=colour, alpha=0.3, s=10)
    params = _num(table["params"])
    if len(params) and np.nanmax(params) > 10 * np.nanmin(params):  # log only when it spans a decade
        ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"{_LABELS.get(metric, metric).replace('accuracy', 'error')} (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "error vs parameters (mean +- std over seeds; labels: depth)")
    if len(table):
        ax.legend(fontsize=8)
    return _save(fig, path)
