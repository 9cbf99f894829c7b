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
  the trials that reached that rung, ties broken by crowding distance or
  hypervolume contribution. Asynchronous: a trial is judged against whoever
  reached the rung before it (as ASHA does), never waits for a full rung.

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
from optuna.trial import FrozenTrial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from lmsearch.pareto import crowding_distance, hypervolume_points, nondominated_rank
from lmsearch.searcher import PARAMS_ATTR, StudyRecord, study_storage_url

__all__ = ["ParetoPruner", "HyperbandPruner", "PrunerScheduler", "make_pruner", "make_scheduler", "PARAMS_ATTR"]


def rungs(min_epochs: int, eta: int, max_epochs: int) -> list[int]:
    """Epochs at which a successive-halving pruner judges: min_epochs * eta**k < max_epochs."""
    out, r = [], min_epochs
    while r < max_epochs:
        out.append(r)
        r *= eta
    return out


class ParetoPruner(BasePruner):
    """Asynchronous successive halving by non-dominated rank of (accuracy, parameters).

    Args:
        eta: reduction factor; the top ``ceil(n / eta)`` of the ``n`` trials at a rung go on.
        min_epochs: the first rung; later rungs are ``min_epochs * eta**k``.
        max_epochs: the epoch budget (no rung at or beyond it).
        tie_break: ``crowding`` (NSGA-II crowding distance, larger kept) or
            ``hypervolume`` (exclusive hypervolume contribution, larger kept)
            among points of equal non-dominated rank.

    A trial's accuracy at a rung is its intermediate value at that epoch; its
    parameter count is the user attribute ``params`` set when it was sampled.
    """

    def __init__(self, eta: int = 3, min_epochs: int = 1, max_epochs: int = 100,
                 tie_break: str = "crowding") -> None:
        if eta < 2:
            raise ValueError(f"eta must be >= 2; got {eta}")
        if tie_break not in ("crowding", "hypervolume"):
            raise ValueError(f"tie_break must be crowding or hypervolume; got {tie_break!r}")
        self.eta, self.min_epochs, self.max_epochs, self.tie_break = eta, min_epochs, max_epochs, tie_break
        self.rungs = rungs(min_epochs, eta, max_epochs)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step not in self.rungs or PARAMS_ATTR not in trial.user_attrs:
            return False
        peers = [t for t in study.get_trials(deepcopy=False)
                 if t.number != trial.number and step in t.intermediate_values and PARAMS_ATTR in t.user_attrs]
        points = [(t.intermediate_values[step], t.user_attrs[PARAMS_ATTR]) for t in peers]
        points.append((trial.intermediate_values[step], trial.user_attrs[PARAMS_ATTR]))
        return not self.survives(np.asarray(points, dtype=float), len(points) - 1)

    def survives(self, points: np.ndarray, index: int) -> bool:
        """Whether ``points[index]`` ranks in the top ``ceil(n / eta)`` of ``points`` (accuracy, params)."""
        keep = math.ceil(len(points) / self.eta)
        return index in self.order(points)[:keep]

    def order(self, points: np.ndarray) -> np.ndarray:
        """Indices of (accuracy, params) points, best first: by front, then by the tie-break."""
        minimised = np.column_stack([-points[:, 0], points[:, 1]])
        rank = nondominated_rank(minimised)
        rank = np.where(rank < 0, rank.max() + 1, rank)  # NaN accuracy ranks last
        spread = np.zeros(len(points))
        for level in np.unique(rank):
            members = np.flatnonzero(rank == level)
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
        ref = np.full(front.shape[1], 1.1)
        total = hypervolume_points(scaled[ok], ref)
        out = np.zeros(len(front))
        for i in np.flatnonzero(ok):
            rest = scaled[ok & (np.arange(len(front)) != i)]
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
    min_epochs = int(config.get("min_epochs", 1))
    warmup = int(config.get("warmup_epochs", 0))
    if name == "pareto":
        return ParetoPruner(eta=eta, min_epochs=min_epochs, max_epochs=max_epochs,
                            tie_break=config.get("tie_break", "crowding"))
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
            self.record.set_user_attr(number, "pruned_at_epoch", int(result["epoch"]))
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def make_scheduler(space: Any, exp_dir: Any) -> PrunerScheduler:
    """The scheduler for a space whose pruner is not ``none``."""
    return PrunerScheduler(make_pruner(space.pruner, space.epochs), study_storage_url(exp_dir), space.name)
