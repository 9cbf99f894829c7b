"""One truth: check that an experiment folder's study.db, trials.csv, curves.csv and pareto.csv agree.

A search records every trial twice: in the Optuna study (``study.db``, told by
:class:`lmsearch.searcher.StudySearcher`) and in the tables (written by
:class:`lmsearch.recorder.TrialRecorder` and at the end of the run). This
module compares them, reading the tables only through :mod:`lmsearch.results`
and the study only through Optuna's public API (opened read-only):

* every finished study trial (COMPLETE, PRUNED, FAIL; orphans that the searcher
  failed and queued again excepted) has a trials.csv row with its number, its
  Ray trial id and the same state (FAIL is FAILED); a COMPLETE row holds the
  study's values of the objectives (named in experiment.json);
* no trials.csv row claims a finished state the study does not have, nor a
  number the study lacks or another row has;
* curves.csv rows belong to trials of trials.csv, a trial's last epoch there is
  its ``epochs_run``, and its finite ``val_acc`` per epoch are the study's
  intermediate values (which the searcher records every epoch);
* pareto.csv holds the trials of ``study.best_trials`` and of
  :func:`lmsearch.pareto.pareto_front` of trials.csv, with trials.csv's values;
* RUNNING rows, and RUNNING study trials, only while experiment.json's status
  is not ``finished``.

A folder whose search is running or was killed (status ``running``) or
interrupted may lag where a search writes in steps: the searcher tells the
study before the recorder writes trials.csv, so a RUNNING row (or none yet)
for a trial the study finished is accepted there, and a RUNNING row's curve is
not compared; pareto.csv, written when a run ends, is not compared while the
status is ``running``. A study made before intermediate values were recorded
(none in any trial) is not compared with curves.csv.

Example:
    >>> from lmsearch.consistency import check_experiment
    >>> check_experiment("results/fashion_quick_reference")
    []
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from lmsearch import results
from lmsearch.pareto import pareto_front
from lmsearch.results import ExperimentFolderError
from lmsearch.searcher import EPOCH_METRIC, ORPHANED_ATTR, RAY_TRIAL_ATTR, finished_outcomes
from lmsearch.states import COMPLETE, FAILED, FINISHED, PRUNED, ROW_STATE_OF_OPTUNA, RUNNING

__all__ = ["check_experiment", "check", "CheckReport"]



@dataclass
class CheckReport:
    """What :func:`check` found: the disagreements (empty when all agree) and the trials' states."""

    folder: Path
    status: str
    disagreements: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # trials.csv state -> rows
    planned: int | None = None  # experiment.json's num_samples (None in a folder that lacks it)
    left: int | None = None  # trials a --resume would still run: planned minus the study's finished trials

    @property
    def trials(self) -> int:
        return sum(self.counts.values())

    def progress(self) -> str:
        """``status running: 22 of 24 trials left to run``, or just the status once none is left."""
        status = f"status {self.status or 'unknown'}"
        if self.left and self.planned and self.status != "finished":
            return f"{status}: {self.left} of {self.planned} trials left to run"
        return status

    def summary(self) -> str:
        """``consistent: N trials (c complete, p pruned, f failed[, r running]); status S[: L of P trials left
        to run]``, or how many disagreements."""
        if self.disagreements:
            n = len(self.disagreements)
            return f"{n} disagreement{'s' if n != 1 else ''} between study.db and the tables:"
        parts = [f"{self.counts.get(COMPLETE, 0)} complete", f"{self.counts.get(PRUNED, 0)} pruned",
                 f"{self.counts.get(FAILED, 0)} failed"]
        if self.counts.get(RUNNING):
            parts.append(f"{self.counts[RUNNING]} running")
        return (f"consistent: {self.trials} trial{'s' if self.trials != 1 else ''} ({', '.join(parts)}); "
                f"{self.progress()}")


def check_experiment(exp_dir: str | os.PathLike) -> list[str]:
    """The disagreements between the study and the tables of ``exp_dir``; ``[]`` when they all agree.

    Each message names the file, the trial (number and Ray id) and the field.
    Raises :class:`lmsearch.results.ExperimentFolderError` for a folder that
    cannot be read (no experiment.json, a damaged table, no readable study).
    """
    return check(exp_dir).disagreements


def check(exp_dir: str | os.PathLike) -> CheckReport:
    """:func:`check_experiment` with the trial counts and the status, for a summary."""
    exp = Path(exp_dir)
    meta = results.read_experiment(exp)
    table = results.load_results(exp)
    curves = results.load_curves(exp)
    status = str(meta.get("status") or "")
    study = _open_study(exp / str(meta.get("study") or results.STUDY_FILE), str(meta.get("name") or exp.name))
    objectives = results.experiment_objectives(meta, exp / results.EXPERIMENT_FILE)
    planned = meta.get("num_samples")
    planned = planned if isinstance(planned, int) and not isinstance(planned, bool) and planned > 0 else None
    report = CheckReport(exp, status, counts={k: int(v) for k, v in table["state"].value_counts().items()},
                         planned=planned, left=None if planned is None else max(0, planned - len(finished_outcomes(study))))
    out = report.disagreements
    out += _check_objectives(study, objectives)
    trials = study.get_trials(deepcopy=False)
    rows = _rows_by_number(table, out)
    ended = status in results.ENDED_STATUSES
    out += _check_states(trials, rows, objectives, finished=ended)
    out += _check_rows(table, {t.number: t for t in trials}, finished=ended)
    out += _check_curves(table, curves, trials, rows)
    if status != "running":
        out += _check_pareto(exp, table, study, objectives)
    return report


# ------------------------------------------------------------------------------------------------ reading
def _open_study(path: Path, name: str) -> optuna.Study:
    """The study ``name`` in the SQLite file ``path``, opened read-only (a check never writes), or
    ExperimentFolderError saying why it cannot be read."""
    if not path.is_file():
        raise ExperimentFolderError(f"{path}: no such file; the folder has no Optuna study to check its tables "
                                    f"against")
    if path.stat().st_size == 0:  # SQLite reads it as a new database, and Optuna would try to create its tables
        raise ExperimentFolderError(f"{path}: empty (0 bytes), not an Optuna study; restore it from a copy")
    # SQLite's own read-only URI, opened by sqlite3: a URL through SQLAlchemy would drop the query of a path
    # holding '?' or '#', and SQLite would then create a database of that name
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        storage = optuna.storages.RDBStorage("sqlite://", engine_kwargs={
            "creator": lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)})
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and Optuna's many errors for a bad file
        raise ExperimentFolderError(f"{path}: not a readable Optuna study ({_first_line(exc)})") from None
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise ExperimentFolderError(f"{path}: holds no study named {name!r} (experiment.json's name); it holds "
                                    f"{', '.join(map(repr, names)) or 'none'}") from None
    except Exception as exc:  # noqa: BLE001
        raise ExperimentFolderError(f"{path}: not a readable Optuna study ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _label(number: Any, trial_id: Any = None) -> str:
    """``trial 3 (id 1a2b3c4d)`` for messages."""
    known = trial_id is not None and not pd.isna(trial_id) and str(trial_id)
    return f"trial {number} (id {trial_id})" if known else f"trial {number}"


def _same(a: Any, b: Any) -> bool:
    """Two recorded numbers agree (both missing, or equal to the precision a CSV keeps)."""
    a = None if a is None or pd.isna(a) else float(a)
    b = None if b is None or pd.isna(b) else float(b)
    if a is None or b is None:
        return a is None and b is None
    return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def _rows_by_number(table: pd.DataFrame, out: list[str]) -> dict[int, dict[str, Any]]:
    """trials.csv's rows by trial number; rows without a number, or sharing one, are reported."""
    rows: dict[int, dict[str, Any]] = {}
    seen: dict[int, list[str]] = defaultdict(list)
    for row in table.to_dict(orient="records"):
        if pd.isna(row["number"]):
            out.append(f"trials.csv: the row of trial id {row['trial_id']} has no trial number (column number)")
            continue
        number = int(row["number"])
        seen[number].append(str(row["trial_id"]))
        rows[number] = row
    for number, ids in seen.items():
        if len(ids) > 1:
            out.append(f"trials.csv: trial number {number} is on {len(ids)} rows, of trial ids {', '.join(ids)} "
                       f"(column number); study.db has one trial {number}")
    return rows


# ------------------------------------------------------------------------------------------------ checks
def _check_objectives(study: optuna.Study, objectives: list[tuple[str, str]]) -> list[str]:
    """The study optimises experiment.json's objectives, in its order."""
    directions = ["max" if d == optuna.study.StudyDirection.MAXIMIZE else "min" for d in study.directions]
    if directions != [d for _, d in objectives]:
        return [f"study.db: the study's directions {directions} are not experiment.json's objectives {objectives}"]
    names = study.metric_names
    if names is not None and list(names) != [c for c, _ in objectives]:
        return [f"study.db: the study's metric names {list(names)} are not experiment.json's objectives "
                f"{[c for c, _ in objectives]}"]
    return []


def _check_states(trials: list[FrozenTrial], rows: dict[int, dict[str, Any]], objectives: list[tuple[str, str]],
                  finished: bool) -> list[str]:
    """Each study trial against its trials.csv row: present, same state, same Ray id, same objective values."""
    out = []
    for t in trials:
        told = ROW_STATE_OF_OPTUNA.get(t.state.name, t.state.name)
        row = rows.get(t.number)
        orphan = ORPHANED_ATTR in t.user_attrs
        if row is None:
            if told in FINISHED and finished and not orphan:
                out.append(f"trials.csv: no row for trial {t.number}, which study.db records as {told}")
            elif told == RUNNING and finished:
                out.append(f"study.db: trial {t.number} is still RUNNING, but experiment.json says the search "
                           f"finished")
            continue
        label, state = _label(t.number, row["trial_id"]), str(row["state"])
        ray_id = t.user_attrs.get(RAY_TRIAL_ATTR)
        if ray_id is not None and str(ray_id) != str(row["trial_id"]):
            out.append(f"trials.csv {label}: trial_id is {row['trial_id']} but study.db's trial {t.number} is the Ray "
                       f"trial {ray_id} (user attribute {RAY_TRIAL_ATTR})")
        if orphan:
            if state != FAILED and not (state == RUNNING and not finished):
                out.append(f"trials.csv {label}: state is {state} but study.db failed this trial as an orphan of a "
                           f"killed search (its configuration ran again)")
            continue
        if state == told:
            if told == COMPLETE:
                for (name, _), value in zip(objectives, t.values or [], strict=False):
                    if not _same(row.get(name), value):
                        out.append(f"trials.csv {label}: {name} is {row.get(name)} but study.db's value of "
                                   f"{name} is {value}")
                if len(t.values or []) != len(objectives):
                    out.append(f"study.db: trial {t.number} has {len(t.values or [])} values for "
                               f"{len(objectives)} objectives")
            continue
        if state == RUNNING and told in FINISHED and not finished:
            continue  # the searcher told the study; the recorder had not written yet (a killed or live search)
        out.append(f"trials.csv {label}: state is {state} but study.db records {told}")
    return out


def _check_rows(table: pd.DataFrame, study: dict[int, FrozenTrial], finished: bool) -> list[str]:
    """trials.csv rows the study does not back: unknown numbers; RUNNING rows of a finished search."""
    out = []
    for row in table.to_dict(orient="records"):
        if pd.isna(row["number"]):
            continue
        number, label = int(row["number"]), _label(row["number"], row["trial_id"])
        if number not in study:
            out.append(f"trials.csv {label}: state is {row['state']} but study.db has no trial {number}")
        elif row["state"] == RUNNING and finished:
            out.append(f"trials.csv {label}: state is RUNNING but experiment.json says the search finished")
    return out


def _check_curves(table: pd.DataFrame, curves: pd.DataFrame, trials: list[FrozenTrial],
                  rows: dict[int, dict[str, Any]]) -> list[str]:
    """curves.csv against trials.csv (owner, number, last epoch) and the study's intermediate values."""
    out = []
    by_id = {str(r["trial_id"]): r for r in table.to_dict(orient="records") if not pd.isna(r["trial_id"])}
    epochs: dict[str, dict[int, float]] = defaultdict(dict)
    for (trial_id, number), part in curves.groupby(["trial_id", "number"], dropna=False, sort=False):
        trial_id = str(trial_id)
        row = by_id.get(trial_id)
        if row is None:
            out.append(f"curves.csv: {len(part)} row(s) of {_label(number, trial_id)} (epochs "
                       f"{', '.join(map(str, part['epoch'].tolist()))}), which has no row in trials.csv")
            continue
        if pd.isna(number) or pd.isna(row["number"]) or int(number) != int(row["number"]):
            out.append(f"curves.csv {_label(number, trial_id)}: number is {number} but trials.csv's row of id "
                       f"{trial_id} has number {row['number']}")
        for epoch, value in zip(part["epoch"], part["val_acc"], strict=True):
            epochs[trial_id][int(epoch)] = float(value)
    for trial_id, row in by_id.items():
        if row["state"] == RUNNING:
            continue  # still being written (only allowed while the search is not finished: see _check_rows)
        last = max(epochs.get(trial_id, {}), default=0)
        run = 0 if pd.isna(row["epochs_run"]) else int(row["epochs_run"])
        if last != run:
            out.append(f"curves.csv {_label(row['number'], trial_id)}: the last epoch is {last} but trials.csv's "
                       f"epochs_run is {run}")
    if not any(t.intermediate_values for t in trials):
        return out  # a study made before the searcher recorded every epoch
    for t in trials:
        row = rows.get(t.number)
        if row is None or row["state"] == RUNNING or str(row["trial_id"]) not in by_id:
            continue
        label = _label(t.number, row["trial_id"])
        curve = {e: v for e, v in epochs.get(str(row["trial_id"]), {}).items() if math.isfinite(v)}
        study_curve = t.intermediate_values
        for epoch in sorted(set(curve) | set(study_curve)):
            mine, theirs = curve.get(epoch), study_curve.get(epoch)
            if mine is None:
                out.append(f"curves.csv {label}: no {EPOCH_METRIC} at epoch {epoch}, but study.db's intermediate "
                           f"value there is {theirs}")
            elif theirs is None:
                out.append(f"curves.csv {label}: {EPOCH_METRIC} at epoch {epoch} is {mine}, but study.db has no "
                           f"intermediate value there")
            elif not _same(mine, theirs):
                out.append(f"curves.csv {label}: {EPOCH_METRIC} at epoch {epoch} is {mine} but study.db's "
                           f"intermediate value is {theirs}")
    return out


def _check_pareto(exp: Path, table: pd.DataFrame, study: optuna.Study, objectives: list[tuple[str, str]]) -> list[str]:
    """pareto.csv == the front of study.best_trials == pareto_front(trials.csv), with trials.csv's values."""
    if not (exp / results.PARETO_FILE).is_file():
        return [f"pareto.csv: missing (a search writes it when it ends); study.db's front has "
                f"{len(study.best_trials)} trial(s)"]
    front = results.load_pareto(exp)
    out = []
    numbers = Counter(int(n) for n in front["number"].dropna())
    if front["number"].isna().any():
        out.append(f"pareto.csv: {int(front['number'].isna().sum())} row(s) without a trial number (column number)")
    for where, other in (("study.db's front (study.best_trials)", Counter(t.number for t in study.best_trials)),
                         ("the front of trials.csv (lmsearch.pareto.pareto_front)",
                          Counter(int(n) for n in pareto_front(table, objectives)["number"].dropna()))):
        for number in sorted(other - numbers):
            out.append(f"pareto.csv: no row for trial {number}, which is on {where}")
        for number in sorted(numbers - other):
            out.append(f"pareto.csv: trial {number} is not on {where}")
    by_number = {int(r["number"]): r for r in table.to_dict(orient="records") if not pd.isna(r["number"])}
    for row in front.to_dict(orient="records"):
        if pd.isna(row["number"]) or int(row["number"]) not in by_number:
            continue
        mine = by_number[int(row["number"])]
        label = _label(row["number"], row["trial_id"])
        for column in ("trial_id", "state"):
            if str(row[column]) != str(mine[column]):
                out.append(f"pareto.csv {label}: {column} is {row[column]} but trials.csv has {mine[column]}")
        for name, _ in objectives:
            if not _same(row.get(name), mine.get(name)):
                out.append(f"pareto.csv {label}: {name} is {row.get(name)} but trials.csv has {mine.get(name)}")
    return out
