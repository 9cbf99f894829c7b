"""What a running search prints: one compact line per trial event.

    [  3:12] trial 4 started: lm-14 w8 lr 0.061
    [  3:40] trial 4 epoch 1/4: val_acc 0.7120
    [  4:05] trial 2 pruned at epoch 1/4: val_acc 0.6550 | 3/20 ended (1 completed, 2 pruned, 0 failed), 2 running, front 1, ~21 min left

The recorder (:class:`lmsearch.recorder.TrialRecorder`) owns the trials' states and
calls :meth:`SearchProgress.event` with each row it writes, so the lines and
trials.csv cannot disagree. Ray's own status table is shown only with ``--verbose``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import pandas as pd

from lmsearch.pareto import front_table, pareto_front
from lmsearch.states import COMPLETE, FAILED, FINISHED, PRUNED, RUNNING

__all__ = ["SearchProgress", "STARTED", "EPOCH", "RETRY", "ENDED", "clock_text", "trial_counts", "search_summary"]

STARTED, EPOCH, RETRY, ENDED = "started", "epoch", "retry", "ended"


def clock_text(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) of a duration.

    Example:
        >>> clock_text(75.4), clock_text(3725)
        ('1:15', '1:02:05')
    """
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _duration_text(seconds: float) -> str:
    """A rough remaining time: ``~40 s``, ``~7 min``, ``~2.5 h``."""
    if seconds < 90:
        return f"~{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"~{round(seconds / 60)} min"
    return f"~{seconds / 3600:.1f} h"


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class SearchProgress:
    """Prints trial events of one search with its counts, elapsed and remaining time and front size.

    Args:
        total: the number of trials the search runs in all (earlier runs included).
        epochs: the epoch budget of a trial.
        objectives: ``[(column, "max"|"min")]``, for the front size.
        earlier: rows of trials that ended before this run (a resumed search).
        stream: where lines go (default stdout); ``clock``: seconds, for tests.
    """

    def __init__(self, total: int, epochs: int, objectives: Sequence[tuple[str, str]],
                 earlier: Sequence[Mapping[str, Any]] = (), stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.epochs, self.objectives = total, epochs, list(objectives)
        self.stream, self.clock = stream, clock
        self.start = clock()
        self._rows: dict[str, dict[str, Any]] = {}
        self._ended_before = {str(r["trial_id"]) for r in earlier if r.get("state") in FINISHED}
        for row in earlier:
            self._rows[str(row["trial_id"])] = dict(row)
        self._ended_here = 0

    def event(self, kind: str, row: Mapping[str, Any]) -> None:
        """Record ``row`` (a trials.csv row) and print the line for event ``kind``.

        A trial that starts again (after its worker was retried, or in a restored search) is
        announced as resumed, from the last epoch it reported.
        """
        trial_id = str(row["trial_id"])
        known = self._rows.get(trial_id)
        if kind == STARTED and known is not None and known.get("state") == RUNNING:
            self._rows[trial_id] = {**known, **{k: v for k, v in row.items() if k != "epochs_run"}}
            self._print(f"trial {row.get('number', '?')} resumed from epoch {known.get('epochs_run') or 0}/"
                        f"{self.epochs}")
            return
        self._rows[trial_id] = dict(row)
        if kind == ENDED and row.get("state") in FINISHED:
            if trial_id in self._ended_before:
                return  # Ray re-announces trials a restored search had already ended
            self._ended_before.add(trial_id)
            self._ended_here += 1
        self._print(self.line(kind, row))

    def counts(self) -> dict[str, int]:
        """Trials per state so far."""
        out = {COMPLETE: 0, PRUNED: 0, FAILED: 0, RUNNING: 0}
        for row in self._rows.values():
            if row.get("state") in out:
                out[row["state"]] += 1
        return out

    def front_size(self) -> int:
        """How many completed trials are on the Pareto front so far."""
        done = [r for r in self._rows.values() if r.get("state") == COMPLETE]
        if not done:
            return 0
        table = pd.DataFrame([{c: _number(r.get(c)) for c, _ in self.objectives} for r in done])
        return len(pareto_front(table, self.objectives, states=None))

    def remaining_seconds(self) -> float | None:
        """Time left at this run's pace so far: seconds per ended trial x trials left (None before one ends)."""
        if not self._ended_here:
            return None
        ended = sum(1 for r in self._rows.values() if r.get("state") in FINISHED)
        return (self.clock() - self.start) / self._ended_here * max(0, self.total - ended)

    def line(self, kind: str, row: Mapping[str, Any]) -> str:
        """The text of one event (without the clock)."""
        name = f"trial {row.get('number', '?')}"
        epoch, acc = row.get("epochs_run"), _number(row.get("val_acc"))
        score = f"val_acc {acc:.4f}" if not math.isnan(acc) else "no val_acc"
        if kind == STARTED:
            return f"{name} started: {_describe(row)}"
        if kind == EPOCH:
            return f"{name} epoch {epoch}/{self.epochs}: {score}"
        if kind == RETRY:
            return f"{name}: its worker failed at epoch {epoch}/{self.epochs}; retrying from its last checkpoint"
        state = row.get("state")
        if state == COMPLETE:
            params = _number(row.get("params"))
            what = f"{name} completed: {score}" + (f", {params:,.0f} params" if not math.isnan(params) else "")
        elif state == PRUNED:
            what = f"{name} pruned at epoch {epoch}/{self.epochs}: {score}"
        elif state == FAILED:
            error = str(row.get("error") or "error").splitlines()[0][:160]
            what = f"{name} failed at epoch {epoch}/{self.epochs}: {error}"
            if row.get("error_file"):
                what += f" (traceback: {row['error_file']})"
        else:
            what = f"{name} stopped at epoch {epoch}/{self.epochs} (unfinished)"
        return f"{what} | {self.status()}"

    def status(self) -> str:
        """``7/20 ended (4 completed, 2 pruned, 1 failed), 2 running, front 3, ~5 min left``."""
        c = self.counts()
        ended = c[COMPLETE] + c[PRUNED] + c[FAILED]
        text = (f"{ended}/{self.total} ended ({c[COMPLETE]} completed, {c[PRUNED]} pruned, {c[FAILED]} failed), "
                f"{c[RUNNING]} running, front {self.front_size()}")
        left = self.remaining_seconds()
        return text + (f", {_duration_text(left)} left" if left is not None and ended < self.total else "")

    def _print(self, text: str) -> None:
        stream = self.stream or sys.stdout
        print(f"[{clock_text(self.clock() - self.start):>7}] {text}", file=stream, flush=True)


def _describe(row: Mapping[str, Any]) -> str:
    """``lm-14 w8 lr 0.061`` (plus the seed when it is not 0)."""
    from lmsearch.plots import trial_label

    text = trial_label(row)
    width, lr, seed = row.get("width"), _number(row.get("lr")), row.get("seed")
    if width not in (None, ""):
        text += f" w{width}"
    if not math.isnan(lr):
        text += f" lr {lr:.3g}"
    if seed not in (None, "", 0, "0"):
        text += f" seed {seed}"
    return text


FRONT_COLUMNS = ["number", "scheme", "depth", "width", "block", "noise", "params", "n", "val_acc", "val_acc_sem",
                 "test_acc"]


def trial_counts(table: pd.DataFrame) -> str:
    """``"5 trials: 2 completed, 1 pruned, 2 failed"`` (and how many are unfinished) of a trials table."""
    counts = table["state"].value_counts() if "state" in table.columns else pd.Series(dtype=int)
    parts = [f"{counts.get(COMPLETE, 0)} completed", f"{counts.get(PRUNED, 0)} pruned",
             f"{counts.get(FAILED, 0)} failed"]
    if counts.get(RUNNING, 0):
        parts.append(f"{counts.get(RUNNING)} unfinished")
    return f"{len(table)} trial{'s' if len(table) != 1 else ''}: {', '.join(parts)}"


def search_summary(exp_dir: Any, table: pd.DataFrame, objectives: Sequence[tuple[str, str]], finished: bool,
                   plot: Any = None, wall_s: float | None = None, stopped_by: str | None = None) -> str:
    """What a search prints when it ends: counts, the front, the plot's path and the next commands.

    ``stopped_by``: why an unfinished search ended other than by Ctrl-C (its time budget).

    ``table``: the experiment's trials (:func:`lmsearch.load_results`); the front is over seed
    means where the space repeats architectures under several seeds, as ``lmsearch pareto`` shows it.
    """
    lines = ["", trial_counts(table)]
    if "epochs_run" in table.columns and "epochs" in table.columns and len(table):
        trained = int(pd.to_numeric(table["epochs_run"], errors="coerce").fillna(0).sum())
        budget = int(pd.to_numeric(table["epochs"], errors="coerce").fillna(0).sum())
        lines[-1] += f"; {trained} of {budget} epochs trained"
    if wall_s is not None:
        lines[-1] += f"; {clock_text(wall_s)} wall time"
    failed = table[table["state"] == FAILED] if "state" in table.columns else table.iloc[:0]
    done = table[table["state"] == COMPLETE] if "state" in table.columns else table.iloc[:0]
    if len(failed) and not len(done):
        first = failed.iloc[0]
        lines.append(f"no trial completed; the first failure (trial {first['number']}): {first['error']}")
    view, replicated = front_table(table)
    front = pareto_front(view, objectives) if len(done) else view.iloc[:0]
    unit = "architecture" if replicated else "trial"
    unit = f"{len(front)} {unit}{'s' if len(front) != 1 else ''}" + (", means over seeds" if replicated else "")
    lines.append(f"\nPareto front of {exp_dir}: {unit}")
    if len(front):
        cols = [c for c in FRONT_COLUMNS if c in front.columns and (replicated or c not in ("n", "val_acc_sem"))]
        cols += [c for c, _ in objectives if c not in cols and c in front.columns]
        lines.append(front[cols].sort_values(cols[cols.index("params")] if "params" in cols else cols[0])
                     .to_string(index=False))
    if plot is not None:
        lines.append(f"\nFront plot: {plot}")
    if not finished:
        why = stopped_by or "The search did not finish"
        lines.append(f"\n{why}; continue it with: lmsearch search {exp_dir}/space.yaml --out {exp_dir} --resume")
    lines.append("\nNext:")
    lines.append(f"  lmsearch pareto {exp_dir} --by scheme        # the front per scheme; "
                 f"--compression: LM vs ResNet")
    for label, row in _export_picks(front, table, objectives):
        lines.append(f"  lmsearch export {exp_dir} --trial {row['number']} --out {label}/   "
                     f"# {_describe(row)}: arch.json + weights")
    lines.append(f"  optuna-dashboard sqlite:///{exp_dir}/study.db   # learning curves, parameter importance")
    return "\n".join(lines)


def _export_picks(front: pd.DataFrame, table: pd.DataFrame,
                  objectives: Sequence[tuple[str, str]]) -> list[tuple[str, pd.Series]]:
    """The front's most accurate net (``best``) and, when it is not LM, its most accurate LM net.

    Accuracy is the first maximised objective (else the first objective). A front over seed
    means names architectures (``trial_id`` ``a+b+c``): each is exported as its most accurate trial.
    """
    if not len(front) or "number" not in table.columns:
        return []
    metric, direction = next(((n, d) for n, d in objectives if d.startswith("max")), objectives[0])
    most = direction.startswith("max")
    by_id = table.set_index(table["trial_id"].astype(str))
    rows = []
    for _, arch in front.iterrows():
        ids = [i for i in str(arch["trial_id"]).split("+") if i in by_id.index]
        trials = by_id.loc[ids] if ids else arch.to_frame().T
        rows.append((arch[metric], trials.sort_values(metric, ascending=not most).iloc[0]))
    rows.sort(key=lambda pair: pair[0], reverse=most)
    best = rows[0][1]
    picks = [("best", best)]
    lm = [row for _, row in rows if row.get("scheme") == "lm"]
    if lm and best.get("scheme") != "lm":
        picks.append(("best-lm", lm[0]))
    return picks
