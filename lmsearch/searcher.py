"""Optuna inside Ray Tune, with the study on disk and honest trial states.

Ray's ``OptunaSearch`` tells Optuna COMPLETE whenever a trial left a result,
even when a scheduler stopped it early or it raised after a few epochs; those
partial values then sit on Optuna's Pareto front. :class:`StudySearcher` tells
Optuna what really happened (see :func:`trial_outcome`) and keeps the study in
the experiment folder (SQLite) so ``optuna-dashboard`` can open it and a
resumed search continues the same study.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from lmsearch.space import SearchSpace

__all__ = ["StudySearcher", "trial_outcome", "make_sampler", "study_storage_url", "COMPLETE", "PRUNED", "FAILED",
           "RUNNING"]

COMPLETE, PRUNED, FAILED, RUNNING = "COMPLETE", "PRUNED", "FAILED", "RUNNING"
# Statuses a trial function reports besides "running"/"completed".
STATUS_DIVERGED = "diverged"
STATUS_OVER_BUDGET = "over_budget"
STATUS_PRUNED = "pruned"


def trial_outcome(result: dict[str, Any] | None, errored: bool) -> str:
    """COMPLETE, PRUNED or FAILED for a trial that has ended.

    COMPLETE only when the trial trained its whole epoch budget; stopped early
    (by a pruner or a scheduler) or skipped for exceeding ``max_params`` is
    PRUNED; raised or diverged is FAILED.
    """
    if errored:
        return FAILED
    if not result:
        return PRUNED
    status = result.get("status")
    if status == STATUS_DIVERGED:
        return FAILED
    if status in (STATUS_OVER_BUDGET, STATUS_PRUNED):
        return PRUNED
    if result.get("epoch", 0) < result.get("epochs", math.inf):
        return PRUNED
    return COMPLETE


def study_storage_url(exp_dir: str | Path) -> str:
    return f"sqlite:///{Path(exp_dir).resolve() / 'study.db'}"


class _PrunedScoresView:
    """A multi-objective study whose ``direction`` answers for the intermediate values (validation accuracy).

    Optuna's TPE scores PRUNED trials by their last intermediate value using
    ``study.direction``, which raises on a multi-objective study (optuna 5.0);
    our pruners record validation accuracy there, so that direction is MAXIMIZE.
    """

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    @property
    def direction(self) -> optuna.study.StudyDirection:
        return optuna.study.StudyDirection.MAXIMIZE

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class MultiObjectiveTPESampler(optuna.samplers.TPESampler):
    """TPESampler that copes with pruned trials carrying intermediate values in a multi-objective study."""

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: dict) -> dict[str, Any]:
        return super().sample_relative(_PrunedScoresView(study), trial, search_space)  # type: ignore[arg-type]

    def sample_independent(self, study: optuna.Study, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return super().sample_independent(_PrunedScoresView(study), trial, param_name,  # type: ignore[arg-type]
                                          param_distribution)


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The Optuna sampler a space names (grid points are enqueued, then sampled as given)."""
    seed = space.seed
    if space.sampler == "tpe":
        return MultiObjectiveTPESampler(seed=seed, multivariate=True, constant_liar=True)
    if space.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, space.num_samples // 2)))
    if space.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


class _DefineByRun:
    """Samples one configuration of ``space`` and counts its parameters (picklable, unlike a bound method)."""

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int) -> None:
        self.space, self.in_channels, self.num_classes = space, in_channels, num_classes

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        from lmsearch.nn.counting import count_params

        sampled = self.space.suggest(trial)
        spec = self.space.arch_spec(sampled["arch"], in_channels=self.in_channels, num_classes=self.num_classes)
        return {**sampled, "spec": spec.to_dict(), "params": count_params(spec), "number": trial.number}


class StudySearcher(OptunaSearch):
    """OptunaSearch over a :class:`SearchSpace`, define-by-run, with a persisted study.

    Each configuration carries, besides the sampled values, ``arch`` and
    ``train`` (what the trial function builds), ``params`` (counted before
    training) and ``number`` (the Optuna trial number). Architectures get the
    loaded dataset's ``in_channels`` and ``num_classes``.
    """

    def __init__(self, space: SearchSpace, exp_dir: str | Path, *, in_channels: int, num_classes: int,
                 fresh: bool) -> None:
        self.space = space
        storage = optuna.storages.RDBStorage(study_storage_url(exp_dir))
        points = space.grid() if space.sampler == "grid" and fresh else None
        super().__init__(
            space=_DefineByRun(space, in_channels, num_classes),
            metric=space.metric_names,
            mode=space.modes,
            sampler=make_sampler(space),
            study_name=space.name,
            storage=storage,
            points_to_evaluate=points,
        )

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is not None:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            ot_trial.set_user_attr("params", config["params"])  # the Pareto pruner's second objective
        return config

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self.reconcile_orphans()

    def reconcile_orphans(self) -> list[int]:
        """Fail the study's RUNNING trials that Ray does not know, queueing their configurations again.

        They were asked for after Ray last saved the experiment, then the driver
        died: no Ray trial will ever finish them. Their configuration is queued
        again so a grid loses no point. Returns the orphans' trial numbers.
        """
        known = {t._trial_id for t in self._ot_trials.values()}
        storage = self._ot_study._storage
        orphans = []
        for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t._trial_id in known:
                continue
            self._ot_study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number}, skip_if_exists=False)
            storage.set_trial_user_attr(t._trial_id, "orphaned", "the search driver died before Ray recorded this "
                                                                 "trial; its configuration was queued again")
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            orphans.append(t.number)
        return orphans

    def finished_outcomes(self) -> dict[int, str]:
        """Optuna trial number -> COMPLETE, PRUNED or FAILED for every trial the study has finished.

        Orphans failed by :meth:`reconcile_orphans` are left out: their configuration runs again.
        """
        names = {optuna.trial.TrialState.COMPLETE: COMPLETE, optuna.trial.TrialState.PRUNED: PRUNED}
        return {t.number: names.get(t.state, FAILED) for t in self._ot_study.get_trials(deepcopy=False)
                if t.state.is_finished() and "orphaned" not in t.user_attrs}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        self._completed_trials.add(trial_id)
        if self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            return  # told before the driver died; the resumed trial only re-reported its result
        outcome = trial_outcome(result, error)
        if result:
            ot_trial.set_user_attr("epochs_run", int(result.get("epoch", 0)))
            if result.get("status"):
                ot_trial.set_user_attr("status", str(result["status"]))
        if outcome == COMPLETE:
            values = [float(result[m]) for m in self.space.metric_names]  # type: ignore[index]
            if all(math.isfinite(v) for v in values):
                self._ot_study.tell(ot_trial, values, state=optuna.trial.TrialState.COMPLETE)
            else:
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        elif outcome == PRUNED:
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
