"""Pruning: hand-worked Pareto decisions, Optuna's pruners on a multi-objective study, state kept in storage."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from ray.tune.schedulers import TrialScheduler

from lmsearch.pruning import ParetoPruner, PrunerScheduler, make_pruner, make_scheduler, rungs, scheme_of
from lmsearch.searcher import StudySearcher
from lmsearch.space import late_pruner, load_space

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
    pruner = ParetoPruner(eta=3, max_epochs=9, tie_break="crowding")
    assert pruner.order(pts).tolist() == [0, 1, 2, 3, 4]
    # ceil(5/3) = 2 survive: a and b; c, although on the front, is cut by crowding.
    assert [pruner.survives(pts, i) for i in range(5)] == [True, True, False, False, False]


def test_fixed_hypervolume_order_hand_worked() -> None:
    # The same points, default tie-break. Frame: accuracy as is (reference 0), parameters / 100
    # (the largest net; reference 1.1). Front 0 sorted by size: b (0.1, 0.80), c (0.5, 0.85),
    # a (1.0, 0.90); exclusive areas: b (0.5 - 0.1) * (0.80 - 0) = 0.32, c (1.0 - 0.5) *
    # (0.85 - 0.80) = 0.025, a (1.1 - 1.0) * (0.90 - 0.85) = 0.005. So b, c, a, then d, e.
    pts = np.array([[0.90, 100], [0.80, 10], [0.85, 50], [0.80, 60], [0.70, 70]])
    pruner = ParetoPruner(eta=3, max_epochs=9)
    assert pruner.tie_break == "fixed_hypervolume" and pruner.reach
    assert pruner.order(pts).tolist() == [1, 2, 0, 3, 4]
    # ceil(5/3) = 2 go on: b and c; a, the largest net, adds least and is cut (crowding kept it).
    assert [pruner.survives(pts, i) for i in range(5)] == [False, True, True, False, False]
    # Scaled by a larger net sampled elsewhere (1000 params), the areas along the size axis are
    # b 0.04 * 0.80 = 0.032, c 0.05 * 0.05 = 0.0025, a (1.1 - 0.1) * 0.05 = 0.05: a first.
    assert pruner.order(pts, largest=1000).tolist() == [0, 1, 2, 3, 4]


def test_fixed_hypervolume_keeps_the_accurate_one_of_two_incomparable_nets() -> None:
    # Two nets, neither dominates: 50 params at 40% and 60 params at 70%; one goes on (eta 2).
    # Normalised over the front itself (tie_break hypervolume) both contribute 0.1 and crowding
    # gives both inf, so the first to arrive is kept. In the fixed frame (largest net 1000):
    # small (0.06 - 0.05) * 0.40 = 0.004, large (1.1 - 0.06) * (0.70 - 0.40) = 0.312.
    pts = np.array([[0.40, 50], [0.70, 60]])
    assert ParetoPruner(eta=2, max_epochs=8).order(pts, largest=1000).tolist() == [1, 0]
    assert not ParetoPruner(eta=2, max_epochs=8).survives(pts, 0, largest=1000)
    assert ParetoPruner(eta=2, max_epochs=8, tie_break="hypervolume").order(pts).tolist() == [0, 1]
    assert ParetoPruner(eta=2, max_epochs=8, tie_break="crowding").order(pts).tolist() == [0, 1]


def _frozen(number: int, values: dict[int, float], params: int, state: TrialState = TrialState.COMPLETE,
            **attrs: object) -> FrozenTrial:
    t = optuna.trial.create_trial(state=state, values=[values[max(values)], params] if state == TrialState.COMPLETE
                                  else None, intermediate_values=values, user_attrs={"params": params, **attrs})
    t.number = number
    return t


def _reach_population() -> list[FrozenTrial]:
    # Completed (budget 9): gains from epoch 3 to 9 are 0.02, 0.04, 0.06, 0.08, so the
    # upper quartile (numpy's linear interpolation) is 0.065 and the median 0.05.
    return [
        _frozen(0, {3: 0.58, 9: 0.60}, 1000),
        _frozen(1, {3: 0.58, 9: 0.62}, 1000),
        _frozen(2, {3: 0.58, 9: 0.64}, 1000),
        _frozen(3, {3: 0.72, 9: 0.80}, 50),       # the small strong net: final (0.80, 50)
    ]


def test_reachable_hand_worked() -> None:
    pruner = ParetoPruner(eta=3, max_epochs=9)
    done = _reach_population()
    x1 = _frozen(10, {3: 0.73}, 60, TrialState.RUNNING)    # 0.73 + 0.065 = 0.795 < 0.80 with 60 >= 50 params
    x2 = _frozen(11, {3: 0.74}, 60, TrialState.RUNNING)    # 0.805 > 0.80: could still reach the front
    x3 = _frozen(12, {3: 0.50}, 40, TrialState.RUNNING)    # nothing is smaller
    trials = [*done, x1, x2, x3]
    assert not pruner.reachable(trials, x1, 3)
    assert pruner.reachable(trials, x2, 3)
    assert pruner.reachable(trials, x3, 3)
    # A running net of 55 params at 0.76 after epoch 3 is expected at 0.76 + 0.05 (median) = 0.81,
    # which dominates x2's optimistic (0.805, 60) ...
    r = _frozen(13, {3: 0.76}, 55, TrialState.RUNNING)
    assert not pruner.reachable([*trials, r], x2, 3)
    # ... unless it is out of the race (stopped by the scheduler, or told PRUNED), or has not
    # reached epoch 3 yet (its value at epoch 1 says nothing about epoch 3's race).
    assert pruner.reachable([*trials, _frozen(13, {3: 0.76}, 55, TrialState.RUNNING, pruned_at_epoch=3)], x2, 3)
    assert pruner.reachable([*trials, _frozen(13, {1: 0.76, 3: 0.76}, 55, TrialState.PRUNED)], x2, 3)
    assert pruner.reachable([*trials, _frozen(13, {1: 0.90}, 55, TrialState.RUNNING)], x2, 3)
    # Before any trial completed, everything is reachable.
    assert pruner.reachable([x1, x2, r], x1, 3)


def test_reach_stops_a_trial_inside_the_quota() -> None:
    # At rung 3, x1 (0.73, 60) and the small strong net (0.72, 50) form front 0 (the three
    # 1000-parameter nets at 0.58 are dominated); 5 points keep ceil(5 / 3) = 2, so x1 is in the
    # quota, but it cannot reach the front (test_reachable_hand_worked): reach stops it.
    study = SimpleNamespace(get_trials=lambda deepcopy=True, states=None: [*_reach_population(), x1])
    x1 = _frozen(10, {3: 0.73}, 60, TrialState.RUNNING)
    assert ParetoPruner(eta=3, max_epochs=9).prune(study, x1)
    assert not ParetoPruner(eta=3, max_epochs=9, reach=False).prune(study, x1)
    x2 = _frozen(11, {3: 0.74}, 60, TrialState.RUNNING)
    study2 = SimpleNamespace(get_trials=lambda deepcopy=True, states=None: [*_reach_population(), x2])
    assert not ParetoPruner(eta=3, max_epochs=9).prune(study2, x2)


def test_make_pruner_and_space_pass_the_pareto_options(tmp_path: Path) -> None:
    pruner = make_pruner({"name": "pareto"}, max_epochs=9)
    assert (pruner.tie_break, pruner.reach) == ("fixed_hypervolume", True)
    pruner = make_pruner({"name": "pareto", "tie_break": "crowding", "reach": False}, max_epochs=9)
    assert (pruner.tie_break, pruner.reach, pruner.protect_schemes) == ("crowding", False, False)
    assert make_pruner({"name": "pareto", "protect_schemes": True}, max_epochs=9).protect_schemes is True
    with pytest.raises(ValueError, match="tie_break"):
        ParetoPruner(tie_break="volume")
    text = (Path(__file__).resolve().parent.parent / "search_spaces" / "fashion_quick.yaml").read_text()
    good = text.replace("pruner: {name: pareto, eta: 3, min_epochs: 1, protect_schemes: true}",
                        "pruner: {name: pareto, eta: 3, min_epochs: 1, tie_break: fixed_hypervolume, reach: false}")
    assert good != text
    (tmp_path / "good.yaml").write_text(good)
    assert load_space(tmp_path / "good.yaml", check_data_dir=False).pruner["reach"] is False
    (tmp_path / "bad.yaml").write_text(good.replace("reach: false", "reach: 1"))
    with pytest.raises(Exception, match="reach"):
        load_space(tmp_path / "bad.yaml", check_data_dir=False)
    (tmp_path / "protect.yaml").write_text(good.replace("reach: false", "protect_schemes: true"))
    assert load_space(tmp_path / "protect.yaml", check_data_dir=False).pruner["protect_schemes"] is True
    (tmp_path / "bad_protect.yaml").write_text(good.replace("reach: false", "protect_schemes: yes please"))
    with pytest.raises(Exception, match="search.pruner.protect_schemes"):
        load_space(tmp_path / "bad_protect.yaml", check_data_dir=False)


def _rung_study(*trials: FrozenTrial) -> SimpleNamespace:
    return SimpleNamespace(get_trials=lambda deepcopy=True, states=None: list(trials))


def test_protect_schemes_lets_each_schemes_best_past_the_last_rung_only() -> None:
    # Budget 9, eta 3: rungs at epochs 1 and 3. Three euler/lm nets dominate x (rev), and
    # 4 points keep ceil(4 / 3) = 2, so plain successive halving stops x at either rung.
    peers = [_frozen(0, {1: 0.50, 3: 0.80}, 100, TrialState.RUNNING, scheme="euler"),
             _frozen(1, {1: 0.52, 3: 0.82}, 90, TrialState.RUNNING, scheme="euler"),
             _frozen(2, {1: 0.55, 3: 0.85}, 80, TrialState.RUNNING, scheme="lm")]
    x = _frozen(10, {1: 0.40, 3: 0.70}, 120, TrialState.RUNNING, scheme="rev")
    x_at_1 = _frozen(10, {1: 0.40}, 120, TrialState.RUNNING, scheme="rev")
    plain, protect = ParetoPruner(eta=3, max_epochs=9), ParetoPruner(eta=3, max_epochs=9, protect_schemes=True)
    assert plain.rungs == [1, 3]
    assert plain.prune(_rung_study(*peers, x), x)
    assert not protect.prune(_rung_study(*peers, x), x)                 # the only rev at the last rung
    assert protect.prune(_rung_study(*peers, x_at_1), x_at_1)            # rung 1 is not the last
    better_rev = _frozen(3, {1: 0.45, 3: 0.75}, 130, TrialState.PRUNED, scheme="rev")
    assert protect.prune(_rung_study(*peers, better_rev, x), x)          # a rev did better at epoch 3
    tie = _frozen(3, {1: 0.45, 3: 0.70}, 130, TrialState.PRUNED, scheme="rev")
    assert not protect.prune(_rung_study(*peers, tie, x), x)             # a tie is still the best so far
    nan = _frozen(10, {1: 0.40, 3: float("nan")}, 120, TrialState.RUNNING, scheme="rev")
    assert protect.prune(_rung_study(*peers, nan), nan)
    schemeless = _frozen(10, {1: 0.40, 3: 0.70}, 120, TrialState.RUNNING)
    assert protect.prune(_rung_study(*peers, schemeless), schemeless)    # an old study's trial: no protection


def test_protect_schemes_still_applies_the_reach_test() -> None:
    # Rung 3 of budget 9: the completed population of _reach_population (euler) and two running
    # euler nets (0.80, 55) and (0.78, 58) that dominate x = (0.73, 60), the only rev: x is outside
    # the quota (7 points keep 3, all on front 0), so only protection keeps it. But the running
    # (0.80, 55) is expected at 0.80 + 0.05 (median gain) = 0.85, which dominates x's optimistic
    # final point 0.73 + 0.065 = 0.795 at 60 params: x cannot reach the front, and reach stops it.
    population = [_frozen(t.number, t.intermediate_values, t.user_attrs["params"], scheme="euler")
                  for t in _reach_population()]
    population += [_frozen(4, {3: 0.80}, 55, TrialState.RUNNING, scheme="euler"),
                   _frozen(5, {3: 0.78}, 58, TrialState.RUNNING, scheme="euler")]
    x = _frozen(10, {3: 0.73}, 60, TrialState.RUNNING, scheme="rev")
    study = _rung_study(*population, x)

    def pruned(**options: bool) -> bool:
        return ParetoPruner(eta=3, max_epochs=9, **options).prune(study, x)

    assert pruned(reach=False)                              # outside the quota
    assert not pruned(reach=False, protect_schemes=True)    # protected: the best rev so far
    assert pruned(protect_schemes=True)                     # protected, but it cannot reach the front


def test_a_failed_trial_takes_no_place_in_the_quota() -> None:
    # Rung 1 of budget 9, eta 3: 6 trials keep ceil(6 / 3) = 2. The failed trial 0 ranks first (most
    # accurate at the rung), then 1; x ranks third. Counted as a rival, 0 would take a place and stop
    # x; failed, it cannot go on, so its place is x's. The quota stays 2 (0 counts in n).
    peers = [_frozen(0, {1: 0.90}, 100, TrialState.FAIL),
             _frozen(1, {1: 0.80}, 100, TrialState.RUNNING),
             _frozen(2, {1: 0.60}, 100, TrialState.PRUNED),
             _frozen(3, {1: 0.50}, 100, TrialState.PRUNED),
             _frozen(4, {1: 0.40}, 100, TrialState.PRUNED)]
    x = _frozen(10, {1: 0.70}, 100, TrialState.RUNNING)
    pruner = ParetoPruner(eta=3, max_epochs=9, reach=False)
    assert not pruner.prune(_rung_study(*peers, x), x)
    assert pruner.prune(_rung_study(*peers, x), peers[2])                     # 4th in rank: still out
    running = [_frozen(0, {1: 0.90}, 100, TrialState.RUNNING), *peers[1:]]
    assert pruner.prune(_rung_study(*running, x), x)                          # alive, 0 keeps its place
    four = [peers[0], peers[1], peers[3], x]                                 # 4 trials keep ceil(4 / 3) = 2,
    assert not pruner.prune(_rung_study(*four), x)                            # not ceil(3 / 3) = 1: 0 counts in n


def test_failed_and_nan_rivals_do_not_block_protection() -> None:
    peers = [_frozen(0, {1: 0.50, 3: 0.80}, 100, TrialState.RUNNING, scheme="euler"),
             _frozen(1, {1: 0.52, 3: 0.82}, 90, TrialState.RUNNING, scheme="euler"),
             _frozen(2, {1: 0.55, 3: 0.85}, 80, TrialState.RUNNING, scheme="lm")]
    x = _frozen(10, {1: 0.40, 3: 0.70}, 120, TrialState.RUNNING, scheme="rev")
    protect = ParetoPruner(eta=3, max_epochs=9, protect_schemes=True)
    failed = _frozen(3, {1: 0.45, 3: 0.75}, 130, TrialState.FAIL, scheme="rev")   # crashed after the rung
    nan = _frozen(4, {1: 0.45, 3: float("nan")}, 130, TrialState.PRUNED, scheme="rev")
    assert not protect.prune(_rung_study(*peers, failed, nan, x), x)
    assert ParetoPruner.best_of_its_scheme([*peers, failed, nan], x, 3)
    assert not ParetoPruner.best_of_its_scheme(peers, peers[0], 3)  # euler at 0.80 < 0.82


def test_an_option_of_another_pruner_is_refused(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parent.parent / "search_spaces" / "fashion_quick.yaml").read_text()
    bad = text.replace("pruner: {name: pareto, eta: 3, min_epochs: 1, protect_schemes: true}",
                       "pruner: {name: successive_halving, eta: 3, min_epochs: 1, protect_schemes: true}")
    assert bad != text
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(Exception, match=r"search\.pruner\.protect_schemes: not an option of the successive_halving "
                                        r"pruner \(it has eta, min_epochs\)"):
        load_space(tmp_path / "bad.yaml", check_data_dir=False)
    (tmp_path / "median.yaml").write_text(bad.replace("name: successive_halving, eta: 3, min_epochs: 1, protect_schemes: true",
                                                      "name: median, percentile: 40"))
    with pytest.raises(Exception, match=r"search\.pruner\.percentile: not an option of the median pruner \(it has "
                                        r"warmup_epochs\)"):
        load_space(tmp_path / "median.yaml", check_data_dir=False)
    # the copy an earlier search saved in its folder (no check refused it then) still loads, with a note
    old_copy = load_space(tmp_path / "median.yaml", check_data_dir=False, saved=True)
    assert old_copy.pruner == {"name": "median"}
    assert old_copy.notes == ("search.pruner.percentile: not an option of the median pruner (it has warmup_epochs); "
                              "left out",)
    # a first rung at the last epoch: refused in a new space, a note in a saved copy that already ran
    (tmp_path / "late.yaml").write_text(text.replace("min_epochs: 1", "min_epochs: 6"))
    with pytest.raises(Exception, match=r"search\.pruner\.min_epochs: 6 puts the pruner's first decision at epoch 6, "
                                        r"and budget\.epochs is 6: it would never stop a trial; give at "
                                        r"most 5, or pruner: none"):
        load_space(tmp_path / "late.yaml", check_data_dir=False)
    late = load_space(tmp_path / "late.yaml", check_data_dir=False, saved=True)
    assert late.pruner["min_epochs"] == 6
    assert late.notes[-1] == ("search.pruner.min_epochs: 6 puts the pruner's first decision at epoch 6, and "
                              "budget.epochs is 6: it would never stop a trial")
    # the pruner's own default at the last epoch (budget.epochs 1): the space loads (the run names it, see
    # test_search); late_pruner says why, for the options the pruner has (median has no min_epochs)
    (tmp_path / "one.yaml").write_text(text.replace(", min_epochs: 1", "").replace("epochs: 6", "epochs: 1"))
    one = load_space(tmp_path / "one.yaml", check_data_dir=False)
    assert "min_epochs" not in one.pruner and one.epochs == 1 and one.notes == ()
    assert late_pruner(one.pruner, 1) == ("min_epochs", "1 puts the pruner's first decision at epoch 1, and "
                                                        "budget.epochs is 1: it would never stop a trial")
    assert late_pruner(one.pruner, 2) is None and late_pruner({"name": "none"}, 1) is None
    assert late_pruner({"name": "median"}, 1)[0] == "warmup_epochs"
    assert late_pruner({"name": "median", "warmup_epochs": 2}, 2)[0] == "warmup_epochs"  # Optuna: step >= warmup
    assert late_pruner({"name": "median", "warmup_epochs": 1}, 2) is None
    (tmp_path / "median1.yaml").write_text(
        bad.replace("name: successive_halving, eta: 3, min_epochs: 1, protect_schemes: true", "name: median")
        .replace("epochs: 6", "epochs: 1"))
    assert load_space(tmp_path / "median1.yaml", check_data_dir=False).notes == ()
    (tmp_path / "median0.yaml").write_text((tmp_path / "median1.yaml").read_text().replace(
        "name: median", "name: median, warmup_epochs: 0"))
    with pytest.raises(Exception, match=r"search\.pruner\.warmup_epochs: 0 puts the pruner's first decision at "
                                        r"epoch 1, .* a pruner needs budget\.epochs >= 2, or pruner: none"):
        load_space(tmp_path / "median0.yaml", check_data_dir=False)
    # the option is named before its value is judged
    (tmp_path / "eta.yaml").write_text(bad.replace("name: successive_halving, eta: 3, min_epochs: 1, protect_schemes: "
                                                   "true", "name: median, eta: 1"))
    with pytest.raises(Exception, match=r"search\.pruner\.eta: not an option of the median pruner"):
        load_space(tmp_path / "eta.yaml", check_data_dir=False)


def test_scheme_of_prefers_the_canonical_scheme() -> None:
    dist = {"scheme": optuna.distributions.CategoricalDistribution(["euler", "lm"])}
    sampled = optuna.trial.create_trial(state=TrialState.RUNNING, params={"scheme": "lm"}, distributions=dist)
    assert scheme_of(sampled) == "lm"
    canonical = optuna.trial.create_trial(state=TrialState.RUNNING, params={"scheme": "lm"}, distributions=dist,
                                          user_attrs={"scheme": "euler"})
    assert scheme_of(canonical) == "euler"
    assert scheme_of(optuna.trial.create_trial(state=TrialState.RUNNING)) is None


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
