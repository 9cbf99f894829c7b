"""Optuna inside Ray Tune, with the study on disk and honest trial states.

:class:`StudySearcher` is a Ray Tune ``Searcher`` driving Optuna through its
ask-and-tell interface. Unlike Ray's ``OptunaSearch``, which tells Optuna
COMPLETE whenever a trial left a result (a trial a scheduler stopped, or one
that raised after a few epochs, then sits on Optuna's Pareto front), it tells
Optuna what really happened (:func:`lmsearch.states.trial_outcome`). The study
lives in the experiment folder (SQLite), so ``optuna-dashboard`` can open it
and a resumed search continues it; it shows the objectives by name, every
epoch's validation accuracy as a learning curve, and one ``depth`` per trial.
"""

from __future__ import annotations

import math
import pickle
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher

from lmsearch.results import STUDY_FILE
from lmsearch.space import SearchSpace
from lmsearch.states import COMPLETE, FAILED, PRUNED, ROW_STATE_OF_OPTUNA, trial_outcome

__all__ = ["StudySearcher", "StudyRecord", "make_sampler", "scheme_startup", "study_storage_url", "EPOCH_METRIC",
           "PARAMS_ATTR", "SCHEME_ATTR", "DEPTH_ATTR"]

#: The per-epoch result recorded as a trial's intermediate value (its learning curve; what pruners judge).
EPOCH_METRIC = "val_acc"
PARAMS_ATTR = "params"  # user attribute: the parameter count, the Pareto pruner's second objective
SCHEME_ATTR = "scheme"  # user attribute: the canonical scheme (an lm net without LM steps is euler)
TEST_ACC_ATTR = "test_acc"  # user attribute: a COMPLETE trial's test accuracy (trials.csv has it too)
DEPTH_ATTR = "depth"  # user attribute: the depth, whichever per-scheme parameter (depth_lm, ...) sampled it
ORPHANED_ATTR = "orphaned"
REQUEUED_ATTR = "requeued_from"
RAY_TRIAL_ATTR = "ray_trial_id"  # user attribute naming the Ray trial of every study trial

_OPTUNA_STATES = {COMPLETE: TrialState.COMPLETE, PRUNED: TrialState.PRUNED, FAILED: TrialState.FAIL}


def study_storage_url(exp_dir: str | Path) -> str:
    return f"sqlite:///{Path(exp_dir).resolve() / STUDY_FILE}"


class StudyRecord:
    """Writes into a study's trials by trial number: each epoch's accuracy and user attributes.

    Optuna has no public way to do this. It writes into a trial only through
    the ``optuna.Trial`` that ``Study.ask`` returned, which a resumed search,
    the pruning scheduler and an orphaned trial do not have, and
    ``Trial.report`` refuses multi-objective studies (optuna/optuna#3450). So
    this class, and only it, calls the storage's own methods (listed in the
    reference of ``optuna.storages.RDBStorage``, though Optuna says users are
    not supposed to call them), on a storage it opened itself.
    """

    def __init__(self, storage: str | BaseStorage, study_name: str) -> None:
        """``storage``: a database URL (opened on first use, never pickled) or a storage object."""
        self.url = storage if isinstance(storage, str) else None
        self.study_name = study_name
        self._opened: BaseStorage | None = None if isinstance(storage, str) else storage
        self._ids: dict[int, int] = {}  # trial number -> storage id

    def __getstate__(self) -> dict[str, Any]:
        state = {**self.__dict__, "_ids": {}}
        if self.url is not None:
            state["_opened"] = None
        return state

    @property
    def storage(self) -> BaseStorage:
        """The storage; the studies of the searcher and the scheduler are opened on it too."""
        if self._opened is None:
            self._opened = optuna.storages.RDBStorage(self.url)  # type: ignore[arg-type]
        return self._opened

    def _id_of(self, number: int) -> int:
        # Not public: the storage keys trials by an id of its own, not by number.
        if number not in self._ids:
            study = self.storage.get_study_id_from_name(self.study_name)
            self._ids[number] = self.storage.get_trial_id_from_study_id_trial_number(study, number)
        return self._ids[number]

    def trial(self, number: int) -> FrozenTrial:
        """The trial as stored now."""
        return self.storage.get_trial(self._id_of(number))

    def record_epoch(self, number: int, result: dict[str, Any]) -> FrozenTrial | None:
        """Record ``result``'s :data:`EPOCH_METRIC` at its epoch; the trial after it, None if nothing was recorded.

        Nothing is recorded for a result without a finite value at an epoch >= 1,
        nor into a trial that has finished (a resumed trial reporting again).
        """
        value, epoch = result.get(EPOCH_METRIC), int(result.get("epoch") or 0)
        if value is None or epoch < 1 or not math.isfinite(float(value)):
            return None
        trial_id = self._id_of(number)
        if self.storage.get_trial(trial_id).state.is_finished():
            return None
        # Not public: Trial.report refuses multi-objective studies (see the class docstring).
        self.storage.set_trial_intermediate_value(trial_id, epoch, float(value))
        return self.storage.get_trial(trial_id)

    def set_user_attr(self, number: int, key: str, value: Any) -> None:
        """Set a user attribute of a trial that is still running."""
        # Not public: Trial.set_user_attr needs the Trial that Study.ask returned (see the class docstring).
        self.storage.set_trial_user_attr(self._id_of(number), key, value)


class _PrunedScoresView:
    """A multi-objective study whose ``direction`` answers for the intermediate values (validation accuracy).

    Optuna's TPE scores PRUNED trials by their last intermediate value using
    ``study.direction``, which raises on a multi-objective study (optuna 5.0);
    the intermediate values are :data:`EPOCH_METRIC`, so that direction is MAXIMIZE.
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


def make_sampler(space: SearchSpace, trials_before: int = 0) -> optuna.samplers.BaseSampler:
    """The Optuna sampler a space names (grid points are enqueued, then sampled as given).

    ``trials_before``: trials the study already has when a sampler is built anew for it (a search
    resumed from its study alone). Seeded as the first sitting's, its random draws would repeat that
    sitting's; it gets a seed of its own, derived from the space's seed and that count.
    """
    seed = space.seed
    if trials_before:
        seed = int(np.random.SeedSequence([space.seed, trials_before]).generate_state(1)[0])
    if space.sampler == "tpe":
        return MultiObjectiveTPESampler(seed=seed, multivariate=True, constant_liar=True)
    if space.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, space.num_samples // 2)))
    if space.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


class _DefineByRun:
    """Samples one configuration of ``space`` and counts its parameters."""

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int) -> None:
        self.space, self.in_channels, self.num_classes = space, in_channels, num_classes

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        from lmsearch.nn.counting import count_params

        sampled = self.space.suggest(trial)
        # canonical: an lm net that the space's other choices leave without an LM step is the euler net
        spec = self.space.arch_spec(sampled["arch"], in_channels=self.in_channels,
                                    num_classes=self.num_classes).canonical()
        # run: the trial number of the training run this trial is (a configuration queued again after an
        # interruption continues the run of the trial it replaces; lmsearch.trial_checkpoints names files by it)
        run = trial.user_attrs.get(REQUEUED_ATTR, trial.number)
        return {**sampled, "spec": spec.to_dict(), "params": count_params(spec), "number": trial.number, "run": run}


class TimeBudget:
    """A sitting's time budget (``search.time_budget``, ``--time-budget``), counted from the sitting's first
    trial: once spent, the searcher draws no trial, and the trials drawn before finish (Optuna's
    ``timeout``, not Ray's ``time_budget_s``, which would stop them half-trained). A trial drawn while
    it waited for a free CPU still starts.

    Process-wide, not on the searcher: ``Tuner.restore`` unpickles the first sitting's searcher.
    """

    seconds: float | None = None  # the budget; None: none
    deadline: float | None = None  # time.monotonic() at which it is spent (set by the first trial drawn)
    spent = False  # whether the searcher refused a trial for it

    @classmethod
    def start(cls, seconds: float | None) -> None:
        cls.seconds, cls.deadline, cls.spent = seconds, None, False

    @classmethod
    def over(cls) -> bool:
        if cls.seconds is None:
            return False
        now = time.monotonic()
        if cls.deadline is None:  # Ray's start-up is not the budget's: the first trial always runs
            cls.deadline = now + cls.seconds
        cls.spent = cls.spent or now >= cls.deadline
        return cls.spent


def scheme_startup(space: SearchSpace) -> list[dict[str, Any]]:
    """The first trials of a sampled (not grid) search: one per scheme, in the space's order.

    A sampler's random start-up can miss a scheme altogether (TPE never drew euler in one
    20-trial run of the main job, so the ResNet baseline was missing from its front); this
    design makes every scheme part of every search. Only ``scheme`` is fixed; the sampler
    draws the rest of each trial.
    """
    schemes = space.arch["scheme"].choices or ()
    return [{"scheme": s} for s in schemes] if len(schemes) > 1 else []


class StudySearcher(Searcher):
    """A Ray Tune searcher over a :class:`SearchSpace`: Optuna's ask and tell on a persisted study.

    Each configuration carries, besides the sampled Optuna parameters, ``arch``
    and ``train`` (what the trial function builds), ``spec``, ``params``
    (counted before training), ``number`` (the Optuna trial number) and ``run`` (the
    number of the trial whose training run it is: its own, or for a configuration
    queued again after an interruption, the interrupted trial's).
    Architectures get the loaded dataset's ``in_channels`` and ``num_classes``.
    ``fresh`` enqueues a grid space's points, or for a sampled space one trial per scheme
    (:func:`scheme_startup`); a resumed search finds them in the study.

    Its saved state (``save``/``restore``, used by ``Tuner.restore``) is which
    Ray trial is which Optuna trial, and the sampler; everything else is in the study.
    """

    def __init__(self, space: SearchSpace, exp_dir: str | Path, *, in_channels: int, num_classes: int,
                 fresh: bool) -> None:
        # The objectives are the space's, not declared to Tune: Tune would then reject every result
        # without them, such as an over-budget trial's (never trained, so no val_acc), and stop the search.
        super().__init__()
        self.space = space
        self.record = StudyRecord(study_storage_url(exp_dir), space.name)
        self.sampler = make_sampler(space, 0 if fresh else self._trials_so_far())
        self._define = _DefineByRun(space, in_channels, num_classes)
        self._numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self._study: optuna.Study | None = None
        if fresh and space.sampler == "grid":
            for point in space.grid():
                self.study.enqueue_trial(point)
        elif fresh:
            for point in scheme_startup(space):
                self.study.enqueue_trial(point)

    def _trials_so_far(self) -> int:
        """Trials of the persisted study (0 when it does not exist yet)."""
        storage = self.record.storage
        try:
            study_id = storage.get_study_id_from_name(self.space.name)
        except KeyError:
            return 0
        return len(storage.get_all_trials(study_id, deepcopy=False))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_study": None}  # Tune pickles the searcher; the study is reopened

    @property
    def study(self) -> optuna.Study:
        """The persisted study (created on first use), its objectives named for the dashboard."""
        if self._study is None:
            self._study = optuna.create_study(
                storage=self.record.storage, sampler=self.sampler, study_name=self.space.name,
                directions=[o.direction for o in self.space.objectives], load_if_exists=True)
            if self._study.metric_names != self.space.metric_names:
                with warnings.catch_warnings():  # experimental since Optuna 3.2, and what the dashboard reads
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self._study.set_metric_names(self.space.metric_names)
        return self._study

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """The space file defines the space and the objectives: accept only a call that changes neither."""
        return not config and metric in (None, self.space.metric_names) and mode in (None, self.space.modes)

    def suggest(self, trial_id: str) -> dict | str | None:
        if TimeBudget.over():
            return Searcher.FINISHED
        trial = self.study.ask()
        config = self._define(trial)
        trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        trial.set_user_attr(PARAMS_ATTR, config["params"])
        trial.set_user_attr(DEPTH_ATTR, config["spec"]["depth"])
        trial.set_user_attr(SCHEME_ATTR, config["spec"]["scheme"])
        self._numbers[trial_id] = trial.number
        return {**trial.params, **config}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._numbers:
            self.record.record_epoch(self._numbers[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self._numbers.get(trial_id)
        if number is None:
            return
        if result:  # a trial stopped by the scheduler had its last result go to the scheduler only
            self.record.record_epoch(number, result)
        if self.record.trial(number).state.is_finished():
            return  # told before the driver died (or told twice); the resumed trial only re-reported its result
        outcome = trial_outcome(result, error)
        if result:
            self.record.set_user_attr(number, "epochs_run", int(result.get("epoch", 0)))
            if result.get("status"):
                self.record.set_user_attr(number, "status", str(result["status"]))
            test_acc = result.get("test_acc")
            if isinstance(test_acc, (int, float)) and math.isfinite(test_acc):
                # kept in the study too: a driver that dies before trials.csv has the row loses nothing
                self.record.set_user_attr(number, TEST_ACC_ATTR, float(test_acc))
        values = None
        if outcome == COMPLETE:
            values = [float(result[m]) for m in self.space.metric_names]  # type: ignore[index]
            if not all(math.isfinite(v) for v in values):
                outcome, values = FAILED, None
        self.study.tell(number, values, state=_OPTUNA_STATES[outcome])

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"numbers": self._numbers, "sampler": self.sampler}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self._numbers, self.sampler = state["numbers"], state["sampler"]
        self._study = None  # reopened with the restored sampler
        self.reconcile_orphans()

    def reconcile_orphans(self) -> list[int]:
        """Fail the study's RUNNING trials that Ray does not know, queueing their configurations again.

        They were asked for after Ray last saved the experiment, then the driver
        died: no Ray trial will ever finish them. Their configuration is queued
        again so a grid loses no point. Returns the orphans' trial numbers.
        """
        known = set(self._numbers.values())
        orphans = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in known:
                continue
            # the run it continues: the first trial of the chain (its epoch checkpoint is named after it)
            origin = t.user_attrs.get(REQUEUED_ATTR, t.number)
            self.study.enqueue_trial(t.params, user_attrs={REQUEUED_ATTR: origin}, skip_if_exists=False)
            self.record.set_user_attr(t.number, ORPHANED_ATTR, "the search driver died before Ray recorded this "
                                                               "trial; its configuration was queued again")
            self.study.tell(t.number, state=TrialState.FAIL)
            orphans.append(t.number)
        return orphans

    def test_accuracies(self) -> dict[int, float]:
        """Optuna trial number -> test accuracy, for the COMPLETE trials that reported one."""
        return {t.number: float(t.user_attrs[TEST_ACC_ATTR]) for t in self.study.get_trials(deepcopy=False)
                if t.state == TrialState.COMPLETE and TEST_ACC_ATTR in t.user_attrs}

    def finished_outcomes(self) -> dict[int, str]:
        """Optuna trial number -> COMPLETE, PRUNED or FAILED for every trial the study has finished.

        Orphans failed by :meth:`reconcile_orphans` are left out: their configuration runs again.
        """
        return finished_outcomes(self.study)


def finished_outcomes(study: optuna.Study) -> dict[int, str]:
    """Optuna trial number -> COMPLETE, PRUNED or FAILED for every trial ``study`` has finished, orphans
    (failed by :meth:`StudySearcher.reconcile_orphans`, their configuration queued again) left out.

    ``num_samples`` minus its length is how many trials a search still has to run.
    """
    return {t.number: ROW_STATE_OF_OPTUNA[t.state.name] for t in study.get_trials(deepcopy=False)
            if t.state.is_finished() and ORPHANED_ATTR not in t.user_attrs}
