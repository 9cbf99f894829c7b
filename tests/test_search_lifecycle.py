"""How `lmsearch search` starts, refuses, stops and reports, run as a user runs it, on a synthetic dataset.

A search that cannot start leaves nothing behind (or, resumed, its folder unchanged);
a second search on a live folder is told it is in use; Ctrl-C exits 130 with a folder
``--resume`` continues; the summary counts completed, pruned and failed trials.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lmsearch
from lmsearch.consistency import check, check_experiment
from lmsearch.lock import LOCK_NAME

pytestmark = pytest.mark.slow

SPACE = """
name: {name}
dataset: {{name: synthetic, subset: 128}}
budget: {{epochs: {epochs}}}
architecture: {{scheme: euler, depth: [8, 14], width: 4}}
training: {{lr: 0.05, batch_size: 64}}
search: {{sampler: random, num_samples: {n}, seed: 1, max_concurrent: 1}}
resources: {{cpu: 1, max_failures: 0}}
"""

# Grid order: trial 0 is depth 8 (made to raise: FAILED), 1 is depth 14 (COMPLETE), 2 is depth 20,
# over max_params (PRUNED, not trained).
COUNTS = """
name: counts
dataset: {name: synthetic, subset: 128}
budget: {epochs: 1}
architecture: {scheme: euler, depth: [8, 14, 20], width: 4}
max_params: 12000
training: {lr: 0.05, batch_size: 64}
search: {sampler: grid, max_concurrent: 1}
resources: {cpu: 1, max_failures: 0}
"""

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}


def write_space(folder: Path, name: str = "life", *, n: int = 2, epochs: int = 1, extra: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(SPACE.format(name=name, n=n, epochs=epochs)) + extra)
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmsearch", "search", *args, "--quiet"], capture_output=True,
                          text=True, env=env or ENV, timeout=300)


def _ctrl_c_as_typed() -> None:
    """In the child: SIGINT at its default, as in a terminal. A test run started in the background
    (``cmd &`` in a script, as CI may be) inherits SIGINT ignored, and a program that starts with it
    ignored keeps ignoring it until Ray Tune installs its own handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(logs: Path, *args: str) -> subprocess.Popen:
    """A search in the background, in its own process group (so a failed test can stop all of it);
    its output goes to files in ``logs`` (see :func:`finish`)."""
    n = len(list(logs.glob("*.out")))
    with open(logs / f"{n}.out", "w") as out, open(logs / f"{n}.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lmsearch", "search", *args, "--quiet"], stdout=out,
                                stderr=err, text=True, env=ENV, start_new_session=True, preexec_fn=_ctrl_c_as_typed)
    proc.logs = (logs / f"{n}.out", logs / f"{n}.err")  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    """Wait for a search started by :func:`start`; its stdout and stderr."""
    proc.wait(timeout=timeout)
    return proc.logs[0].read_text(), proc.logs[1].read_text()  # type: ignore[attr-defined]


def stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen (search exit code {proc.poll()})")


def status(exp: Path) -> str:
    return json.loads((exp / "experiment.json").read_text())["status"]


def test_one_search_per_folder_and_never_pass_resume_to_a_second_one(tmp_path: Path) -> None:
    space, exp = write_space(tmp_path, epochs=2), tmp_path / "exp"
    first, second = start(tmp_path, str(space), "--out", str(exp)), start(tmp_path, str(space), "--out", str(exp))
    try:
        # started together: one runs, the other is refused at once
        deadline = time.time() + 120
        while first.poll() is None and second.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        loser, winner = (first, second) if first.poll() is not None else (second, first)
        _, err = finish(loser)
        assert loser.returncode == 2 and "is in use by a running search" in err, err
        # once the winner has written experiment.json: still "in use", never "pass --resume"
        wait_for(lambda: (exp / "experiment.json").is_file() and (exp / "curves.csv").is_file(), winner,
                 "a trial epoch")
        lock_text = (exp / LOCK_NAME).read_text()
        assert json.loads(lock_text)["pid"] == winner.pid
        os.kill(winner.pid, signal.SIGSTOP)  # keep the search live, however long the late commands take
        try:
            late = [start(tmp_path, str(space), "--out", str(exp)),
                    start(tmp_path, str(space), "--out", str(exp), "--resume")]
            for proc in late:
                _, err = finish(proc, timeout=120)
                assert proc.returncode == 2, err
                assert f"is in use by a running search (pid {winner.pid} on " in err
                assert "--resume" not in err and "nothing to resume" not in err and "already holds" not in err
            assert (exp / LOCK_NAME).read_text() == lock_text and status(exp) == "running"
        finally:
            os.kill(winner.pid, signal.SIGCONT)
        out, err = finish(winner)
    finally:
        for proc in (first, second):
            stop_group(proc)
    assert winner.returncode == 0, err[-3000:]
    assert status(exp) == "finished" and not (exp / LOCK_NAME).exists()
    assert len(lmsearch.load_results(exp)) == 2


@pytest.mark.parametrize("presses", [1, 2])  # a second Ctrl-C stops at once, without Ray's orderly shutdown
def test_ctrl_c_exits_130_and_leaves_a_folder_resume_continues(tmp_path: Path, presses: int) -> None:
    space, exp = write_space(tmp_path, epochs=3), tmp_path / "exp"
    driver = start(tmp_path, str(space), "--out", str(exp))
    try:
        wait_for(lambda: (exp / "curves.csv").is_file(), driver, "a trial epoch")
        for _ in range(presses):
            driver.send_signal(signal.SIGINT)  # Ctrl-C
            time.sleep(0.3)
        out, err = finish(driver, timeout=120)
    finally:
        stop_group(driver)
    assert driver.returncode == 130, err[-3000:]
    assert "interrupted" in err and "--resume" in err
    assert "Tuner.restore" not in err and "Failed to fetch metrics" not in err  # Ray's advice is not the CLI's
    assert status(exp) == "interrupted"
    assert not (exp / LOCK_NAME).exists()
    assert check_experiment(exp) == []  # the tables agree, pareto.csv included

    proc = cli(str(space), "--out", str(exp), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert status(exp) == "finished"
    done = lmsearch.load_results(exp)
    assert len(done) == 2 and (done.state == "COMPLETE").all()


ENDED_NOTE = "time budget ended Ray's search before every trial was drawn"


def test_time_budget_draws_no_trial_after_it_and_resume_runs_the_rest(tmp_path: Path) -> None:
    space, exp = write_space(tmp_path, n=3), tmp_path / "exp"  # one trial at a time
    proc = cli(str(space), "--out", str(exp), "--time-budget", "1")  # spent while trial 0 trains
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert status(exp) == "stopped"
    done = lmsearch.load_results(exp)
    assert list(done.number) == [0] and (done.state == "COMPLETE").all()  # the running trial finished
    assert "The time budget (1 s) was spent" in proc.stdout and f"--out {exp} --resume" in proc.stdout
    report = check(exp)
    assert report.disagreements == [] and (report.planned, report.left) == (3, 2)
    assert report.summary().endswith("; status stopped: 2 of 3 trials left to run")

    proc = cli(str(space), "--out", str(exp), "--resume")  # Ray's state would draw no trial: from the study
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ENDED_NOTE in proc.stderr
    assert f"{exp / 'ray'} could not go on with it and is removed; resuming from the study: 1 trial finished, " \
        "2 to run" in proc.stderr and "no Ray state" not in proc.stderr and proc.stderr.count(ENDED_NOTE) == 1
    assert status(exp) == "finished"
    done = lmsearch.load_results(exp)
    assert sorted(done.number) == [0, 1, 2] and (done.state == "COMPLETE").all()
    assert check_experiment(exp) == []


def test_ctrl_c_after_the_time_budget_is_spent_still_resumes_to_the_end(tmp_path: Path) -> None:
    # No max_concurrent, a 1 s budget: the trials drawn in that second (Ray draws the next one once the
    # last has started, so here trial 0 alone), then no more, and Ray saves its search as ended. Ctrl-C
    # while they train; the resume must still run all 4.
    space = write_space(tmp_path, n=4, epochs=3)
    space.write_text(space.read_text().replace(", max_concurrent: 1", ""))
    exp = tmp_path / "exp"
    driver = start(tmp_path, str(space), "--out", str(exp), "--time-budget", "1")
    try:
        wait_for(lambda: (exp / "curves.csv").is_file(), driver, "a trial epoch")
        driver.send_signal(signal.SIGINT)
        finish(driver, timeout=120)
    finally:
        stop_group(driver)
    assert driver.returncode == 130 and status(exp) == "interrupted"
    assert (lmsearch.load_results(exp).state == "COMPLETE").sum() < 4

    proc = cli(str(space), "--out", str(exp), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ENDED_NOTE in proc.stderr and status(exp) == "finished"
    done = lmsearch.load_results(exp)
    assert (done.state == "COMPLETE").sum() == 4  # the two interrupted trials ran again, and the two never drawn
    assert check_experiment(exp) == []


def process_group(pgid: int) -> list[str]:
    """Names of the live processes in process group ``pgid`` (from /proc: Ray's servers stay in the driver's group)."""
    names = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
            if fields[0] != "Z" and int(fields[2]) == pgid:
                names.append(stat[stat.index("(") + 1:stat.rindex(")")])
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not a process
            continue
    return names


@pytest.mark.parametrize("server", ["gcs_server", "raylet"])
def test_ctrl_c_while_ray_starts_exits_130_and_leaves_nothing(tmp_path: Path, server: str) -> None:
    space, exp = write_space(tmp_path), tmp_path / "exp"
    driver = start(tmp_path, str(space), "--out", str(exp))
    try:
        wait_for(lambda: server in process_group(driver.pid), driver, f"Ray's {server} starting")
        driver.send_signal(signal.SIGINT)  # Ctrl-C while the local Ray cluster comes up
        out, err = finish(driver, timeout=120)
        deadline = time.time() + 60
        while process_group(driver.pid) and time.time() < deadline:
            time.sleep(0.5)
        left = process_group(driver.pid)
    finally:
        stop_group(driver)
        with contextlib.suppress(ProcessLookupError):  # whatever Ray left in the driver's group
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, err[-3000:]
    assert "interrupted" in err
    assert not exp.exists()  # a new search stopped before it began leaves no folder
    assert left == []  # and no Ray process behind it


@pytest.mark.parametrize("out_exists", [False, True])
def test_data_error_is_refused_before_ray_and_leaves_nothing(tmp_path: Path, out_exists: bool) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    exp = tmp_path / "exp"
    if out_exists:
        exp.mkdir()
    for data_dir in (tmp_path / "missing", empty):  # no such folder; a folder without the data
        space = tmp_path / "bad.yaml"
        space.write_text(f"architecture: {{scheme: euler, depth: 8, width: 4}}\n"
                         f"dataset: {{name: fashion-mnist, data_dir: {data_dir}}}\n")
        proc = cli(str(space), "--out", str(exp))
        assert proc.returncode == 2
        assert f"error: {space}: dataset" in proc.stderr and str(data_dir) in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and "Ray" not in proc.stderr
        if out_exists:
            assert list(exp.iterdir()) == []  # the user's folder is kept, and left empty
        else:
            assert not exp.exists()


def test_unreachable_address_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("not-a-real-token\n")
    token.chmod(0o600)
    env = {k: v for k, v in ENV.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["RAY_AUTH_TOKEN_PATH"] = str(token)  # joining a cluster needs a token; this one is never sent
    space, exp = write_space(tmp_path), tmp_path / "exp"
    proc = cli(str(space), "--out", str(exp), "--address", "127.0.0.2:1", env=env)  # nobody listens on port 1
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "cannot reach the Ray cluster at --address 127.0.0.2:1: Connection refused" in proc.stderr
    assert not exp.exists()


@pytest.mark.parametrize(("resource", "value", "key"), [("gpu", 1, "GPU"), ("cpu", 64, "CPU")])
def test_unschedulable_trial_resources_are_refused(tmp_path: Path, resource: str, value: int, key: str) -> None:
    space = write_space(tmp_path)
    resources = {"cpu": 1, "max_failures": 0, resource: value}
    space.write_text(space.read_text().replace("resources: {cpu: 1, max_failures: 0}", f"resources: {resources}"))
    exp = tmp_path / "exp"
    proc = cli(str(space), "--out", str(exp))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (f"{space}: resources.{resource}: {value} per trial, but no node of the Ray cluster has {value} {key} "
            f"(the largest has ") in proc.stderr
    assert not exp.exists()


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("counts")
    space = tmp / "counts.yaml"
    space.write_text(textwrap.dedent(COUNTS))
    proc = cli(str(space), "--out", str(tmp / "exp"), env={**ENV, "LMSEARCH_FAULTS": "raise@0:1"})
    return tmp / "exp", proc


def test_summary_counts_completed_pruned_and_failed(counted: tuple[Path, subprocess.CompletedProcess]) -> None:
    exp, proc = counted
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = lmsearch.load_results(exp).set_index("number").state
    assert dict(states) == {0: "FAILED", 1: "COMPLETE", 2: "PRUNED"}
    assert "3 trials: 1 completed, 1 pruned, 1 failed" in proc.stdout
    assert f"Pareto front of {exp}: 1 trial\n" in proc.stdout


def test_summary_without_a_completed_trial_names_the_failure(capsys: pytest.CaptureFixture[str]) -> None:
    from lmsearch.progress import search_summary

    table = pd.DataFrame({"number": [0, 1], "state": ["FAILED", "FAILED"], "val_acc": [np.nan, np.nan],
                          "params": [10, 20],
                          "error": ["diverged at epoch 1 (non-finite loss)", "diverged at epoch 2 (non-finite loss)"]})
    out = search_summary(Path("exp"), table, [("val_acc", "max"), ("params", "min")], finished=True)
    assert "2 trials: 0 completed, 0 pruned, 2 failed" in out
    assert "no trial completed; the first failure (trial 0): diverged at epoch 1 (non-finite loss)" in out


def test_recording_the_end_never_hides_the_error_that_ended_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from lmsearch import results
    from lmsearch.search import SearchInterrupted, _record_end
    from lmsearch.space import load_space

    space = load_space(write_space(tmp_path), check_data_dir=False)
    exp = tmp_path / "exp"
    exp.mkdir()
    results.write_trials_table(exp, [{"trial_id": "a", "number": 0, "state": "COMPLETE", "params": 10,
                                      "val_acc": 0.5}])
    table = _record_end(exp, space, {"name": "life", "status": "finished"}, None)
    assert list(table.trial_id) == ["a"] and list(results.load_pareto(exp).trial_id) == ["a"]

    (exp / "trials.csv").write_text("damaged")  # cut short
    with pytest.raises(results.ExperimentFolderError, match="cut short"):  # nothing else failed: this is the error
        _record_end(exp, space, {"name": "life", "status": "finished"}, None)
    assert _record_end(exp, space, {"name": "life", "status": "interrupted"}, RuntimeError("Ray died")) is None
    assert "could not record the end of the run" in capsys.readouterr().err  # a warning: Ray's error goes on
    assert results.read_experiment(exp)["status"] == "interrupted"

    def ctrl_c(_: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(results, "load_results", ctrl_c)
    with pytest.raises(SearchInterrupted):  # a Ctrl-C while the end is recorded: interrupted, --resume continues
        _record_end(exp, space, {"name": "life", "status": "interrupted"}, None)


def test_corrupt_study_on_resume_is_a_clear_error_and_changes_nothing(
        counted: tuple[Path, subprocess.CompletedProcess], tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    shutil.copytree(counted[0], exp)
    (exp / "study.db").write_bytes(b"this is not a database" * 100)
    before = {p.relative_to(exp): p.read_bytes() for p in exp.rglob("*") if p.is_file()}
    proc = cli(str(exp / "space.yaml"), "--out", str(exp), "--resume")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{exp / 'study.db'} is corrupt or not an Optuna study (file is not a database)" in proc.stderr
    assert "Traceback" not in proc.stderr
    after = {p.relative_to(exp): p.read_bytes() for p in exp.rglob("*") if p.is_file()}
    assert after == before and status(exp) == "finished"


@pytest.mark.parametrize("damage", ["deleted", "a directory"])
def test_resume_without_a_study_is_refused_and_changes_nothing(
        counted: tuple[Path, subprocess.CompletedProcess], tmp_path: Path, damage: str) -> None:
    exp = tmp_path / "exp"
    shutil.copytree(counted[0], exp)  # still has Ray's state in ray/
    (exp / "study.db").unlink()
    if damage == "a directory":
        (exp / "study.db").mkdir()
    before = {p.relative_to(exp): p.read_bytes() for p in exp.rglob("*") if p.is_file()}
    proc = cli(str(exp / "space.yaml"), "--out", str(exp), "--resume")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "study.db is missing (or not a file)" in proc.stderr and "Traceback" not in proc.stderr
    after = {p.relative_to(exp): p.read_bytes() for p in exp.rglob("*") if p.is_file()}
    assert after == before


def test_a_new_trial_count_on_a_restore_from_ray_state_is_refused(
        counted: tuple[Path, subprocess.CompletedProcess], tmp_path: Path) -> None:
    """Tuner.restore keeps its own trial count: --num-samples would be silently ignored (and misrecorded)."""
    exp = tmp_path / "exp"
    shutil.copytree(counted[0], exp)  # still has Ray's state in ray/
    before = {p.relative_to(exp): p.read_bytes() for p in exp.rglob("*") if p.is_file()}
    planned = json.loads((exp / "experiment.json").read_text())["num_samples"]
    proc = cli(str(exp / "space.yaml"), "--out", str(exp), "--resume", "--num-samples", str(planned + 3))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"--num-samples {planned + 3}: {exp} is resumed from Ray's state, which keeps the {planned} trials" \
        in proc.stderr and "Traceback" not in proc.stderr
    assert {p.relative_to(exp): p.read_bytes() for p in exp.rglob("*") if p.is_file()} == before


def test_more_verbosity_than_ray_knows_is_its_most(tmp_path: Path) -> None:
    """-vvvv is -vvv (Ray Tune knows verbosity 0-3; 4 used to raise inside Ray after the start)."""
    space = tmp_path / "loud.yaml"
    space.write_text("dataset: {name: synthetic, subset: 64}\nbudget: {epochs: 1}\n"
                     "architecture: {scheme: euler, depth: 8, width: 4}\nsearch: {num_samples: 1}\n")
    proc = subprocess.run([sys.executable, "-m", "lmsearch", "search", str(space), "--out", str(tmp_path / "exp"),
                           "-vvvv"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is not a valid Verbosity" not in proc.stderr + proc.stdout
    assert lmsearch.load_results(tmp_path / "exp").state.tolist() == ["COMPLETE"]
