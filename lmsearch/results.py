"""The experiment folder <-> pandas DataFrames: the single owner of the on-disk format.

A search writes ``results/<name>/`` through the writers here and analysis reads
it back with :func:`load_results` / :func:`load_curves`::

    results/<name>/
        space.yaml        copy of the search-space file
        experiment.json   {"name", "dataset", "objectives", "seed", "created",
                           "study": "study.db", "status": running|finished|interrupted|stopped}
                          (stopped: its time budget ended the sitting, every trial ended; --resume
                          runs the rest)
        trials.csv        one row per trial, columns TRIAL_COLUMNS
        curves.csv        one row per (trial, epoch), columns CURVE_COLUMNS
        pareto.csv        the front rows, columns TRIAL_COLUMNS
        study.db          the Optuna study (SQLite, study name = experiment name)
        weights/<trial_id>/   optional: arch.json + model.safetensors of a trial
                              (written with lmsearch.save_architecture)

Every file is written atomically (a temporary file in the same folder, then
``os.replace``), so a reader never sees half a table even while a search runs.

Columns and dtypes of :func:`load_results` (``experiment`` first, then
:data:`TRIAL_COLUMNS` in order; see :data:`TRIAL_DTYPES`):

==========================  ==========  =========================================
column                      dtype       meaning
==========================  ==========  =========================================
experiment                  string      experiment name (experiment.json "name")
trial_id                    string      Ray Tune's trial id
number                      Int64       Optuna trial number
state                       string      COMPLETE, PRUNED, FAILED or RUNNING
scheme .. stem              see below   every ArchSpec field
arch_json                   string      the full ArchSpec as JSON
lr, weight_decay            float64     hyperparameters
batch_size, epochs          Int64       batch size, epoch budget
train_json                  string      the trial's whole training recipe (TrainConfig fields) as JSON
params, flops               Int64       parameters, forward FLOPs of one image
val_acc, val_loss           float64     final validation accuracy (0..1), loss
test_acc                    float64     test accuracy, COMPLETE trials only
epochs_run                  Int64       epochs actually trained
wall_time_s                 float64     trial wall time in seconds
node_id, hostname, dataset  string      where it ran, on what
seed                        Int64       the trial's seed
error                       string      <NA> unless FAILED
==========================  ==========  =========================================

ArchSpec columns: ``scheme, block, shortcut, noise, lm_k, stem, base`` string
(``base`` <NA> but for a torchvision base);
``depth, width, groups, group_width, in_channels, num_classes`` Int64;
``preact`` boolean; ``noise_prob`` float64; ``stages`` and ``lm_k_init``
JSON strings (``stages`` <NA> when derived from the depth).

Text columns use pandas' nullable ``string`` dtype and integer columns the
nullable ``Int64``, so a missing value is ``<NA>`` in both; floats are plain
``float64`` with NaN. Extra columns found in a file are kept after these.

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> write_experiment(d, {"name": "demo", "dataset": "fashion-mnist", "status": "finished"})
    >>> path = write_trials_table(d, [{"trial_id": "a1", "number": 0, "state": "COMPLETE",
    ...                                "scheme": "lm", "depth": 20, "val_acc": 0.9, "params": 1000}])
    >>> df = load_results(d)
    >>> df.loc[0, "experiment"], df.loc[0, "scheme"], int(df.loc[0, "depth"]), float(df.loc[0, "val_acc"])
    ('demo', 'lm', 20, 0.9)
    >>> str(df["depth"].dtype), str(df["state"].dtype), str(df["val_acc"].dtype)
    ('Int64', 'string', 'float64')
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lmsearch.atomic import atomic_write_text
from lmsearch.states import STATES  # the states of trials.csv

__all__ = [
    "ARCH_COLUMNS",
    "TRIAL_COLUMNS",
    "TRIAL_DTYPES",
    "CURVE_COLUMNS",
    "CURVE_DTYPES",
    "STATES",
    "ExperimentFolderError",
    "trial_row",
    "read_experiment",
    "write_experiment",
    "write_trials_table",
    "write_curves",
    "read_trial_rows",
    "read_curve_rows",
    "write_pareto",
    "load_results",
    "load_curves",
    "load_pareto",
]

PathLike = str | os.PathLike

EXPERIMENT_FILE = "experiment.json"
#: experiment.json status of a search whose time budget ended the sitting (every trial drawn has ended)
STOPPED = "stopped"
#: experiment.json statuses in which every trial has ended
ENDED_STATUSES = ("finished", STOPPED)
TRIALS_FILE = "trials.csv"
CURVES_FILE = "curves.csv"
PARETO_FILE = "pareto.csv"
PARETO_PLOT = "pareto.png"
STUDY_FILE = "study.db"
SPACE_FILE = "space.yaml"
#: The files a search keeps in an experiment folder (what no other output may overwrite).
EXPERIMENT_FILES = (EXPERIMENT_FILE, TRIALS_FILE, CURVES_FILE, PARETO_FILE, PARETO_PLOT, STUDY_FILE, SPACE_FILE)


def check_output_file(path: PathLike, what: str) -> Path:
    """``path`` as a file a command may write: not empty, not a directory, not an experiment folder's own file
    nor anything in its subfolders (a symlink is judged by where it points), in a folder that exists and takes
    a new file or can be created.
    Returns ``path`` as given."""
    if not str(path).strip():
        raise ExperimentFolderError(f"{what}: an empty path; give a file name")
    target, real = Path(path), Path(path).resolve()
    if target.is_dir():
        raise ExperimentFolderError(f"{what}: {target} is a directory; give a file name inside it")
    if real.name in EXPERIMENT_FILES and (real.parent / EXPERIMENT_FILE).is_file():
        raise ExperimentFolderError(f"{what}: {target} is a file of the experiment in {real.parent}; "
                                    f"write somewhere else")
    # the subfolders of an experiment (weights/, checkpoints/, ray/) belong to its search
    owner = next((folder for folder in real.parents[1:] if (folder / EXPERIMENT_FILE).is_file()), None)
    if owner is not None:
        raise ExperimentFolderError(f"{what}: {target} is inside {real.relative_to(owner).parts[0]}/ of the "
                                    f"experiment in {owner}, which its search owns; write somewhere else")
    folder = real.parent
    while not folder.exists():  # the nearest existing folder: the missing ones would be created in it
        folder = folder.parent
    if not folder.is_dir():
        raise ExperimentFolderError(f"{what}: {target}: {folder} is not a directory")
    try:
        check_writable(folder)
    except OSError as exc:
        raise ExperimentFolderError(f"{what}: cannot write in {folder}: {exc.strerror or exc}") from None
    return target


def check_writable(folder: Path) -> None:
    """A real write in ``folder`` (permission bits say little to root or on network file systems);
    the OSError when it fails."""
    probe = folder / f".write-test-{os.getpid()}"
    probe.write_text("")
    probe.unlink()

_STR = "string"
_INT = "Int64"
_FLOAT = "float64"
_BOOL = "boolean"

#: ArchSpec fields, one column each, and their dtypes.
_ARCH_DTYPES: dict[str, str] = {
    "scheme": _STR,
    "depth": _INT,
    "width": _INT,
    "stages": _STR,
    "block": _STR,
    "groups": _INT,
    "group_width": _INT,
    "preact": _BOOL,
    "shortcut": _STR,
    "noise": _STR,
    "noise_prob": _FLOAT,
    "lm_k": _STR,
    "lm_k_init": _STR,
    "in_channels": _INT,
    "num_classes": _INT,
    "stem": _STR,
    "base": _STR,
}
ARCH_COLUMNS: tuple[str, ...] = tuple(_ARCH_DTYPES)

#: Column -> dtype of trials.csv / pareto.csv as returned by load_results.
TRIAL_DTYPES: dict[str, str] = {
    "trial_id": _STR,
    "number": _INT,
    "state": _STR,
    **_ARCH_DTYPES,
    "arch_json": _STR,
    "lr": _FLOAT,
    "weight_decay": _FLOAT,
    "batch_size": _INT,
    "epochs": _INT,
    "train_json": _STR,
    "params": _INT,
    "flops": _INT,
    "val_acc": _FLOAT,
    "val_loss": _FLOAT,
    "test_acc": _FLOAT,
    "epochs_run": _INT,
    "wall_time_s": _FLOAT,
    "node_id": _STR,
    "hostname": _STR,
    "dataset": _STR,
    "seed": _INT,
    "error": _STR,
}
#: The columns of trials.csv and pareto.csv, in file order.
TRIAL_COLUMNS: tuple[str, ...] = tuple(TRIAL_DTYPES)

#: Column -> dtype of curves.csv as returned by load_curves.
CURVE_DTYPES: dict[str, str] = {
    "trial_id": _STR,
    "number": _INT,
    "epoch": _INT,
    "train_loss": _FLOAT,
    "val_acc": _FLOAT,
    "val_loss": _FLOAT,
    "images_per_s": _FLOAT,
    "seconds": _FLOAT,
}
CURVE_COLUMNS: tuple[str, ...] = tuple(CURVE_DTYPES)


class ExperimentFolderError(ValueError):
    """A path that is not a readable lmsearch experiment folder."""


# =========================================================================== writing
def _cell(value: Any) -> str:
    """One CSV cell: empty for missing, JSON for containers, full precision for floats."""
    if value is None:
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    if value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def _rows_as_dicts(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> list[Mapping[str, Any]]:
    if isinstance(rows, pd.DataFrame):
        return rows.to_dict(orient="records")
    return list(rows)


def _write_table(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]] | pd.DataFrame,
                 ignore: Sequence[str] = ()) -> None:
    known = set(columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for i, row in enumerate(_rows_as_dicts(rows)):
        unknown = sorted(set(row) - known - set(ignore))
        if unknown:
            raise ValueError(
                f"{path.name}: row {i} has unknown column(s) {unknown}; the columns are {list(columns)}"
            )
        writer.writerow([_cell(row.get(c)) for c in columns])
    atomic_write_text(path, buf.getvalue())


def trial_row(spec: Any, **fields: Any) -> dict[str, Any]:
    """A trials.csv row: the ArchSpec flattened into its columns plus ``fields``.

    ``spec`` is an :class:`lmsearch.ArchSpec` or its ``to_dict()``; ``stages``
    and ``lm_k_init`` become JSON strings and ``arch_json`` the whole spec.

    Example:
        >>> from lmsearch.arch import ArchSpec
        >>> row = trial_row(ArchSpec(scheme="lm", depth=20), trial_id="t0", val_acc=0.9)
        >>> row["scheme"], row["depth"], row["stages"], row["lm_k_init"]
        ('lm', 20, None, '[-0.1, 0.0]')
    """
    data = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    unknown = sorted(set(data) - set(ARCH_COLUMNS))
    if unknown:
        raise ValueError(f"not ArchSpec fields: {unknown}")
    row: dict[str, Any] = {}
    for name in ARCH_COLUMNS:
        value = data.get(name)
        if name in ("stages", "lm_k_init") and value is not None:
            value = json.dumps(list(value))
        row[name] = value
    row["arch_json"] = json.dumps(data, sort_keys=False)
    clash = sorted(set(fields) & set(row))
    if clash:
        raise ValueError(f"fields {clash} come from the spec; do not pass them again")
    row.update(fields)
    return row


def write_experiment(exp_dir: PathLike, meta: Mapping[str, Any]) -> None:
    """Write (or replace) ``experiment.json`` atomically. ``meta`` must be JSON-serialisable."""
    atomic_write_text(Path(exp_dir) / EXPERIMENT_FILE, json.dumps(dict(meta), indent=2) + "\n")


def write_trials_table(exp_dir: PathLike, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> Path:
    """Write ``trials.csv`` (all trials so far) atomically; returns its path.

    Each row is a mapping from :data:`TRIAL_COLUMNS` names to values (see
    :func:`trial_row`); absent keys and ``None``/NaN are written empty, lists
    and tuples as JSON, floats at full precision. An unknown key is a
    ``ValueError`` (the format has one owner). A DataFrame from
    :func:`load_results` is accepted too (its ``experiment`` column is dropped).
    """
    path = Path(exp_dir) / TRIALS_FILE
    _write_table(path, TRIAL_COLUMNS, rows, ignore=("experiment",))
    return path


def read_trial_rows(exp_dir: PathLike) -> list[dict[str, str]]:
    """trials.csv as written: one ``{column: cell text}`` per row ([] when there is none yet).

    Cells are kept as text (an empty cell is ``""``), so rows can be edited and
    written back with :func:`write_trials_table` without changing any value.
    """
    path = Path(exp_dir) / TRIALS_FILE
    raw = _read_csv(path)
    if len(raw.columns):
        try:  # the same checks as load_results: a row that cannot be read back is refused, not carried on
            _check_values(_convert(raw, TRIAL_DTYPES, str(path)), str(path))
        except ValueError as exc:
            raise ExperimentFolderError(str(exc)) from None
    return [{k: ("" if v is None else v) for k, v in row.items()} for row in raw.to_dict(orient="records")]


def read_curve_rows(exp_dir: PathLike) -> list[dict[str, Any]]:
    """curves.csv as typed rows (:data:`CURVE_DTYPES`; missing cells ``None``), [] when there is none yet.

    The reader a running search uses to carry on a file it wrote earlier: trial
    ids stay text (``"87736e49"`` is not the number 8.7736e+53).
    """
    path = Path(exp_dir) / CURVES_FILE
    raw = _read_csv(path)
    if not len(raw.columns):
        return []
    try:
        table = _convert(raw, CURVE_DTYPES, str(path))
        _check_values(table, str(path))
        table = table.astype(object)
    except ValueError as exc:
        raise ExperimentFolderError(str(exc)) from None
    return table.where(table.notna(), None).to_dict(orient="records")


def write_curves(exp_dir: PathLike, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> Path:
    """Write ``curves.csv`` (one row per trial and epoch, :data:`CURVE_COLUMNS`) atomically."""
    path = Path(exp_dir) / CURVES_FILE
    _write_table(path, CURVE_COLUMNS, rows, ignore=("experiment",))
    return path


def write_pareto(
    exp_dir: PathLike,
    rows: Iterable[Mapping[str, Any]] | pd.DataFrame | None = None,
    objectives: Any = None,
) -> Path:
    """Write ``pareto.csv`` atomically; returns its path.

    With ``rows=None`` the front is computed from the folder's trials.csv with
    ``objectives`` (default: experiment.json's ``objectives``, else val_acc
    max / params min) — the usual call at the end of a search or after each
    trial.
    """
    from lmsearch.pareto import pareto_front

    exp = Path(exp_dir)
    if rows is None:
        df = load_results(exp)
        if objectives is None:
            objectives = experiment_objectives(read_experiment(exp), exp / EXPERIMENT_FILE)
        rows = pareto_front(df, objectives)
    path = exp / PARETO_FILE
    _write_table(path, TRIAL_COLUMNS, rows, ignore=("experiment",))
    return path


def experiment_objectives(meta: Mapping[str, Any], where: PathLike = EXPERIMENT_FILE) -> list[tuple[str, str]]:
    """experiment.json's objectives as ``[(column, "max"|"min")]``; val_acc max / params min when absent.

    Raises :class:`ExperimentFolderError` naming ``where`` when they are malformed.
    """
    from lmsearch.pareto import DEFAULT_OBJECTIVES, normalize_objectives

    objs = meta.get("objectives")
    try:
        return normalize_objectives([(o["name"], o["direction"]) for o in objs] if objs else DEFAULT_OBJECTIVES)
    except (TypeError, KeyError, ValueError) as exc:
        raise ExperimentFolderError(f"{where}: bad objectives {objs!r} ({exc})") from None


# =========================================================================== reading
def read_experiment(exp_dir: PathLike) -> dict[str, Any]:
    """``experiment.json`` of a folder, or :class:`ExperimentFolderError` saying what is wrong."""
    path = Path(exp_dir)
    if not path.exists():
        raise ExperimentFolderError(f"{path}: no such directory")
    if not path.is_dir():
        raise ExperimentFolderError(f"{path}: not a directory (expected an experiment folder results/<name>/)")
    meta_path = path / EXPERIMENT_FILE
    if not meta_path.is_file():
        inner = sorted(p.name for p in path.iterdir() if (p / EXPERIMENT_FILE).is_file()) if path.is_dir() else []
        hint = f"; it holds the experiments {', '.join(inner)} — pass one of those folders" if inner else ""
        raise ExperimentFolderError(f"{path}: not an lmsearch experiment folder (no {EXPERIMENT_FILE}){hint}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExperimentFolderError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ExperimentFolderError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def _to_bool(values: pd.Series) -> pd.Series:
    mapping = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False,
               "1.0": True, "0.0": False}
    lowered = values.astype("string").str.strip().str.lower()
    bad = lowered.notna() & ~lowered.isin(list(mapping))
    if bad.any():
        raise ValueError(f"column {values.name!r}: not a boolean: {values[bad].iloc[0]!r}")
    return lowered.map(mapping, na_action="ignore").astype(_BOOL)


def _to_int(values: pd.Series, where: str) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & numbers.isna()
    if bad.any():
        raise ValueError(f"{where}: column {values.name!r} holds a non-number {values[bad].iloc[0]!r}")
    if not (numbers.dropna() % 1 == 0).all():
        raise ValueError(f"{where}: column {values.name!r} holds a non-integer")
    return numbers.astype(_INT)


def _to_float(values: pd.Series, where: str) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & numbers.isna() & ~values.astype("string").str.strip().str.lower().isin(["nan"])
    if bad.any():
        raise ValueError(f"{where}: column {values.name!r} holds a non-number {values[bad].iloc[0]!r}")
    return numbers.astype(_FLOAT)


# values no run writes: an accuracy is a share (NaN when a trial diverged), a count is not negative
_RANGES = {"val_acc": (0.0, 1.0), "test_acc": (0.0, 1.0), "params": (0, None), "flops": (0, None),
           "epochs_run": (0, None), "epoch": (0, None)}


def _check_values(table: pd.DataFrame, where: str) -> None:
    """Refuse a state outside the vocabulary and a value no run writes (a hand-edited or garbled table)."""
    if "state" in table.columns:
        bad = table["state"].notna() & ~table["state"].isin(STATES)
        if bad.any():
            raise ValueError(f"{where}: column 'state' holds {table['state'][bad].iloc[0]!r}; "
                             f"allowed: {', '.join(STATES)}")
    for column, (low, high) in _RANGES.items():
        if column not in table.columns:
            continue
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        bad = np.isinf(values) | (values < low) | (values > (math.inf if high is None else high))  # NaN: False
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            allowed = f"{low} to {high}" if high is not None else f">= {low}"
            raise ValueError(f"{where}: line {i + 2}: {column} is {values[i]:g}; allowed: {allowed} (or empty)")


def _convert(raw: pd.DataFrame, dtypes: Mapping[str, str], where: str) -> pd.DataFrame:
    """Give every known column its dtype, add absent ones empty, keep extras after them."""
    out: dict[str, pd.Series] = {}
    n = len(raw)
    for column, dtype in dtypes.items():
        values = raw[column] if column in raw.columns else pd.Series([pd.NA] * n, index=raw.index, dtype="object")
        values = values.rename(column)
        if dtype == _INT:
            out[column] = _to_int(values, where)
        elif dtype == _FLOAT:
            out[column] = _to_float(values, where)
        elif dtype == _BOOL:
            out[column] = _to_bool(values)
        else:
            out[column] = values.astype(_STR)
    for column in raw.columns:
        if column in dtypes or column == "experiment":
            continue
        numbers = pd.to_numeric(raw[column], errors="coerce")
        out[column] = numbers if numbers.notna().sum() == raw[column].notna().sum() else raw[column].astype(_STR)
    return pd.DataFrame(out, index=raw.index)


# what to do about a damaged table: a search reads its tables back to carry them on, so it cannot repair one
_RESTORE = "restore the file from a copy (e.g. `git checkout -- FILE` for a committed experiment)"


def _read_csv(path: Path) -> pd.DataFrame:
    """A table written by :func:`_write_table`, every cell as text (empty cells NA); refuses a damaged file.

    The writers end every row with a newline and give every row the header's
    number of cells, so a file cut short (a last line without its newline: a
    truncated ``0.828`` would otherwise read as ``0.8``) or a garbled row is an
    :class:`ExperimentFolderError` naming the file and line, never a quietly
    different table.
    """
    if not path.exists() and not path.is_symlink():
        return pd.DataFrame()  # not written yet: a search writes its tables as trials start
    if not path.is_file():
        raise ExperimentFolderError(f"{path}: not a file; a search writes its tables there")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ExperimentFolderError(f"{path}: not a text table (byte {exc.start} is not UTF-8)") from None
    if not text:  # the writer always writes the header line, and replaces the file atomically
        raise ExperimentFolderError(
            f"{path}: empty (even a table without rows has its header line); {_RESTORE}")
    if not text.endswith("\n"):
        raise ExperimentFolderError(
            f"{path}: cut short (its last line has no newline, so its last value may be truncated); {_RESTORE}")
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise ExperimentFolderError(f"{path}: not a readable CSV table ({exc})") from None
    header, body = rows[0], rows[1:]
    if len(set(header)) < len(header):
        raise ExperimentFolderError(f"{path}: repeated column names in the header {header}")
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ExperimentFolderError(
                f"{path}: line {line} has {len(row)} cells, the header has {len(header)} (garbled or cut short)")
    table = pd.DataFrame(body, columns=header, dtype=object)
    return table.where(table != "", None) if len(table) else table


def _as_paths(path_or_paths: PathLike | Iterable[PathLike]) -> list[Path]:
    if isinstance(path_or_paths, (str, os.PathLike)):
        return [Path(path_or_paths)]
    paths = [Path(p) for p in path_or_paths]
    if not paths:
        raise ValueError("no experiment folder given")
    return paths


def _empty(dtypes: Mapping[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=d) for c, d in dtypes.items()})


def _load_one(exp: Path, file_name: str, dtypes: Mapping[str, str], unique: bool) -> pd.DataFrame:
    meta = read_experiment(exp)
    name = str(meta.get("name") or exp.name)
    raw = _read_csv(exp / file_name)
    where = str(exp / file_name)
    try:
        table = _convert(raw, dtypes, where) if len(raw.columns) else _empty(dtypes)
        _check_values(table, where)
    except ValueError as exc:
        raise ExperimentFolderError(str(exc)) from None
    if unique and len(table):
        # the writers give every trial one row: a repeated id is a hand-edited or garbled table
        repeated = table["trial_id"].notna() & table["trial_id"].duplicated(keep=False)
        if repeated.any():
            lines = [int(i) + 2 for i in table.index[repeated.to_numpy(dtype=bool)]]
            raise ExperimentFolderError(f"{where}: trial_id {table['trial_id'][repeated].iloc[0]!r} appears on more "
                                        f"than one line (lines {lines[:5]}); every trial has one row")
    table.insert(0, "experiment", pd.Series([name] * len(table), index=table.index, dtype=_STR))
    return table


def _load_many(path_or_paths: PathLike | Iterable[PathLike], file_name: str, dtypes: Mapping[str, str],
               unique: bool, sort_by: list[str]) -> pd.DataFrame:
    paths = _as_paths(path_or_paths)
    names = [str(read_experiment(p).get("name") or p.name) for p in paths]
    if len(set(names)) < len(names):
        raise ExperimentFolderError(
            f"experiment folders {[str(p) for p in paths]} carry the names {names}; "
            "each experiment may be given once and names must differ (see experiment.json)"
        )
    tables = [_load_one(p, file_name, dtypes, unique) for p in paths]
    df = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0].reset_index(drop=True)
    order = pd.Categorical(df["experiment"], categories=list(dict.fromkeys(df["experiment"])))
    df = (df.assign(_order=order.codes).sort_values(["_order", *sort_by], kind="stable", na_position="last")
          .drop(columns="_order").reset_index(drop=True))
    for column, dtype in {"experiment": _STR, **dtypes}.items():
        if df[column].dtype != dtype:
            df[column] = df[column].astype(dtype)
    return df


def load_results(path_or_paths: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    """One row per trial of one or several experiment folders.

    Columns: ``experiment`` then :data:`TRIAL_COLUMNS` with the dtypes of
    :data:`TRIAL_DTYPES` (see the module docstring), then any extra column of
    the file. Rows are sorted by experiment (in the order given) and Optuna
    trial number; the index is a fresh RangeIndex.

    Works while a search runs or after it was interrupted (RUNNING rows are
    kept as written; pareto.csv is not needed) and after a resume. A trial id
    on two rows is refused (:class:`ExperimentFolderError`): the writers give
    every trial one row. A folder with experiment.json
    but no trials.csv yet gives zero rows. A path that is not an experiment
    folder raises :class:`ExperimentFolderError`. ``df.attrs["experiments"]``
    maps each experiment name to its experiment.json.

    Example:
        >>> import lmsearch
        >>> df = lmsearch.load_results(["results/compression-fashion-mnist/cpu",
        ...                              "results/compression-fashion-mnist/cpu-sd"])
        >>> df.groupby("experiment").size().to_dict()
        {'compression-fashion-mnist-cpu': 18, 'compression-fashion-mnist-cpu-sd': 9}
    """
    df = _load_many(path_or_paths, TRIALS_FILE, TRIAL_DTYPES, unique=True, sort_by=["number"])
    df.attrs["experiments"] = {
        str(meta.get("name") or p.name): meta for p in _as_paths(path_or_paths) for meta in [read_experiment(p)]
    }
    return df


def load_curves(path_or_paths: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    """Per-epoch learning curves: ``experiment`` then :data:`CURVE_COLUMNS` (dtypes :data:`CURVE_DTYPES`).

    Sorted by experiment, trial number and epoch; zero rows when a folder has
    no curves.csv yet. A resumed trial's repeated epoch keeps its last row.
    """
    df = _load_many(path_or_paths, CURVES_FILE, CURVE_DTYPES, unique=False, sort_by=["number", "trial_id", "epoch"])
    if len(df):
        df = df.drop_duplicates(["experiment", "trial_id", "epoch"], keep="last").reset_index(drop=True)
    return df


def load_pareto(exp_dir: PathLike) -> pd.DataFrame:
    """pareto.csv of one folder as written: ``experiment`` then :data:`TRIAL_COLUMNS` (zero rows when absent)."""
    return _load_many(exp_dir, PARETO_FILE, TRIAL_DTYPES, unique=True, sort_by=[])


def _arch_fields() -> tuple[str, ...]:
    """ArchSpec's init fields (kept equal to ARCH_COLUMNS; a test checks)."""
    from lmsearch.arch import ArchSpec

    return tuple(f.name for f in dataclasses.fields(ArchSpec) if f.init)
