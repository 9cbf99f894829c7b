"""The searcher: honest outcomes told to Optuna, what the dashboard shows, save/restore and orphans."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import optuna
import pytest

from lmsearch.searcher import StudySearcher
from lmsearch.space import SearchSpace, load_space
from lmsearch.states import COMPLETE, FAILED, PRUNED, trial_outcome

optuna.logging.set_verbosity(optuna.logging.WARNING)

OPTUNA_STATE = {COMPLETE: optuna.trial.TrialState.COMPLETE, PRUNED: optuna.trial.TrialState.PRUNED,
                FAILED: optuna.trial.TrialState.FAIL}

CONDITIONAL = """
architecture:
  scheme: [euler, lm, rk2]
  depth: {{euler: [8, 14], lm: [14, 20], rk2: [14, 26]}}
  width: [4, 8]
  noise: [none, stochastic_depth]
  noise_prob: {{low: 0.1, high: 0.5}}
training: {{lr: {{low: 0.01, high: 0.2, log: true}}}}
budget: {{epochs: 3}}
search: {{sampler: {sampler}, num_samples: 12, seed: 0}}
"""


def _space(tmp_path: Path, text: str, name: str = "s") -> SearchSpace:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return load_space(path, name=name)


def _searcher(space: SearchSpace, exp_dir: Path, fresh: bool = True) -> StudySearcher:
    return StudySearcher(space, exp_dir, in_channels=1, num_classes=10, fresh=fresh)


def _epoch(config: dict, epoch: int, acc: float, status: str = "running", epochs: int = 3) -> dict:
    """A result as train_trial reports it."""
    return {"epoch": epoch, "epochs": epochs, "val_acc": acc, "params": config["params"], "status": status}


def _study(exp_dir: Path, name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{exp_dir / 'study.db'}")


@pytest.mark.parametrize(
    "result, errored, expected",
    [
        ({"epoch": 3, "epochs": 3, "status": "completed"}, False, COMPLETE),
        ({"epoch": 2, "epochs": 3, "status": "running"}, False, PRUNED),  # stopped by a scheduler
        ({"epoch": 0, "epochs": 3, "status": "over_budget"}, False, PRUNED),
        ({"epoch": 2, "epochs": 3, "status": "diverged"}, False, FAILED),
        ({"epoch": 3, "epochs": 3, "status": "completed"}, True, FAILED),
        (None, False, PRUNED),
        (None, True, FAILED),
    ],
)
def test_trial_outcome(result: dict | None, errored: bool, expected: str) -> None:
    assert trial_outcome(result, errored) == expected


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random"])
def test_every_sampler_drives_a_conditional_space_through_the_searcher(tmp_path: Path, sampler: str) -> None:
    space = _space(tmp_path, CONDITIONAL.format(sampler=sampler))
    searcher = _searcher(space, tmp_path)
    expected: dict[int, tuple[str, dict]] = {}
    for i in range(16):
        tid = f"t{i}"
        config = searcher.suggest(tid)
        assert config["number"] == i
        result = _epoch(config, 1, 0.1 + 0.01 * i)
        searcher.on_trial_result(tid, result)
        if i % 3 == 2:  # stopped after an epoch (the scheduler saw its last result)
            searcher.on_trial_complete(tid, result)
            expected[i] = (PRUNED, config)
        elif i % 5 == 4:  # raised in its second epoch
            searcher.on_trial_complete(tid, result, error=True)
            expected[i] = (FAILED, config)
        else:
            for epoch in (2, 3):
                result = _epoch(config, epoch, 0.1 + 0.01 * i + 0.1 * epoch,
                                status="completed" if epoch == 3 else "running")
                searcher.on_trial_result(tid, result)
            searcher.on_trial_complete(tid, result)
            expected[i] = (COMPLETE, config)

    study = _study(tmp_path)
    assert study.metric_names == ["val_acc", "params"]  # the dashboard names the objectives
    trials = study.get_trials()
    assert len(trials) == 16
    assert {t.state for t in trials} == set(OPTUNA_STATE.values())
    for t in trials:
        outcome, config = expected[t.number]
        assert t.state == OPTUNA_STATE[outcome]
        first = 0.1 + 0.01 * t.number
        if outcome == COMPLETE:
            assert t.values == [pytest.approx(first + 0.3), config["params"]]
            assert t.intermediate_values == pytest.approx({1: first, 2: first + 0.2, 3: first + 0.3})
        else:
            assert t.values is None
            assert t.intermediate_values == pytest.approx({1: first})  # a learning curve without a pruner
        spec = config["spec"]
        # one depth per trial, whichever per-scheme parameter sampled it
        assert t.user_attrs["depth"] == spec["depth"] == t.params[f"depth_{spec['scheme']}"]
        assert t.user_attrs["scheme"] == spec["scheme"] == t.params["scheme"]  # what protect_schemes reads
        assert spec["depth"] in space.depth_by_scheme[spec["scheme"]].choices  # type: ignore[index]
        assert not any(p.startswith("depth_") and p != f"depth_{spec['scheme']}" for p in t.params)
        assert ("noise_prob" in t.params) == (spec["noise"] == "stochastic_depth")
        assert t.user_attrs["params"] == config["params"]
        assert t.user_attrs["ray_trial_id"] == f"t{t.number}"


def test_non_finite_objective_is_failed_and_a_second_completion_changes_nothing(tmp_path: Path) -> None:
    space = _space(tmp_path, CONDITIONAL.format(sampler="random"))
    searcher = _searcher(space, tmp_path)
    config = searcher.suggest("a")
    searcher.on_trial_complete("a", _epoch(config, 3, float("nan"), status="completed"))
    config = searcher.suggest("b")
    done = _epoch(config, 3, 0.9, status="completed")
    searcher.on_trial_complete("b", done)
    searcher.on_trial_complete("b", {**done, "val_acc": 0.1})  # a resumed trial reporting again
    searcher.on_trial_complete("unknown", done)
    a, b = [t for t in _study(tmp_path).get_trials() if t.state != optuna.trial.TrialState.WAITING]
    assert a.state == optuna.trial.TrialState.FAIL and a.intermediate_values == {}
    assert b.state == optuna.trial.TrialState.COMPLETE and b.values[0] == pytest.approx(0.9)
    assert b.user_attrs["epochs_run"] == 3 and b.user_attrs["status"] == "completed"


def test_grid_points_are_enqueued_once(tmp_path: Path) -> None:
    space = _space(tmp_path, """
        architecture: {scheme: [euler, lm], depth: {euler: [8], lm: [14, 20]}, width: 4}
        search: {sampler: grid}
    """)
    searcher = _searcher(space, tmp_path)
    assert space.num_samples == 3
    points = [(c["spec"]["scheme"], c["spec"]["depth"]) for c in (searcher.suggest(f"t{i}") for i in range(3))]
    assert sorted(points) == [("euler", 8), ("lm", 14), ("lm", 20)]
    _searcher(space, tmp_path, fresh=False)  # a resumed search does not queue the grid again
    assert len(_study(tmp_path).get_trials(states=(optuna.trial.TrialState.WAITING,))) == 0


def test_save_restore_continues_trials_and_requeues_orphans(tmp_path: Path) -> None:
    space = _space(tmp_path, CONDITIONAL.format(sampler="random"))
    searcher = _searcher(space, tmp_path)
    # Tune pickles the searcher when the experiment starts (tuner.pkl), without its study connection
    at_start = pickle.dumps(searcher)
    configs = {tid: searcher.suggest(tid) for tid in ("a", "b", "c")}
    searcher.on_trial_complete("a", _epoch(configs["a"], 3, 0.8, status="completed"))
    searcher.on_trial_result("b", _epoch(configs["b"], 1, 0.5))
    saved = tmp_path / "searcher-state.pkl"
    searcher.save(str(saved))
    orphan = searcher.suggest("d")  # asked for after the last save; then the driver dies

    restored = pickle.loads(at_start)  # as Tuner.restore does: the pickle from the start, then restore()
    restored.restore(str(saved))
    study = _study(tmp_path)
    by_number = {t.number: t for t in study.get_trials()}
    lost = by_number[orphan["number"]]
    assert lost.state == optuna.trial.TrialState.FAIL and "orphaned" in lost.user_attrs
    assert by_number[configs["b"]["number"]].state == optuna.trial.TrialState.RUNNING  # Ray resumes it
    assert set(restored.finished_outcomes()) == {configs["a"]["number"]}
    # the restored searcher still knows Ray's trials: it records and tells them
    restored.on_trial_result("b", _epoch(configs["b"], 2, 0.6))
    restored.on_trial_complete("b", _epoch(configs["b"], 3, 0.7, status="completed"))
    b = study.get_trials()[configs["b"]["number"]]
    assert b.state == optuna.trial.TrialState.COMPLETE and b.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7}
    # the orphan's configuration runs again, before anything new is sampled
    again = restored.suggest("e")
    assert again["spec"] == orphan["spec"] and again["train"] == orphan["train"]
    assert study.get_trials()[again["number"]].user_attrs["requeued_from"] == orphan["number"]
    assert restored.finished_outcomes() == {configs["a"]["number"]: COMPLETE, configs["b"]["number"]: COMPLETE}


def test_restored_sampler_does_not_repeat_its_draws(tmp_path: Path) -> None:
    space = _space(tmp_path, CONDITIONAL.format(sampler="random"))
    searcher = _searcher(space, tmp_path)
    at_start = pickle.dumps(searcher)
    first = searcher.suggest("a")
    searcher.on_trial_complete("a", _epoch(first, 3, 0.8, status="completed"))
    searcher.save(str(tmp_path / "state.pkl"))
    restored = pickle.loads(at_start)
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.suggest("b")["train"]["lr"] != first["train"]["lr"]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_search_resumed_from_its_study_does_not_repeat_its_first_draws(tmp_path: Path, sampler: str) -> None:
    # A fresh clone has no Ray state: the searcher is built anew on the study. Seeded as the first
    # sitting was, its sampler would draw the first sitting's values again.
    space = _space(tmp_path, f"""
        architecture: {{scheme: euler, depth: [8, 14, 20], width: [4, 8]}}
        training: {{lr: {{low: 0.01, high: 0.2, log: true}}}}
        budget: {{epochs: 3}}
        search: {{sampler: {sampler}, num_samples: 12, seed: 0}}
    """)  # one scheme: no start-up trials, the sampler draws from the first trial on
    first = _searcher(space, tmp_path)
    drawn = []
    for trial_id in ("a", "b", "c", "d", "e", "f"):
        config = first.suggest(trial_id)
        first.on_trial_complete(trial_id, _epoch(config, 3, 0.8, status="completed"))
        drawn.append(config["train"]["lr"])
    again = _searcher(space, tmp_path, fresh=False)
    later = [again.suggest(trial_id)["train"]["lr"] for trial_id in ("g", "h", "i")]
    assert not set(later) & set(drawn)


def test_tune_search_properties_cannot_replace_the_space(tmp_path: Path) -> None:
    searcher = _searcher(_space(tmp_path, CONDITIONAL.format(sampler="random")), tmp_path)
    assert searcher.set_search_properties(None, None, {})
    assert not searcher.set_search_properties("val_loss", "min", {})
    assert not searcher.set_search_properties(None, None, {"lr": 0.1})


@pytest.mark.slow
def test_under_tune_an_over_budget_trial_is_pruned_and_the_saved_searcher_restores(tmp_path: Path) -> None:
    import ray
    from ray import tune

    from lmsearch.cluster import DEFAULT_NODE_IP, init_ray

    space = _space(tmp_path, """
        architecture: {scheme: [euler, lm]}
        budget: {epochs: 2}
        search: {sampler: grid, max_concurrent: 1}
    """)

    def train(config: dict) -> None:
        fixed = {"params": config["params"], "epochs": 2}
        if config["spec"]["scheme"] == "lm":  # over max_params: reported untrained, without val_acc
            tune.report({**fixed, "epoch": 0, "status": "over_budget"})
            return
        for epoch in (1, 2):
            tune.report({**fixed, "epoch": epoch, "val_acc": 0.4 * epoch,
                         "status": "completed" if epoch == 2 else "running"})

    init_ray(None, node_ip=DEFAULT_NODE_IP)
    try:
        results = tune.Tuner(
            train,
            tune_config=tune.TuneConfig(search_alg=tune.search.ConcurrencyLimiter(_searcher(space, tmp_path), 1),
                                        num_samples=2),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="t", verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    assert not results.errors
    euler, lm = _study(tmp_path).get_trials()
    assert euler.state == optuna.trial.TrialState.COMPLETE and euler.intermediate_values == {1: 0.4, 2: 0.8}
    assert lm.state == optuna.trial.TrialState.PRUNED and lm.user_attrs["status"] == "over_budget"
    # Tune saved the searcher with the experiment (what Tuner.restore reads back)
    restored = _searcher(space, tmp_path, fresh=False)
    restored.restore_from_dir(str(tmp_path / "ray" / "t"))
    assert restored.reconcile_orphans() == [] and restored.finished_outcomes() == {0: COMPLETE, 1: PRUNED}


def test_a_completed_trials_test_accuracy_survives_a_driver_that_died_before_trials_csv_had_it(tmp_path: Path) -> None:
    from lmsearch.results import write_trials_table
    from lmsearch.search import _continue_from_study

    space = _space(tmp_path, CONDITIONAL.format(sampler="random"))
    searcher = _searcher(space, tmp_path)
    done, nan = searcher.suggest("a"), searcher.suggest("b")
    searcher.on_trial_complete("a", {**_epoch(done, 3, 0.9, status="completed"), "test_acc": 0.875})
    searcher.on_trial_complete("b", {**_epoch(nan, 3, 0.8, status="completed"), "test_acc": float("nan")})
    assert _study(tmp_path).trials[0].user_attrs["test_acc"] == 0.875
    assert searcher.test_accuracies() == {0: 0.875}  # a non-finite test accuracy is not kept
    # trials.csv as a driver killed right after telling Optuna leaves it: both rows RUNNING, no test_acc
    write_trials_table(tmp_path, [{"trial_id": "a", "number": 0, "state": "RUNNING", "params": done["params"]},
                                  {"trial_id": "b", "number": 1, "state": "RUNNING", "params": nan["params"]}])
    _, rows = _continue_from_study(_searcher(space, tmp_path, fresh=False), space, tmp_path)
    assert [(r["state"], r["test_acc"]) for r in rows] == [("COMPLETE", "0.875"), ("COMPLETE", "")]
