"""Pruning: hand-worked Pareto decisions, Optuna's pruners on a multi-objective study, state kept in storage."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from ray.tune.schedulers import TrialScheduler

from lmsearch.pruning import ParetoPruner, PrunerScheduler, make_pruner, make_scheduler, rungs
from lmsearch.searcher import StudySearcher
from lmsearch.space import load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_rungs_follow_eta() -> None:
    assert rungs(1, 3, 27) == [1, 3, 9]
    assert rungs(2, 2, 20) == [2, 4, 8, 16]
    assert rungs(1, 3, 1) == []


def test_pareto_order_hand_worked() -> None:
    # (accuracy, params). Front 0: a=(0.90, 100), b=(0.80, 10), c=(0.85, 50); d=(0.80, 60) is
    # dominated by c, e=(0.70, 70) by everything. Crowding on front 0: a and b are extremes (inf),
    # c is inner. So the order is a, b (arrival order among equal inf), c, then d, then e.
    pts = np.array([[0.90, 100], [0.80, 10], [0.85, 50], [0.80, 60], [0.70, 70]])
    pruner = ParetoPruner(eta=3, max_epochs=9)
    assert pruner.order(pts).tolist() == [0, 1, 2, 3, 4]
    # ceil(5/3) = 2 survive: a and b; c, although on the front, is cut by crowding.
    assert [pruner.survives(pts, i) for i in range(5)] == [True, True, False, False, False]


def test_pareto_keeps_what_accuracy_alone_would_prune() -> None:
    # A tiny net with low accuracy survives (it is on the front); a big mediocre one does not.
    pts = np.array([[0.92, 1000], [0.91, 900], [0.60, 5], [0.85, 950]])
    pruner = ParetoPruner(eta=2, max_epochs=8)
    assert pruner.survives(pts, 2)          # cheapest: on the front
    assert not pruner.survives(pts, 3)      # dominated by (0.91, 900)
    acc_only_top2 = set(np.argsort(-pts[:, 0])[:2])
    assert 2 not in acc_only_top2


def test_hypervolume_tie_break_prefers_larger_contribution() -> None:
    # One front. Normalised to [0, 1] per objective (ref 1.1), the exclusive contributions are
    # a=(0.9, 100): 0.0025, b=(0.89, 95): 0.0264, c=(0.7, 20): 0.4167, d=(0.5, 10): 0.0111:
    # the knee c first, the near-twin a of b last. Crowding instead keeps both extremes a and d first.
    pts = np.array([[0.9, 100], [0.89, 95], [0.7, 20], [0.5, 10]])
    assert ParetoPruner(eta=2, max_epochs=8, tie_break="hypervolume").order(pts).tolist() == [2, 1, 3, 0]
    assert ParetoPruner(eta=2, max_epochs=8, tie_break="crowding").order(pts).tolist()[:2] == [0, 3]


def _study(tmp_path: Path) -> tuple[optuna.Study, str]:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url, directions=["maximize", "minimize"])
    return study, url


def _run_trial(scheduler: PrunerScheduler, study: optuna.Study, accs: list[float], params: int,
               complete: bool = True) -> int | None:
    """Feed one trial's epochs through the scheduler; return the epoch it was stopped at (None = not)."""
    t = study.ask()
    t.set_user_attr("params", params)
    fake = SimpleNamespace(config={"number": t.number})
    for epoch, acc in enumerate(accs, start=1):
        decision = scheduler.on_trial_result(None, fake, {"status": "running", "epoch": epoch, "val_acc": acc})
        if decision == TrialScheduler.STOP:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
            return epoch
    if complete:
        study.tell(t, [accs[-1], params])
    return None


def test_scheduler_with_pareto_pruner_stops_dominated_trial_and_records_it(tmp_path: Path) -> None:
    study, url = _study(tmp_path)
    sched = PrunerScheduler(ParetoPruner(eta=2, min_epochs=1, max_epochs=4), url, "s")
    assert _run_trial(sched, study, [0.8, 0.85, 0.9, 0.9], 100) is None     # alone at every rung
    assert _run_trial(sched, study, [0.9, 0.91, 0.92, 0.93], 10) is None    # dominates trial 0
    # (0.6, 200) at rung 1 is third of three fronts; ceil(3/2) = 2 go on: stopped at epoch 1
    assert _run_trial(sched, study, [0.6, 0.6, 0.6, 0.6], 200) == 1
    trials = study.get_trials()
    assert trials[2].user_attrs["pruned_at_epoch"] == 1
    assert "pruned_at_epoch" not in trials[0].user_attrs and "pruned_at_epoch" not in trials[1].user_attrs
    # every judged epoch is recorded, the stopped trial's rung value too (later trials are judged against it)
    assert trials[0].intermediate_values == {1: 0.8, 2: 0.85, 3: 0.9, 4: 0.9}
    assert trials[2].intermediate_values == {1: 0.6}


def test_pruner_state_survives_a_restart(tmp_path: Path) -> None:
    study, url = _study(tmp_path)
    sched = PrunerScheduler(ParetoPruner(eta=2, max_epochs=4), url, "s")
    _run_trial(sched, study, [0.8, 0.85, 0.9, 0.9], 100)
    _run_trial(sched, study, [0.9, 0.91, 0.92, 0.93], 10)
    # The scheduler is pickled with the experiment and the driver dies: a fresh one, from the
    # pickle and a reopened study, makes the same decision from the rung values in the storage.
    restored = pickle.loads(pickle.dumps(sched))
    assert restored._study is None
    study2 = optuna.load_study(study_name="s", storage=url)
    assert _run_trial(restored, study2, [0.6, 0.6, 0.6, 0.6], 200) == 1


@pytest.mark.parametrize(
    "config, expected_stop",
    [
        # median: after 2 completed trials, a trial below the median of their epoch-1 values stops at epoch 1
        ({"name": "median"}, 1),
        ({"name": "percentile", "percentile": 50.0}, 1),
        # successive halving (eta 2, min 1): rungs at 1, 2, 4; a poor trial is cut at its first rung
        ({"name": "successive_halving", "eta": 2, "min_epochs": 1}, 1),
        # threshold-like behaviour is Optuna's; none never stops
        ({"name": "none"}, None),
    ],
)
def test_wrapped_optuna_pruners_stop_what_they_should(tmp_path: Path, config: dict, expected_stop: int | None) -> None:
    study, url = _study(tmp_path)
    sched = PrunerScheduler(make_pruner(config, max_epochs=4), url, "s")
    assert _run_trial(sched, study, [0.80, 0.85, 0.90, 0.92], 100) is None
    assert _run_trial(sched, study, [0.82, 0.86, 0.91, 0.93], 120) is None
    assert _run_trial(sched, study, [0.30, 0.31, 0.32, 0.33], 110) == expected_stop
    # a good trial is never stopped
    assert _run_trial(sched, study, [0.90, 0.91, 0.95, 0.96], 90) is None


def test_hyperband_runs_on_a_multi_objective_study(tmp_path: Path) -> None:
    study, url = _study(tmp_path)
    pruner = make_pruner({"name": "hyperband", "eta": 2}, max_epochs=8)
    assert pruner.n_brackets == 3  # rungs 1, 2, 4 below the budget of 8
    sched = PrunerScheduler(pruner, url, "s")
    # Bracket 0 (trial numbers 0, 3, 6, ...) judges at epoch 1 first. Trials 0 and 3 are good;
    # trial 6 is worse than both at epoch 1 and is stopped there; trials of other brackets are not
    # judged against it.
    stops = {}
    for number in range(7):
        accs = [0.1] * 8 if number == 6 else [0.5 + 0.05 * number] * 8
        stops[number] = _run_trial(sched, study, accs, 100)
    assert stops[0] is None and stops[3] is None
    assert stops[6] == 1


def test_a_trial_the_scheduler_stops_is_told_pruned_by_the_searcher(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("architecture: {scheme: [euler, lm]}\nbudget: {epochs: 4}\n"
                                     "search: {sampler: random, pruner: median, num_samples: 3}\n")
    space = load_space(tmp_path / "s.yaml")
    searcher = StudySearcher(space, tmp_path, in_channels=1, num_classes=10, fresh=True)
    scheduler = make_scheduler(space, tmp_path)

    def run(trial_id: str, accs: list[float]) -> int | None:
        """One trial as Tune drives it: the scheduler sees each result first, the searcher unless stopped."""
        config = searcher.suggest(trial_id)
        trial = SimpleNamespace(config=config)
        for epoch, acc in enumerate(accs, start=1):
            result = {"epoch": epoch, "epochs": 4, "val_acc": acc, "params": config["params"],
                      "status": "completed" if epoch == 4 else "running"}
            if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                searcher.on_trial_complete(trial_id, result)
                return epoch
            searcher.on_trial_result(trial_id, result)
        searcher.on_trial_complete(trial_id, result)
        return None

    assert run("a", [0.80, 0.85, 0.90, 0.92]) is None
    assert run("b", [0.82, 0.86, 0.91, 0.93]) is None
    assert run("c", [0.30, 0.31, 0.32, 0.33]) == 1  # below the median of a and b at epoch 1
    a, b, c = optuna.load_study(study_name=space.name, storage=f"sqlite:///{tmp_path / 'study.db'}").get_trials()
    assert a.state == b.state == optuna.trial.TrialState.COMPLETE
    assert c.state == optuna.trial.TrialState.PRUNED and c.values is None
    assert c.user_attrs["pruned_at_epoch"] == c.user_attrs["epochs_run"] == 1
    assert c.intermediate_values == {1: 0.30}
    assert a.intermediate_values == {1: 0.80, 2: 0.85, 3: 0.90, 4: 0.92}
