"""One truth: study.db, trials.csv, curves.csv and pareto.csv agree on every path a trial can take.

Real searches through ``lmsearch search`` (a synthetic dataset, tiny nets), with
LMSEARCH_FAULTS sending trials down each path: complete after its worker was
SIGKILLed and retried, raises, diverges (non-finite loss), non-finite weights
with a finite loss, a non-finite objective, pruned by the space's pruner; then
a driver SIGKILLed and ``--resume``d, and resumed again without ``ray/``. After
each, :func:`lmsearch.consistency.check_experiment` finds nothing, and each
check is shown to catch a folder corrupted one file at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest

import lmsearch
from lmsearch import results
from lmsearch.consistency import check, check_experiment
from lmsearch.states import COMPLETE, FAILED, PRUNED, RUNNING

pytestmark = pytest.mark.slow

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}

# Every trial is the same configuration, so the Pareto pruner (rung at epoch 2: 2 * 3 >= 3) keeps the
# first trial that reaches epoch 2 and stops every later one that ties with it: trial 5 (the only other
# one that reaches the rung) is PRUNED, whatever the accuracies are.
PATHS = """
name: paths
dataset: {name: synthetic, subset: 128}
budget: {epochs: 3}
architecture: {scheme: euler, depth: 8, width: 4}
training: {lr: 0.05, batch_size: 64}
search: {sampler: random, num_samples: 6, seed: 0, max_concurrent: 1, pruner: {name: pareto, eta: 3, min_epochs: 2}}
resources: {cpu: 1, max_failures: 1}
"""
# trial number -> (the fault, the state it must end in, a phrase of its trials.csv error)
EXPECTED = {
    0: ("kill@0:3", COMPLETE, None),  # worker SIGKILLed at epoch 3, retried from its epoch-2 checkpoint
    1: ("raise@1:2", FAILED, "InjectedFault: injected fault in trial 1 at epoch 2"),
    2: ("diverge@2:2", FAILED, "the training loss is nan"),
    3: ("nan@3:2", FAILED, "holds NaN or infinite values although the training loss stayed finite"),
    4: ("nanval@4:2", FAILED, "the validation loss is nan although the training loss"),
    5: ("", PRUNED, None),
}
OPTUNA_STATE = {COMPLETE: optuna.trial.TrialState.COMPLETE, PRUNED: optuna.trial.TrialState.PRUNED,
                FAILED: optuna.trial.TrialState.FAIL}

GRID = """
name: chain
dataset: {name: synthetic, subset: 256}
budget: {epochs: 4}
architecture: {scheme: euler, depth: [8, 14], width: 4}
training: {lr: 0.05, batch_size: 32, seed: [1, 2, 3]}
search: {sampler: grid, max_concurrent: 1}
resources: {cpu: 1, max_failures: 0}
"""


def lmsearch_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmsearch", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=600)


def study(exp: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{exp / 'study.db'}")


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished search whose six trials take six paths (see EXPECTED)."""
    tmp = tmp_path_factory.mktemp("paths")
    space = tmp / "paths.yaml"
    space.write_text(textwrap.dedent(PATHS))
    faults = ",".join(fault for fault, _, _ in EXPECTED.values() if fault)
    proc = lmsearch_cli("search", str(space), "--out", str(tmp / "exp"), "--quiet",
                        env={**ENV, "LMSEARCH_FAULTS": faults, "LMSEARCH_FAULTS_DIR": str(tmp)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp / "kill-0-3").exists()  # the kill fired: trial 0's worker died at epoch 3
    return tmp / "exp"


# ----------------------------------------------------------------------------- every path of a trial
def test_every_trial_path_ends_in_its_state_and_the_files_agree(paths: Path) -> None:
    assert check_experiment(paths) == []
    df = lmsearch.load_results(paths).set_index("number")
    trials = {t.number: t for t in study(paths, "paths").get_trials()}
    assert sorted(df.index) == sorted(trials) == sorted(EXPECTED)
    for number, (fault, state, error) in EXPECTED.items():
        assert df.loc[number, "state"] == state, (fault, df.loc[number].to_dict())
        assert trials[number].state == OPTUNA_STATE[state], fault
        if error:
            assert error in df.loc[number, "error"], (fault, df.loc[number, "error"])
    assert df.loc[0, "epochs_run"] == 3 and list(trials[0].values) == [df.loc[0, "val_acc"], df.loc[0, "params"]]
    assert trials[5].user_attrs["pruned_at_epoch"] == 2 and df.loc[5, "epochs_run"] == 2
    assert df.loc[1, "epochs_run"] == 1 and trials[1].intermediate_values.keys() == {1}
    front = results.load_pareto(paths)
    assert list(front.number) == [t.number for t in study(paths, "paths").best_trials] == [0]


def test_check_command_reports_a_consistent_folder_and_changes_nothing(paths: Path, tmp_path: Path) -> None:
    odd = tmp_path / "a dir#?x"  # characters a database URL would misread
    shutil.copytree(paths, odd / "exp", ignore=shutil.ignore_patterns("ray", "checkpoints"))
    before = {p: p.read_bytes() for folder in (paths, tmp_path) for p in folder.rglob("*") if p.is_file()}
    proc = lmsearch_cli("check", str(paths), str(odd / "exp"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == "".join(f"{folder}: consistent: 6 trials (1 complete, 1 pruned, 4 failed); "
                                  f"status finished\n"
                                  for folder in (paths, odd / "exp"))
    after = {p: p.read_bytes() for folder in (paths, tmp_path) for p in folder.rglob("*") if p.is_file()}
    assert after == before  # the study is opened read-only: no file changed, none created


def test_check_counts_the_trials_a_resume_would_still_run(paths: Path, tmp_path: Path) -> None:
    exp = _copy(paths, tmp_path)
    meta = json.loads((exp / "experiment.json").read_text())

    def summary(**changes: Any) -> str:
        (exp / "experiment.json").write_text(json.dumps({k: v for k, v in {**meta, **changes}.items()
                                                         if v is not None}))
        return check(exp).summary()

    # six finished trials (1 complete, 1 pruned, 4 failed: a failed trial is done, not run again)
    assert summary(status="interrupted", num_samples=10).endswith("; status interrupted: 4 of 10 trials left to run")
    assert summary(status="stopped", num_samples=6).endswith("; status stopped")  # none left
    assert summary(status="finished", num_samples=10).endswith("; status finished")
    assert summary(status="interrupted", num_samples=None).endswith("; status interrupted")
    # an orphan (failed by a resume, its configuration queued again) will run again: it is not done
    with sqlite3.connect(exp / "study.db") as db:
        trial_id = db.execute("SELECT trial_id FROM trials WHERE number = 1").fetchone()[0]
        db.execute("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?, ?, ?)",
                   (trial_id, "orphaned", json.dumps("queued again")))
    assert summary(status="interrupted", num_samples=10).endswith("; status interrupted: 5 of 10 trials left to run")


# ----------------------------------------------------------------------------- the check catches each disagreement
def _copy(paths: Path, tmp_path: Path) -> Path:
    exp = tmp_path / "exp"
    shutil.copytree(paths, exp, ignore=shutil.ignore_patterns("ray", "checkpoints"))
    assert check_experiment(exp) == []  # the untouched copy agrees
    return exp


def _edit_row(trial: int, /, **cells: str) -> Callable[[Path], None]:
    def edit(exp: Path) -> None:
        rows = results.read_trial_rows(exp)
        for row in rows:
            if row["number"] == str(trial):
                row.update(cells)
        results.write_trials_table(exp, rows)
    return edit


def _drop_row(number: int) -> Callable[[Path], None]:
    def edit(exp: Path) -> None:
        results.write_trials_table(exp, [r for r in results.read_trial_rows(exp) if r["number"] != str(number)])
    return edit


def _drop_pareto(exp: Path) -> None:
    front = results.load_pareto(exp)
    results.write_pareto(exp, front[front.number != 0])


def _extra_curve(trial_id: str | None = None, epoch: int = 4) -> Callable[[Path], None]:
    def edit(exp: Path) -> None:
        rows = results.read_curve_rows(exp)
        last = dict(next(r for r in rows if r["number"] == 0 and r["epoch"] == 3))
        last.update(epoch=epoch, val_acc=0.5)
        if trial_id is not None:
            last.update(trial_id=trial_id, number=9)
        results.write_curves(exp, [*rows, last])
    return edit


def _curve_value(exp: Path) -> None:
    rows = results.read_curve_rows(exp)
    for row in rows:
        if row["number"] == 1 and row["epoch"] == 1:
            row["val_acc"] = 0.987
    results.write_curves(exp, rows)


def _objectives_swapped(exp: Path) -> None:
    meta = results.read_experiment(exp)
    results.write_experiment(exp, {**meta, "objectives": meta["objectives"][::-1]})


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "changed state": (_edit_row(1, state=PRUNED),
                      ["trials.csv trial 1 (id {1}): state is PRUNED but study.db records FAILED"]),
    "pruned made complete": (_edit_row(5, state=COMPLETE),
                             ["trials.csv trial 5 (id {5}): state is COMPLETE but study.db records PRUNED",
                              "pareto.csv: no row for trial 5, which is on the front of trials.csv"]),
    "changed value": (_edit_row(0, val_acc="0.5"),
                      ["trials.csv trial 0 (id {0}): val_acc is 0.5 but study.db's value of val_acc is {acc}",
                       "pareto.csv trial 0 (id {0}): val_acc is {acc} but trials.csv has 0.5"]),
    "changed params": (_edit_row(0, params="12"),
                       ["trials.csv trial 0 (id {0}): params is 12 but study.db's value of params is {params}"]),
    "changed trial id": (_edit_row(3, trial_id="deadbeef"),
                         ["trials.csv trial 3 (id deadbeef): trial_id is deadbeef but study.db's trial 3 is the Ray "
                          "trial {3}"]),
    "number on two rows": (_edit_row(3, number="2"),
                           ["trials.csv: trial number 2 is on 2 rows, of trial ids {2}, {3} (column number)",
                            "trials.csv: no row for trial 3, which study.db records as FAILED"]),
    "other objectives": (_objectives_swapped,
                         ["study.db: the study's directions ['max', 'min'] are not experiment.json's objectives "
                          "[('params', 'min'), ('val_acc', 'max')]"]),
    "missing trials row": (_drop_row(3),
                           ["trials.csv: no row for trial 3, which study.db records as FAILED",
                            "which has no row in trials.csv"]),
    "running row of a finished search": (_edit_row(0, state=RUNNING),
                                         ["trials.csv trial 0 (id {0}): state is RUNNING but experiment.json says "
                                          "the search finished"]),
    "missing pareto row": (_drop_pareto,
                           ["pareto.csv: no row for trial 0, which is on study.db's front (study.best_trials)",
                            "pareto.csv: no row for trial 0, which is on the front of trials.csv"]),
    "extra curves row": (_extra_curve(),
                         ["curves.csv trial 0 (id {0}): the last epoch is 4 but trials.csv's epochs_run is 3",
                          "curves.csv trial 0 (id {0}): val_acc at epoch 4 is 0.5, but study.db has no intermediate "
                          "value there"]),
    "curves row of no trial": (_extra_curve("0badf00d"),
                               ["curves.csv: 1 row(s) of trial 9 (id 0badf00d) (epochs 4), which has no row in "
                                "trials.csv"]),
    "changed curve value": (_curve_value,
                            ["curves.csv trial 1 (id {1}): val_acc at epoch 1 is 0.987 but study.db's intermediate "
                             "value is {curve1}"]),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_the_check_names_each_disagreement(paths: Path, tmp_path: Path, name: str) -> None:
    exp = _copy(paths, tmp_path)
    df = lmsearch.load_results(exp).set_index("number")
    ids = {str(n): df.loc[n, "trial_id"] for n in df.index}
    curve1 = study(exp, "paths").get_trials()[1].intermediate_values[1]
    corrupt, expected = CORRUPTIONS[name]
    corrupt(exp)
    found = check_experiment(exp)
    for phrase in expected:
        phrase = phrase.format(*[ids[str(n)] for n in range(6)], acc=df.loc[0, "val_acc"],
                               params=float(df.loc[0, "params"]), curve1=curve1)
        assert any(phrase in line for line in found), f"{phrase!r} not in {found}"


def test_check_command_lists_disagreements_and_refuses_unreadable_folders(paths: Path, tmp_path: Path) -> None:
    bad = _copy(paths, tmp_path)
    _edit_row(1, state=PRUNED)(bad)
    proc = lmsearch_cli("check", str(paths), str(bad))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{paths}: consistent: 6 trials (1 complete, 1 pruned, 4 failed); status finished"
    assert lines[1] == f"{bad}: 1 disagreement between study.db and the tables:"
    assert lines[2].startswith("  - trials.csv trial 1 (id ") and "state is PRUNED but study.db records FAILED" in \
        lines[2]

    no_study, cut, garbage, empty = (_copy(paths, tmp_path / name) for name in ("no-study", "cut", "garbage", "empty"))
    (no_study / "study.db").unlink()
    (empty / "study.db").write_bytes(b"")
    (empty / "trials.csv").write_bytes(b"")
    text = (cut / "trials.csv").read_text()
    (cut / "trials.csv").write_text(text[:-5])
    (garbage / "study.db").write_bytes(b"not a database\n" * 100)
    for folder, phrase in ((tmp_path / "nowhere", "no such directory"),
                           (tmp_path, "not an lmsearch experiment folder"),
                           (no_study, f"{no_study / 'study.db'}: no such file"),
                           (cut, f"{cut / 'trials.csv'}: cut short"),
                           (garbage, f"{garbage / 'study.db'}: not a readable Optuna study"),
                           (empty, f"{empty / 'trials.csv'}: empty")):
        proc = lmsearch_cli("check", str(folder))
        assert proc.returncode == 2, (folder, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("lmsearch check: error: ") and phrase in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert (garbage / "study.db").read_bytes() == b"not a database\n" * 100  # read-only: not touched
    (empty / "trials.csv").write_text((paths / "trials.csv").read_text())
    proc = lmsearch_cli("check", str(empty))
    assert proc.returncode == 2 and f"{empty / 'study.db'}: empty (0 bytes), not an Optuna study" in proc.stderr
    assert (empty / "study.db").read_bytes() == b""


def test_fault_rules_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmsearch.faults import maybe_inject_fault

    for rule, phrase in (("nan@1:1", "'nan@1:1': nan acts during an epoch >= 2"),
                         ("boom@1:2", "bad rule 'boom@1:2'"), ("raise@x:2", "bad rule 'raise@x:2'")):
        monkeypatch.setenv("LMSEARCH_FAULTS", rule)
        with pytest.raises(ValueError, match=phrase):
            maybe_inject_fault(1, 1)
    monkeypatch.setenv("LMSEARCH_FAULTS", "raise@1:2")
    maybe_inject_fault(1, 1)  # not its epoch: nothing happens


# ----------------------------------------------------------------------------- a killed driver, resumed
def _start(space: Path, exp: Path, logs: Path, *extra: str) -> subprocess.Popen:
    n = len(list(logs.glob("*.err")))
    with open(logs / f"{n}.out", "w") as out, open(logs / f"{n}.err", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "lmsearch", "search", str(space), "--out", str(exp), "--quiet",
                                 *extra], stdout=out, stderr=err, env=ENV, start_new_session=True)


def _kill_mid_trial(proc: subprocess.Popen, exp: Path, finished: int, logs: Path) -> None:
    """SIGKILL the driver once ``finished`` trials have ended and another has trained an epoch."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (exp / "trials.csv").is_file():
            df = lmsearch.load_results(exp)
            if (df.state == COMPLETE).sum() >= finished and ((df.state == RUNNING) & (df.epochs_run >= 1)).any():
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
                time.sleep(2)  # Ray's reaper takes down the local cluster of the killed driver
                return
        time.sleep(0.1)
    err = sorted(logs.glob("*.err"))[-1].read_text()
    raise AssertionError(f"no trial was mid-way after {finished} finished (search exit {proc.poll()}): {err[-3000:]}")


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def _resume(space: Path, exp: Path) -> None:
    proc = lmsearch_cli("search", str(space), "--out", str(exp), "--quiet", "--resume")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((exp / "experiment.json").read_text())["status"] == "finished"


def test_driver_killed_then_resumed_with_and_without_ray_state(tmp_path: Path) -> None:
    space, exp = tmp_path / "chain.yaml", tmp_path / "exp"
    space.write_text(textwrap.dedent(GRID))
    procs = []
    try:
        # 1. SIGKILL the driver mid-trial: the folder it leaves agrees already (status still "running")
        procs.append(_start(space, exp, tmp_path))
        _kill_mid_trial(procs[-1], exp, 1, tmp_path)
        assert json.loads((exp / "experiment.json").read_text())["status"] == "running"
        assert check_experiment(exp) == []
        # 2. --resume with Ray's state: the running trial continues, nothing is lost
        procs.append(_start(space, exp, tmp_path, "--resume"))
        _kill_mid_trial(procs[-1], exp, 3, tmp_path)  # killed again, to resume the rest without ray/
        assert check_experiment(exp) == []
        # 3. ray/ deleted (a fresh clone of a committed experiment): --resume from the study alone
        shutil.rmtree(exp / "ray")
        assert check_experiment(exp) == []
        _resume(space, exp)
    finally:
        for proc in procs:
            _stop_group(proc)
    assert check_experiment(exp) == []
    df = lmsearch.load_results(exp)
    trials = study(exp, "chain").get_trials()
    orphans = [t for t in trials if "orphaned" in t.user_attrs]
    # the trial running at the second kill: FAILED ("interrupted") in both, its configuration run again
    assert len(orphans) == 1 and orphans[0].state == optuna.trial.TrialState.FAIL
    assert df.set_index("number").loc[orphans[0].number, "state"] == FAILED
    assert "interrupted" in df.set_index("number").loc[orphans[0].number, "error"]
    done = df[df.state == COMPLETE]
    assert len(done) == 6 and sorted(zip(done.depth, done.seed, strict=True)) == [
        (d, s) for d in (8, 14) for s in (1, 2, 3)]
    assert len(df) == 7 and len(trials) == 7
    proc = lmsearch_cli("check", str(exp))
    assert proc.returncode == 0 and proc.stdout == f"{exp}: consistent: 7 trials (6 complete, 0 pruned, 1 failed); "\
        f"status finished\n"
