"""End-to-end searches through the CLI, as a user runs them, on tiny Fashion-MNIST budgets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

import lmsearch
from lmsearch.arch import ArchSpec
from lmsearch.export import find_trial_weights
from lmsearch.nn.counting import count_params

pytestmark = [
    pytest.mark.slow,
    pytest.mark.fashion,
]

TINY = """
name: {name}
dataset: {{name: fashion-mnist, subset: 256}}
budget: {{epochs: {epochs}}}
architecture:
  scheme: [euler, lm]
  depth: [8, 14]
  width: 4
training:
  lr: {{low: 0.05, high: 0.1}}
  batch_size: 64
search: {{sampler: random, num_samples: {n}, seed: 1, max_concurrent: {concurrent}}}
resources: {{cpu: 1, max_failures: 0}}
"""


def write_space(tmp_path: Path, name: str, *, n: int, epochs: int = 1, concurrent: int = 2) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(TINY.format(name=name, n=n, epochs=epochs, concurrent=concurrent)))
    return path


def cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmsearch", *args], capture_output=True, text=True,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}, timeout=300, **kwargs)


def study_trials(exp_dir: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp_dir / 'study.db'}")
    return study.get_trials(deepcopy=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("search")
    space = write_space(tmp, "tiny", n=5)
    # Trial number 1 raises at its first epoch: it must be recorded FAILED and the search go on.
    # --pruner median with budget.epochs 1: its default first decision is at the last epoch (it stops nothing)
    proc = cli("search", str(space), "--out", str(tmp / "exp"), "--pruner", "median",
               env={"LMSEARCH_FAULTS": "raise@1:1"})
    return tmp / "exp", proc


def test_search_cli_writes_a_complete_experiment(finished: tuple[Path, subprocess.CompletedProcess]) -> None:
    exp, proc = finished
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Pareto front" in proc.stdout
    # the note judges the pruner the run uses (the command line's), not the space file's (none)
    assert ("lmsearch: search.pruner.warmup_epochs (the median pruner's default) 0 puts the pruner's first decision "
            "at epoch 1, and budget.epochs is 1: it would never stop a trial") in proc.stdout
    for name in ("space.yaml", "experiment.json", "trials.csv", "curves.csv", "pareto.csv", "study.db"):
        assert (exp / name).is_file(), name
    assert json.loads((exp / "experiment.json").read_text())["status"] == "finished"
    df = lmsearch.load_results(exp)
    assert len(df) == 5 and sorted(df["number"]) == [0, 1, 2, 3, 4]
    assert df.set_index("number").loc[1, "state"] == "FAILED"
    assert "injected fault" in df.set_index("number").loc[1, "error"]
    done = df[df.state == "COMPLETE"]
    assert len(done) == 4
    # parameters were counted before training, from the exact architecture trained
    for _, row in done.iterrows():
        assert row["params"] == count_params(ArchSpec.from_json(row["arch_json"]))
        assert row["in_channels"] == 1 and row["epochs_run"] == 1
        assert 0.0 < row["val_acc"] <= 1.0 and 0.0 < row["test_acc"] <= 1.0
    curves = lmsearch.load_curves(exp)
    assert set(curves.trial_id) >= set(done.trial_id)


def test_search_prints_one_line_per_event_and_a_summary(finished: tuple[Path, subprocess.CompletedProcess]) -> None:
    exp, proc = finished
    df = lmsearch.load_results(exp).set_index("number")
    lines = proc.stdout.splitlines()
    for number in range(5):
        assert sum(f"] trial {number} started: " in line for line in lines) == 1, proc.stdout
    # every scheme is tried first (the start-up design), then the sampler draws
    assert list(df.sort_index().scheme[:2]) == ["euler", "lm"]
    assert sum(f"] trial {n} completed: " in line for line in lines for n in range(5)) == 4
    failed = next(line for line in lines if "] trial 1 failed at epoch 0/1: " in line)
    assert "injected fault in trial 1" in failed and "error.txt" in failed
    assert "5/5 ended (4 completed, 0 pruned, 1 failed), 0 running" in proc.stdout
    # Ray's status table and the failed trial's traceback only with --verbose
    assert "== Status ==" not in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert f"Front plot: {exp / 'pareto.png'}" in proc.stdout
    assert (exp / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"lmsearch pareto {exp} --by scheme" in proc.stdout and f"optuna-dashboard sqlite:///{exp}/study.db" in proc.stdout


def test_persisted_study_agrees_with_trials_table(finished: tuple[Path, subprocess.CompletedProcess]) -> None:
    exp, _ = finished
    df = lmsearch.load_results(exp).set_index("number")
    trials = study_trials(exp, "tiny")
    assert len(trials) == 5
    for t in trials:
        row = df.loc[t.number]
        if row["state"] == "COMPLETE":
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert t.values == pytest.approx([row["val_acc"], row["params"]])
        else:
            assert t.state == optuna.trial.TrialState.FAIL
        assert t.user_attrs["ray_trial_id"] == row["trial_id"]


def test_front_is_the_nondominated_complete_trials(finished: tuple[Path, subprocess.CompletedProcess]) -> None:
    exp, _ = finished
    df = lmsearch.load_results(exp)
    front = lmsearch.load_pareto(exp)
    done = df[df.state == "COMPLETE"]
    expected = {r.trial_id for r in done.itertuples()
                if not any((o.val_acc >= r.val_acc and o.params <= r.params)
                           and (o.val_acc > r.val_acc or o.params < r.params) for o in done.itertuples())}
    assert set(front.trial_id) == expected


def test_lm_coefficients_of_every_finished_lm_trial(finished: tuple[Path, subprocess.CompletedProcess]) -> None:
    exp, _ = finished
    df = lmsearch.load_results(exp)
    lm = df[(df.scheme == "lm") & (df.state == "COMPLETE")]
    coefficients = lmsearch.experiment_lm_coefficients(exp)
    assert coefficients.attrs["missing"] == [] and len(coefficients) > 0
    for row in lm.itertuples():
        part = coefficients[coefficients.trial_id == row.trial_id]
        # one row per LM step: every step but the first (Euler) step of each stage
        assert len(part) == sum(n - 1 for n in ArchSpec.from_json(row.arch_json).steps_per_stage)
        model = lmsearch.load_architecture(find_trial_weights(exp, row.trial_id))
        assert part.k.tolist() == lmsearch.lm_coefficients(model).k.tolist()
        assert (part.depth == row.depth).all() and (part.test_acc == row.test_acc).all()


def test_existing_experiment_is_not_overwritten(finished: tuple[Path, subprocess.CompletedProcess]) -> None:
    exp, _ = finished
    proc = cli("search", str(exp / "space.yaml"), "--out", str(exp))
    assert proc.returncode == 2 and "already holds an experiment" in proc.stderr and "--resume" in proc.stderr


def test_bad_space_fails_before_ray_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("architecture: {scheme: [euler, heun]}\n")
    proc = cli("search", str(bad), "--out", str(tmp_path / "exp"))
    assert proc.returncode == 2
    assert f"{bad}: architecture.scheme[1]: 'heun' is not allowed" in proc.stderr
    assert not (tmp_path / "exp").exists()


def test_missing_output_parent_is_an_error(tmp_path: Path) -> None:
    space = write_space(tmp_path, "tiny", n=1)
    proc = cli("search", str(space), "--out", str(tmp_path / "no" / "such" / "exp"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_an_empty_out_is_refused_not_read_as_the_current_folder(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    space = write_space(tmp_path, "tiny", n=1)
    work = tmp_path / "work"
    work.mkdir()
    proc = cli("search", str(space), "--out", "", cwd=work)  # `--out "$OUT"` with OUT unset
    assert proc.returncode == 2 and "--out: must not be empty" in proc.stderr
    from lmsearch.search import SearchError

    monkeypatch.chdir(work)  # were the refusal to break, the search would run in work, not in the repository
    with pytest.raises(SearchError, match="must not be empty"):
        lmsearch.run_search(space, out=" ")
    for verb in (["check", ""], ["pareto", ""], ["export", "", "--trial", "0", "--out", "x"]):
        proc = cli(*verb, cwd=work)
        assert proc.returncode == 2 and "argument DIR: must not be empty" in proc.stderr, verb
    assert list(work.iterdir()) == []


def test_interrupted_search_resumes_without_rerunning_finished_trials(tmp_path: Path) -> None:
    space = write_space(tmp_path, "resumable", n=4, epochs=2, concurrent=1)
    exp = tmp_path / "exp"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen([sys.executable, "-m", "lmsearch", "search", str(space), "--out", str(exp)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    before = None
    while time.time() < deadline and driver.poll() is None:
        if (exp / "trials.csv").exists():
            df = lmsearch.load_results(exp)
            if (df.state == "COMPLETE").sum() >= 1:
                before = df[df.state == "COMPLETE"].copy()
                break
        time.sleep(0.5)
    assert before is not None, "no trial finished in time"
    driver.send_signal(signal.SIGINT)  # Ctrl-C
    driver.wait(timeout=120)
    meta = json.loads((exp / "experiment.json").read_text())
    assert meta["status"] == "interrupted"
    # a trial that Ctrl-C stopped mid-way is unfinished (RUNNING), not pruned or failed
    assert set(lmsearch.load_results(exp).state) <= {"COMPLETE", "RUNNING"}

    proc = cli("search", str(space), "--out", str(exp), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = lmsearch.load_results(exp)
    assert len(after) == 4 and (after.state == "COMPLETE").all()
    kept = after.set_index("trial_id").loc[before.trial_id]
    # the finished trials were not trained again: same metrics, same wall time
    assert list(kept.val_acc) == list(before.val_acc)
    assert list(kept.wall_time_s) == list(before.wall_time_s)
    # and no epoch recorded before the interrupt was lost from the learning curves
    curves = lmsearch.load_curves(exp)
    assert sorted(zip(curves.trial_id, curves.epoch, strict=True)) == sorted(
        (t, e) for t in after.trial_id for e in (1, 2))
    trials = study_trials(exp, "resumable")
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert json.loads((exp / "experiment.json").read_text())["status"] == "finished"


GRID = """
name: grid-resume
dataset: {name: fashion-mnist, subset: 256}
budget: {epochs: 2}
architecture: {scheme: [euler, poly], depth: [8, 14], width: 4}
training: {batch_size: 64}
search: {sampler: grid, max_concurrent: 1}
resources: {cpu: 1, max_failures: 0}
"""


def test_killed_grid_resumes_from_its_study_when_ray_state_is_gone(tmp_path: Path) -> None:
    space = tmp_path / "grid.yaml"
    space.write_text(textwrap.dedent(GRID))
    exp = tmp_path / "exp"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen([sys.executable, "-m", "lmsearch", "search", str(space), "--out", str(exp)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline, before = time.time() + 240, None
    while time.time() < deadline and driver.poll() is None:
        if (exp / "trials.csv").exists():
            df = lmsearch.load_results(exp)
            if (df.state == "COMPLETE").sum() >= 1 and (df.state == "RUNNING").sum() == 1:
                before = df.copy()
                break
        time.sleep(0.2)
    assert before is not None, "no trial finished in time"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray node die mid-trial
    driver.wait(timeout=60)
    shutil.rmtree(exp / "ray")  # as in a fresh clone of a committed experiment: only tables and study.db
    (exp / "search.lock").unlink(missing_ok=True)

    # resumed from the study, then Ctrl-C once a rerun trial trains: its Ray experiment holds
    # only the trials that were left, which the restore below must count as the whole run
    resumed = subprocess.Popen([sys.executable, "-m", "lmsearch", "search", str(space), "--out", str(exp), "--resume"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and resumed.poll() is None:
        df = lmsearch.load_results(exp)
        if ((df.state == "RUNNING") & ~df.trial_id.isin(before.trial_id)).any():
            break
        time.sleep(0.2)
    resumed.send_signal(signal.SIGINT)
    stderr = resumed.communicate(timeout=120)[1]
    assert resumed.returncode == 130 and "resuming from the study" in stderr, stderr[-3000:]
    finished = before[before.state == "COMPLETE"]
    plan = json.loads((exp / "experiment.json").read_text())
    assert plan["ray_trials"] == 4 - len(finished) and plan["trials_planned"] == len(before) + plan["ray_trials"]

    proc = cli("search", str(space), "--out", str(exp), "--resume")  # Ray's state is there: Tuner.restore
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from the study" not in proc.stderr
    total = plan["trials_planned"]
    assert f"{total}/{total} ended" in proc.stdout and f"/{total + 1} ended" not in proc.stdout, proc.stdout
    assert " resumed from epoch " in proc.stdout  # the trial Ctrl-C stopped goes on; it is not "started" anew
    after = lmsearch.load_results(exp)
    done = after[after.state == "COMPLETE"]
    # every grid point completed exactly once; the finished trials were kept, not retrained
    assert sorted(zip(done.scheme, done.depth, strict=True)) == [("euler", 8), ("euler", 14), ("poly", 8), ("poly", 14)]
    kept = after.set_index("trial_id").loc[finished.trial_id]
    assert list(kept.wall_time_s) == list(finished.wall_time_s) and (kept.state == "COMPLETE").all()
    # the trial that was running is recorded as FAILED (interrupted), not lost and not left RUNNING
    cut = after.set_index("trial_id").loc[before[before.state == "RUNNING"].trial_id.iloc[0]]
    assert cut.state == "FAILED" and "interrupted" in cut.error
    assert len(after) == len(before) + (4 - len(finished))
    states = [t.state for t in study_trials(exp, "grid-resume")]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4 and states.count(optuna.trial.TrialState.FAIL) == 1
    assert json.loads((exp / "experiment.json").read_text())["status"] == "finished"


def test_live_search_with_pareto_pruner_records_pruned_trials(tmp_path: Path) -> None:
    space = write_space(tmp_path, "pruned", n=6, epochs=4, concurrent=1)  # one at a time: a fixed order
    proc = cli("search", str(space), "--out", str(tmp_path / "exp"), "--pruner", "pareto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "would never stop a trial" not in proc.stdout  # its first rung, epoch 1, is before the last
    exp = tmp_path / "exp"
    df = lmsearch.load_results(exp)
    pruned = df[df.state == "PRUNED"]
    assert len(pruned) >= 1 and (pruned.epochs_run < 4).all() and (pruned.epochs_run >= 1).all()
    assert (df[df.state == "COMPLETE"].epochs_run == 4).all()
    states = {t.number: t.state for t in study_trials(exp, "pruned")}
    for number in pruned.number:
        assert states[number] == optuna.trial.TrialState.PRUNED
    front = lmsearch.load_pareto(exp)
    assert not set(front.trial_id) & set(pruned.trial_id)
    assert json.loads((exp / "experiment.json").read_text())["pruner"] == {"name": "pareto"}
