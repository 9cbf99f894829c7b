"""Pruning inside Ray Tune, with Optuna's pruners and a Pareto-aware one.

Two pieces, one mechanism:

* :class:`PrunerScheduler`, a Ray Tune scheduler that records each epoch's
  validation accuracy in the Optuna study as an intermediate value (through
  :class:`lmsearch.searcher.StudyRecord`, as the searcher does) and asks an
  Optuna pruner whether to stop the trial. All pruner state therefore lives
  in the study (SQLite in the experiment folder), so a ``--resume``d search
  prunes exactly as before. Optuna's own pruners refuse multi-objective
  studies (``study.direction`` raises); they are shown a single-objective view
  of the study that maximises the accuracy.
* :class:`ParetoPruner`, the default for multi-objective searches: at rungs
  ``min_epochs * eta**k`` a trial goes on only if its (accuracy at the rung,
  parameters) point ranks in the top ``1/eta`` by non-dominated sorting among
  the trials that reached that rung, ties broken by hypervolume contribution
  (or crowding distance), and, once trials have completed, only if it could
  still reach the front (see :meth:`ParetoPruner.reachable`). Asynchronous: a
  trial is judged against whoever reached the rung before it (as ASHA does),
  never waits for a full rung.

A stopped trial is told to Optuna as PRUNED by the searcher (its epoch count
is below the budget), stays off every Pareto front, and its row in trials.csv
shows PRUNED and the epoch it stopped at.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from lmsearch.pareto import crowding_distance, hypervolume_points, nondominated_rank
from lmsearch.searcher import PARAMS_ATTR, SCHEME_ATTR, StudyRecord, study_storage_url
from lmsearch.space import FIRST_DECISION_DEFAULTS

#: User attribute the scheduler sets on a trial it stops: the epoch it was stopped at.
PRUNED_AT_ATTR = "pruned_at_epoch"

__all__ = ["ParetoPruner", "HyperbandPruner", "PrunerScheduler", "make_pruner", "make_scheduler", "PARAMS_ATTR",
           "TIE_BREAKS", "hypervolume_contributions"]


def rungs(min_epochs: int, eta: int, max_epochs: int) -> list[int]:
    """Epochs at which a successive-halving pruner judges: min_epochs * eta**k < max_epochs."""
    out, r = [], min_epochs
    while r < max_epochs:
        out.append(r)
        r *= eta
    return out


TIE_BREAKS = ("fixed_hypervolume", "crowding", "hypervolume")


class ParetoPruner(BasePruner):
    """Asynchronous successive halving by non-dominated rank of (accuracy, parameters), plus a reachability test.

    Args:
        eta: reduction factor; the top ``ceil(n / eta)`` of the ``n`` trials at a rung go on
            (a trial that failed after the rung counts in ``n`` but takes no place in the top).
        min_epochs: the first rung; later rungs are ``min_epochs * eta**k``.
        max_epochs: the epoch budget (no rung at or beyond it).
        tie_break: how points of equal non-dominated rank are ordered (larger kept first):

            * ``fixed_hypervolume`` (default): exclusive hypervolume contribution in one
              frame for every rung: accuracy as measured, from 0; parameters as a share of
              the largest net sampled so far (all trials of the study); reference point
              (accuracy 0, 1.1).
            * ``hypervolume``: the same contribution with both objectives min-max
              normalised over the front itself (on a front of two points both
              contribute alike, whatever their accuracies).
            * ``crowding``: NSGA-II crowding distance, the extremes of a front first
              (the default before issue 16, with ``reach=False``).
        reach: also stop a trial of the quota that could no longer reach the front
            (:meth:`reachable`); ``False`` is plain successive halving by rank.
        protect_schemes: at the last rung, a trial outside the quota still goes on if it
            is the most accurate so far of its scheme at that rung (the reachability
            test still applies), so that a scheme whose best net trails at that rung
            still gets one net trained to the end (issue 16). Rivals are the trials of
            the same scheme that reached the rung, failed ones excepted; in a space of
            one scheme the most accurate trial so far is protected. A trial's scheme is
            its user attribute ``scheme`` (set by the searcher: the canonical scheme,
            so an lm net without LM steps counts as euler), else its sampled parameter
            ``scheme``; a trial with neither is never protected nor a rival. (A resumed
            search keeps the pruner it started with, so a study never mixes trials
            judged with and without this option.)

    A trial's accuracy at a rung is its intermediate value at that epoch; its
    parameter count is the user attribute ``params`` set when it was sampled. A
    completed trial's final accuracy is its intermediate value at ``max_epochs``
    (the searcher records the last epoch too). Every decision is a function of
    the study alone, so a resumed search prunes exactly as before.
    """

    #: Quantiles of the gains completed trials made from an epoch to the end: the
    #: candidate is credited the upper quartile (optimistic), the trials it is
    #: compared with the median (typical).
    OPTIMISTIC_GAIN = 0.75
    TYPICAL_GAIN = 0.5

    def __init__(self, eta: int = 3, min_epochs: int = 1, max_epochs: int = 100,
                 tie_break: str = "fixed_hypervolume", reach: bool = True, protect_schemes: bool = False) -> None:
        if eta < 2:
            raise ValueError(f"eta must be >= 2; got {eta}")
        if tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {', '.join(TIE_BREAKS)}; got {tie_break!r}")
        self.eta, self.min_epochs, self.max_epochs, self.tie_break = eta, min_epochs, max_epochs, tie_break
        self.reach, self.protect_schemes = bool(reach), bool(protect_schemes)
        self.rungs = rungs(min_epochs, eta, max_epochs)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step not in self.rungs or PARAMS_ATTR not in trial.user_attrs:
            return False
        trials = study.get_trials(deepcopy=False)
        peers = [t for t in trials
                 if t.number != trial.number and step in t.intermediate_values and PARAMS_ATTR in t.user_attrs]
        # a trial that failed after the rung counts in the rung's population but takes none of its places:
        # it cannot go on, so its place goes to the next in rank
        rivals = [t for t in peers if t.state != TrialState.FAIL]
        points = [(t.intermediate_values[step], t.user_attrs[PARAMS_ATTR]) for t in rivals]
        points.append((trial.intermediate_values[step], trial.user_attrs[PARAMS_ATTR]))
        largest = max(t.user_attrs[PARAMS_ATTR] for t in trials if PARAMS_ATTR in t.user_attrs)
        keep = math.ceil((len(peers) + 1) / self.eta)
        if not self.survives(np.asarray(points, dtype=float), len(points) - 1, largest, keep=keep) \
                and not (self.protect_schemes and step == self.rungs[-1] and self.best_of_its_scheme(peers, trial, step)):
            return True
        return self.reach and not self.reachable(trials, trial, step)

    @staticmethod
    def best_of_its_scheme(peers: list[FrozenTrial], trial: FrozenTrial, step: int) -> bool:
        """Whether ``trial`` is at least as accurate at ``step`` as every peer of its scheme that reached
        ``step`` and did not fail (NaN accuracies are no rivals; a NaN trial is never the best)."""
        scheme = scheme_of(trial)
        if scheme is None:
            return False
        accuracy = trial.intermediate_values[step]
        rivals = [t.intermediate_values[step] for t in peers if scheme_of(t) == scheme and t.state != TrialState.FAIL]
        return not math.isnan(accuracy) and all(accuracy >= r for r in rivals if not math.isnan(r))

    def survives(self, points: np.ndarray, index: int, largest: float | None = None, keep: int | None = None) -> bool:
        """Whether ``points[index]`` ranks in the top ``keep`` (default ``ceil(n / eta)``) of the ``n``
        ``points`` (accuracy, params)."""
        keep = math.ceil(len(points) / self.eta) if keep is None else keep
        return index in self.order(points, largest)[:keep]

    def order(self, points: np.ndarray, largest: float | None = None) -> np.ndarray:
        """Indices of (accuracy, params) points, best first: by front, then by the tie-break.

        ``largest``: the parameter count that scales the ``fixed_hypervolume`` frame
        (default: the largest of ``points``).
        """
        points = np.asarray(points, dtype=float)
        minimised = np.column_stack([-points[:, 0], points[:, 1]])
        rank = nondominated_rank(minimised)
        rank = np.where(rank < 0, rank.max() + 1, rank)  # NaN accuracy ranks last
        if self.tie_break == "fixed_hypervolume":
            if largest is None:
                ok = np.all(np.isfinite(minimised), axis=1)
                largest = float(points[ok, 1].max()) if ok.any() else 1.0
            frame = np.column_stack([minimised[:, 0], points[:, 1] / (largest if largest > 0 else 1.0)])
        spread = np.zeros(len(points))
        for level in np.unique(rank):
            members = np.flatnonzero(rank == level)
            if self.tie_break == "fixed_hypervolume":
                spread[members] = hypervolume_contributions(frame[members], np.array([0.0, 1.1]))
            else:
                spread[members] = self._spread(minimised[members])
        # lexsort: last key is primary. Equal spread falls back to the order of arrival.
        return np.lexsort((np.arange(len(points)), -spread, rank))

    def _spread(self, front: np.ndarray) -> np.ndarray:
        if self.tie_break == "crowding" or len(front) == 1:
            return crowding_distance(front)
        ok = np.all(np.isfinite(front), axis=1)
        if not ok.any():
            return np.zeros(len(front))
        # Normalise each objective to [0, 1] over the front so accuracy and parameter
        # counts weigh alike, with the reference point just beyond the worst corner.
        low, high = front[ok].min(axis=0), front[ok].max(axis=0)
        scaled = (front - low) / np.where(high > low, high - low, 1.0)
        return hypervolume_contributions(scaled, np.full(front.shape[1], 1.1))

    def reachable(self, trials: list[FrozenTrial], trial: FrozenTrial, step: int) -> bool:
        """Whether ``trial``, at rung ``step``, could still reach the front of the trials still in the race.

        Uses the trials that completed (those with an accuracy at ``max_epochs``):
        their gains from an epoch ``s`` to the end, ``acc(max_epochs) - acc(s)``.
        The trial's optimistic final point is its accuracy at ``step`` plus the
        upper quartile of the gains from ``step``. It could not reach the front if
        that point is dominated by the expected final point of a trial still in
        the race that got at least as far: a completed trial's final accuracy, or a
        running trial's latest accuracy (at an epoch ``s >= step``) plus the median
        gain from ``s``. Pruned and failed trials are out of the race. With no
        completed trial every trial is reachable.
        """
        done = [t for t in trials if self.max_epochs in t.intermediate_values]
        if not done:
            return True

        def gain(epoch: int, q: float) -> float | None:
            gains = [t.intermediate_values[self.max_epochs] - t.intermediate_values[epoch]
                     for t in done if epoch in t.intermediate_values]
            return float(np.quantile(gains, q)) if gains else None

        optimistic = gain(step, self.OPTIMISTIC_GAIN)
        if optimistic is None:
            return True
        acc, params = trial.intermediate_values[step] + optimistic, trial.user_attrs[PARAMS_ATTR]
        for other in trials:
            if other.number == trial.number or PARAMS_ATTR not in other.user_attrs or not other.intermediate_values:
                continue
            if other.state in (TrialState.PRUNED, TrialState.FAIL) or PRUNED_AT_ATTR in other.user_attrs:
                continue
            last = max(other.intermediate_values)
            if last < step:
                continue
            later = 0.0 if last >= self.max_epochs else gain(last, self.TYPICAL_GAIN)
            if later is None:
                continue
            value, size = other.intermediate_values[last] + later, other.user_attrs[PARAMS_ATTR]
            if value >= acc and size <= params and (value > acc or size < params):
                return False
        return True


def scheme_of(trial: FrozenTrial) -> str | None:
    """A trial's canonical scheme (user attribute), else its sampled scheme, else None."""
    scheme = trial.user_attrs.get(SCHEME_ATTR, trial.params.get("scheme"))
    return None if scheme is None else str(scheme)


def hypervolume_contributions(points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Exclusive hypervolume contribution of each (minimised) point w.r.t. ``ref``; 0 for non-finite points."""
    points = np.asarray(points, dtype=float)
    ok = np.all(np.isfinite(points), axis=1)
    out = np.zeros(len(points))
    if not ok.any():
        return out
    total = hypervolume_points(points[ok], ref)
    for i in np.flatnonzero(ok):
        rest = points[ok & (np.arange(len(points)) != i)]
        out[i] = total - (hypervolume_points(rest, ref) if len(rest) else 0.0)
    return out


class _MaximiseAccuracyView:
    """A multi-objective study seen by Optuna's single-objective pruners as maximising the reported metric.

    ``bracket=(b, n)`` further restricts it to the trials whose number is b modulo n.
    """

    def __init__(self, study: optuna.Study, bracket: tuple[int, int] | None = None) -> None:
        self._study, self._bracket = study, bracket

    @property
    def direction(self) -> StudyDirection:
        return StudyDirection.MAXIMIZE

    @property
    def directions(self) -> list[StudyDirection]:
        return [StudyDirection.MAXIMIZE]

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        if self._bracket is None:
            return trials
        b, n = self._bracket
        return [t for t in trials if t.number % n == b]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class HyperbandPruner(BasePruner):
    """Hyperband as brackets of Optuna's SuccessiveHalvingPruner, usable on multi-objective studies.

    Optuna's own HyperbandPruner rebuilds the study internally and so cannot run
    on a multi-objective one. Here bracket ``s`` (0 .. n-1) is a successive
    halving with rungs at ``min_epochs * eta**(s + k)``; trial number i goes to
    bracket ``i mod n`` (round robin, rather than Optuna's budget-weighted draw).
    """

    def __init__(self, min_epochs: int = 1, max_epochs: int = 100, eta: int = 3) -> None:
        self.n_brackets = max(1, len(rungs(min_epochs, eta, max_epochs)))
        self._pruners = [
            optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=eta,
                                                   min_early_stopping_rate=s)
            for s in range(self.n_brackets)
        ]

    def prune(self, study: Any, trial: FrozenTrial) -> bool:
        bracket = trial.number % self.n_brackets
        view = _MaximiseAccuracyView(getattr(study, "_study", study), (bracket, self.n_brackets))
        return self._pruners[bracket].prune(view, trial)


def make_pruner(config: dict[str, Any], max_epochs: int) -> BasePruner:
    """The pruner a space's ``search.pruner`` names, with its parameters."""
    name = config.get("name", "none")
    eta = int(config.get("eta", 3))
    min_epochs = int(config.get("min_epochs", FIRST_DECISION_DEFAULTS["min_epochs"]))
    warmup = int(config.get("warmup_epochs", FIRST_DECISION_DEFAULTS["warmup_epochs"]))
    if name == "pareto":
        return ParetoPruner(eta=eta, min_epochs=min_epochs, max_epochs=max_epochs,
                            tie_break=config.get("tie_break", "fixed_hypervolume"),
                            reach=bool(config.get("reach", True)),
                            protect_schemes=bool(config.get("protect_schemes", False)))
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(float(config.get("percentile", 25.0)), n_startup_trials=2,
                                               n_warmup_steps=warmup)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=eta)
    if name == "hyperband":
        return HyperbandPruner(min_epochs=min_epochs, max_epochs=max_epochs, eta=eta)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner must be one of pareto, median, percentile, successive_halving, hyperband, none; "
                     f"got {name!r}")


class PrunerScheduler(FIFOScheduler):
    """Ray Tune scheduler: record each epoch's accuracy in the Optuna study, stop what the pruner prunes.

    Trials are matched to the study by the Optuna trial number in their config.
    ``storage`` is the study's database URL, or a storage object (e.g. an
    ``InMemoryStorage`` for a replay without an experiment folder). Only the
    URL and the study name are pickled with the scheduler (Tune saves it with
    the experiment); the connection is reopened on demand.
    """

    def __init__(self, pruner: BasePruner, storage: str | BaseStorage, study_name: str) -> None:
        super().__init__()
        self.pruner = pruner
        self.record = StudyRecord(storage, study_name)
        self._study: optuna.Study | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_study": None}

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = optuna.load_study(study_name=self.record.study_name, storage=self.record.storage)
        return self._study

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get("status") != "running" or "number" not in trial.config:
            return TrialScheduler.CONTINUE
        number = trial.config["number"]
        # Recorded here, before the searcher hears of the result: the pruner judges this epoch.
        frozen = self.record.record_epoch(number, result)
        if frozen is None:
            return TrialScheduler.CONTINUE
        if self.pruner.prune(_MaximiseAccuracyView(self.study), frozen):
            self.record.set_user_attr(number, PRUNED_AT_ATTR, int(result["epoch"]))
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def make_scheduler(space: Any, exp_dir: Any) -> PrunerScheduler:
    """The scheduler for a space whose pruner is not ``none``."""
    return PrunerScheduler(make_pruner(space.pruner, space.epochs), study_storage_url(exp_dir), space.name)
