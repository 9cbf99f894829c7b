"""The searcher's view of trial outcomes, and every sampler driving a conditional space with pruned trials."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

from lmsearch.searcher import COMPLETE, FAILED, PRUNED, make_sampler, trial_outcome
from lmsearch.space import load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


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
def test_every_sampler_drives_a_conditional_space(tmp_path: Path, sampler: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(f"""
        architecture:
          scheme: [euler, lm, rk2]
          depth: {{euler: [8, 14], lm: [8, 14], rk2: [14, 26]}}
          width: [4, 8]
          noise: [none, stochastic_depth]
          noise_prob: {{low: 0.1, high: 0.5}}
        training: {{lr: {{low: 0.01, high: 0.2, log: true}}}}
        search: {{sampler: {sampler}, num_samples: 12, seed: 0}}
    """))
    space = load_space(path)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(space))
    for i in range(16):
        trial = study.ask()
        config = space.suggest(trial)
        spec = space.arch_spec(config["arch"], in_channels=1, num_classes=10)
        if i % 3 == 2:  # pruned after an epoch, its accuracy recorded as our pruners do
            study._storage.set_trial_intermediate_value(trial._trial_id, 1, 0.1 * i)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, [0.5 + 0.01 * i, float(spec.width * spec.depth)])
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == 5
    assert states.count(optuna.trial.TrialState.COMPLETE) == 11
    # PRUNED trials never reach Optuna's Pareto front
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.best_trials)
