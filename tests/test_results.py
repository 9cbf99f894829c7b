"""The experiment folder format: writers and load_results/load_curves, columns and dtypes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmsearch import results
from lmsearch.arch import ArchSpec
from lmsearch.pareto import pareto_front
from lmsearch.results import (
    ARCH_COLUMNS,
    CURVE_COLUMNS,
    CURVE_DTYPES,
    TRIAL_COLUMNS,
    TRIAL_DTYPES,
    ExperimentFolderError,
    load_curves,
    load_results,
    trial_row,
    write_curves,
    write_experiment,
    write_pareto,
    write_trials_table,
)

OBJECTIVES = [{"name": "val_acc", "direction": "maximize"}, {"name": "params", "direction": "minimize"}]


def _row(n: int, spec: ArchSpec, state: str = "COMPLETE", **kw) -> dict:
    done = state == "COMPLETE"
    base = dict(trial_id=f"id{n:03d}", number=n, state=state, lr=0.1 / (n + 1), weight_decay=5e-4, batch_size=128,
                epochs=4, params=1000 + 37 * n, flops=10**7 + n, val_acc=0.5 + n / 100 + 1e-13, val_loss=0.7,
                test_acc=0.49 + n / 100 if done else None, epochs_run=4 if done else 1, wall_time_s=3.25,
                node_id="node-a", hostname="host", dataset="fashion-mnist", seed=n % 3,
                error="RuntimeError: boom" if state == "FAILED" else None)
    base.update(kw)
    return trial_row(spec, **base)


def make_experiment(root: Path, name: str = "demo", status: str = "finished", running: bool = False) -> Path:
    exp = root / name
    write_experiment(exp, {"name": name, "dataset": "fashion-mnist", "objectives": OBJECTIVES, "seed": 0,
                           "created": "2025-01-01T00:00:00", "study": "study.db", "status": status})
    specs = [ArchSpec(scheme="euler", depth=20, width=8, in_channels=1),
             ArchSpec(scheme="lm", depth=32, width=8, in_channels=1, noise="stochastic_depth", noise_prob=0.2),
             ArchSpec(scheme="rk2", stages=(2, 2), depth=10, width=4, preact=False, in_channels=1)]
    rows = [_row(i, specs[i % 3], state) for i, state in enumerate(["COMPLETE", "COMPLETE", "PRUNED", "FAILED",
                                                                     "COMPLETE", "COMPLETE"])]
    if running:
        rows.append(_row(6, specs[0], "RUNNING", val_acc=None, val_loss=None, params=1000, flops=None))
    write_trials_table(exp, rows)
    write_curves(exp, [dict(trial_id=r["trial_id"], number=r["number"], epoch=e, train_loss=1.0 / e,
                            val_acc=0.5, val_loss=0.6, images_per_s=1234.5, seconds=2.0)
                       for r in rows for e in range(1, 3)])
    if not running:
        write_pareto(exp)
    return exp


def test_arch_columns_are_the_archspec_fields() -> None:
    assert ARCH_COLUMNS == tuple(f.name for f in dataclasses.fields(ArchSpec) if f.init)
    assert list(TRIAL_COLUMNS) == list(TRIAL_DTYPES)
    assert set(ARCH_COLUMNS) < set(TRIAL_COLUMNS)


def test_columns_dtypes_and_values(tmp_path: Path) -> None:
    exp = make_experiment(tmp_path)
    df = load_results(exp)
    assert list(df.columns) == ["experiment", *TRIAL_COLUMNS]
    assert {c: str(t) for c, t in df.dtypes.items()} == {"experiment": "string", **TRIAL_DTYPES}
    assert len(df) == 6 and df["number"].tolist() == list(range(6))
    assert df["state"].tolist() == ["COMPLETE", "COMPLETE", "PRUNED", "FAILED", "COMPLETE", "COMPLETE"]
    # floats round-trip exactly, ints stay ints, missing values are NA
    assert df.loc[0, "val_acc"] == 0.5 + 1e-13
    assert df.loc[1, "lr"] == 0.1 / 2
    assert df.loc[2, "test_acc"] != df.loc[2, "test_acc"]  # NaN: pruned
    assert df.loc[3, "error"] == "RuntimeError: boom" and pd.isna(df.loc[0, "error"])
    assert df.loc[4, "params"] == 1000 + 37 * 4
    # ArchSpec fields: stages NA when derived, JSON otherwise; booleans; the full spec round-trips
    assert pd.isna(df.loc[0, "stages"]) and json.loads(df.loc[2, "stages"]) == [2, 2]
    assert bool(df.loc[0, "preact"]) is True and bool(df.loc[2, "preact"]) is False
    assert json.loads(df.loc[1, "lm_k_init"]) == [-0.1, 0.0]
    assert df.loc[1, "noise_prob"] == 0.2
    assert ArchSpec.from_json(df.loc[1, "arch_json"]) == ArchSpec(
        scheme="lm", depth=32, width=8, in_channels=1, noise="stochastic_depth", noise_prob=0.2)
    assert df.attrs["experiments"]["demo"]["status"] == "finished"


def test_pareto_csv_is_the_front(tmp_path: Path) -> None:
    exp = make_experiment(tmp_path)
    written = pd.read_csv(exp / "pareto.csv", dtype={"trial_id": str})
    assert list(written.columns) == list(TRIAL_COLUMNS)
    expected = pareto_front(load_results(exp))
    assert written["trial_id"].tolist() == expected["trial_id"].tolist()
    assert not [p for p in exp.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave nothing behind


def test_interrupted_experiment_loads(tmp_path: Path) -> None:
    exp = make_experiment(tmp_path, status="interrupted", running=True)
    assert not (exp / "pareto.csv").exists()
    df = load_results(exp)
    assert len(df) == 7 and df["state"].iloc[-1] == "RUNNING"
    assert pd.isna(df["flops"].iloc[-1]) and str(df["flops"].dtype) == "Int64"
    assert "id006" not in set(pareto_front(df)["trial_id"])


def test_several_experiments_concatenated(tmp_path: Path) -> None:
    a = make_experiment(tmp_path, "alpha")
    b = make_experiment(tmp_path, "beta", running=True)
    df = load_results([b, a])
    assert list(dict.fromkeys(df["experiment"])) == ["beta", "alpha"]
    assert (df["experiment"] == "alpha").sum() == 6 and (df["experiment"] == "beta").sum() == 7
    assert str(df["experiment"].dtype) == "string" and df.index.tolist() == list(range(13))
    with pytest.raises(ExperimentFolderError, match="names"):
        load_results([a, a])


def test_not_an_experiment_is_a_clear_error(tmp_path: Path) -> None:
    make_experiment(tmp_path, "inner")
    with pytest.raises(ExperimentFolderError, match=r"no experiment\.json.*inner"):
        load_results(tmp_path)
    with pytest.raises(ExperimentFolderError, match="no such directory"):
        load_results(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "experiment.json").write_text("{not json")
    with pytest.raises(ExperimentFolderError, match="not valid JSON"):
        load_results(tmp_path / "bad")


def test_new_experiment_without_trials(tmp_path: Path) -> None:
    write_experiment(tmp_path / "new", {"name": "new", "status": "running"})
    df = load_results(tmp_path / "new")
    assert len(df) == 0 and list(df.columns) == ["experiment", *TRIAL_COLUMNS]
    assert str(df["params"].dtype) == "Int64"
    assert len(load_curves(tmp_path / "new")) == 0


def test_writer_refuses_unknown_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="val_accuracy"):
        write_trials_table(tmp_path, [{"trial_id": "x", "val_accuracy": 0.9}])
    with pytest.raises(ValueError, match="come from the spec"):
        trial_row(ArchSpec(), depth=20)


def test_extra_column_kept_and_bad_int_refused(tmp_path: Path) -> None:
    exp = make_experiment(tmp_path)
    raw = pd.read_csv(exp / "trials.csv", dtype={"trial_id": str})
    raw["note"] = np.arange(len(raw))
    raw.to_csv(exp / "trials.csv", index=False)
    df = load_results(exp)
    assert df.columns[-1] == "note" and df["note"].tolist() == list(range(6))
    raw["depth"] = "deep"
    raw.to_csv(exp / "trials.csv", index=False)
    with pytest.raises(ValueError, match="depth"):
        load_results(exp)


def test_curves(tmp_path: Path) -> None:
    exp = make_experiment(tmp_path)
    curves = load_curves(exp)
    assert list(curves.columns) == ["experiment", *CURVE_COLUMNS]
    assert {c: str(t) for c, t in curves.dtypes.items()} == {"experiment": "string", **CURVE_DTYPES}
    assert len(curves) == 12 and curves["epoch"].tolist()[:2] == [1, 2]
    assert curves["train_loss"].tolist()[:2] == [1.0, 0.5]


# ---------------------------------------------------------------- one reader, ids that look like numbers
NUMBERLIKE_IDS = ["12345678", "00012300", "1e100000", "87736e49", "00000000", "1_000", "nan", "inf", "True"]


def test_ids_that_look_like_numbers_survive_every_reader(tmp_path: Path) -> None:
    results.write_experiment(tmp_path, {"name": "ids"})
    results.write_trials_table(tmp_path, [{"trial_id": t, "number": i, "state": "COMPLETE", "val_acc": 0.5}
                                          for i, t in enumerate(NUMBERLIKE_IDS)])
    results.write_curves(tmp_path, [{"trial_id": t, "number": i, "epoch": 1, "val_acc": 0.5}
                                    for i, t in enumerate(NUMBERLIKE_IDS)])
    assert list(results.load_results(tmp_path).trial_id) == NUMBERLIKE_IDS
    assert sorted(results.load_curves(tmp_path).trial_id) == sorted(NUMBERLIKE_IDS)
    assert [r["trial_id"] for r in results.read_trial_rows(tmp_path)] == NUMBERLIKE_IDS
    rows = results.read_curve_rows(tmp_path)
    assert [r["trial_id"] for r in rows] == NUMBERLIKE_IDS
    assert all(type(r["epoch"]) is int and r["train_loss"] is None for r in rows)
    # what a resumed search does: read, then write back; nothing may change
    before = (tmp_path / results.CURVES_FILE).read_bytes()
    results.write_curves(tmp_path, rows)
    assert (tmp_path / results.CURVES_FILE).read_bytes() == before


def test_recorder_reads_curves_through_the_one_reader(tmp_path: Path) -> None:
    from lmsearch.recorder import TrialRecorder
    from lmsearch.space import load_space

    results.write_curves(tmp_path, [{"trial_id": "87736e49", "number": 0, "epoch": 1, "val_acc": 0.25}])
    (tmp_path / "s.yaml").write_text("name: x\ndataset: {name: synthetic}\narchitecture: {scheme: euler}\n")
    space = load_space(tmp_path / "s.yaml")
    recorder = TrialRecorder(space, tmp_path)
    results.write_curves(tmp_path, list(recorder._curves.values()))
    assert results.read_curve_rows(tmp_path)[0]["trial_id"] == "87736e49"


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[:-3], "cut short"),                      # "...0.828\n" -> "...0.8"
    (lambda text: text + "a,1\n", "cells"),                       # a row with too few cells
    (lambda text: text.replace("0.828", "0.8x8"), "non-number"),  # a garbled number
    (lambda text: text.replace("COMPLETE", "COMPLETED"), "allowed"),
    (lambda text: text.replace("0.828", "1.5"), r"line 2: val_acc is 1.5; allowed: 0.0 to 1.0 \(or empty\)"),
    (lambda text: text.replace("0.828", "inf"), "line 2: val_acc is inf; allowed"),
    (lambda text: text.replace(",10,", ",-10,"), "line 2: params is -10; allowed: >= 0"),
])
def test_a_damaged_table_is_refused_not_misread(tmp_path: Path, damage, message: str) -> None:
    results.write_experiment(tmp_path, {"name": "damaged"})
    results.write_trials_table(tmp_path, [{"trial_id": "a", "number": 0, "state": "COMPLETE", "params": 10,
                                           "val_acc": 0.828}])
    path = tmp_path / results.TRIALS_FILE
    assert results.load_results(tmp_path).val_acc.iloc[0] == 0.828
    path.write_text(damage(path.read_text()))
    with pytest.raises(results.ExperimentFolderError, match=message):
        results.load_results(tmp_path)


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_text(""), "empty"),  # the writer always writes the header line
    (lambda path: (path.unlink(), path.mkdir()), "not a file"),
    (lambda path: (path.unlink(), path.symlink_to(path.parent / "moved.csv")), "not a file"),  # a dangling link
])
def test_an_empty_or_non_file_table_is_refused_not_read_as_no_trials(tmp_path: Path, damage, message: str) -> None:
    results.write_experiment(tmp_path, {"name": "damaged"})
    results.write_trials_table(tmp_path, [])
    assert results.load_results(tmp_path).empty  # a table without rows: the search has no trial yet
    damage(tmp_path / results.TRIALS_FILE)
    with pytest.raises(results.ExperimentFolderError, match=message):
        results.load_results(tmp_path)
    with pytest.raises(results.ExperimentFolderError, match=message):
        results.read_trial_rows(tmp_path)


def test_a_trial_on_two_rows_is_refused(tmp_path: Path) -> None:
    results.write_experiment(tmp_path, {"name": "dup"})
    rows = [{"trial_id": "a", "number": 0, "state": "COMPLETE", "val_acc": 0.5, "params": 1}]
    results.write_trials_table(tmp_path, rows + [{**rows[0], "val_acc": 0.9}])
    with pytest.raises(results.ExperimentFolderError, match="'a' appears on more than one line"):
        results.load_results(tmp_path)


@pytest.mark.parametrize("name", ["trials.csv", "study.db", ""])
def test_outputs_never_overwrite_an_experiment(tmp_path: Path, name: str) -> None:
    results.write_experiment(tmp_path, {"name": "x"})
    with pytest.raises(results.ExperimentFolderError):
        results.check_output_file(tmp_path / name if name else "", "--plot")
    assert results.check_output_file(tmp_path / "front.png", "--plot") == tmp_path / "front.png"
