r"""The distributed scheme search: a space file in, an experiment folder out.

    space.yaml -> load_space -> StudySearcher (Optuna, define-by-run, study.db)
               -> Ray Tune Tuner (train_trial per configuration, data in the object store)
               -> TrialRecorder -> results/<name>/{trials,curves,pareto}.csv

Example (two one-epoch trials on 256 images, in a temporary folder):
    >>> import pathlib, tempfile, lmsearch
    >>> from lmsearch.search import run_search
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "tiny.yaml").write_text(
    ...     "dataset: {name: fashion-mnist, subset: 256}\n"
    ...     "architecture: {scheme: [euler, lm], depth: 14, width: 4}\n"
    ...     "search: {sampler: random, num_samples: 2}\n")
    >>> exp_dir = run_search(folder / "tiny.yaml", out=folder / "exp")  # doctest: +ELLIPSIS
    [   0:0...] trial 0 started: euler-14 w4 lr 0.1
    ...
    2 trials: 2 completed, 0 pruned, 0 failed...
    Pareto front of .../exp: ...
    >>> df = lmsearch.load_results(exp_dir)
    >>> list(df.scheme), list(df.state)
    (['euler', 'lm'], ['COMPLETE', 'COMPLETE'])
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import os
import shutil
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from lmsearch import results
from lmsearch.cluster import DEFAULT_NODE_IP, init_ray
from lmsearch.lock import ExperimentLock
from lmsearch.space import PRUNERS, SearchSpace, late_pruner, load_space, parse_duration
from lmsearch.states import COMPLETE, FAILED, PRUNED, RUNNING
from lmsearch.trial_checkpoints import CHECKPOINT_DIR

__all__ = ["run_search", "SearchError", "SearchInterrupted", "experiment_dir"]

RAY_DIR = "ray"
TUNE_NAME = "tune"
STOPPED = results.STOPPED
SPACE_COPY = results.SPACE_FILE
STUDY_FILE = results.STUDY_FILE


class SearchError(RuntimeError):
    """The search cannot start (bad output folder, nothing to resume, bad data, ...)."""


class SearchInterrupted(KeyboardInterrupt):
    """The search stopped before every trial ended (Ctrl-C); ``exp_dir`` holds it, ready for ``--resume``."""

    def __init__(self, exp_dir: Path) -> None:
        super().__init__(f"the search in {exp_dir} was interrupted")
        self.exp_dir = exp_dir


def experiment_dir(space: SearchSpace, out: str | Path | None, results_root: str | Path = "results") -> Path:
    """Where an experiment's folder lives: ``out`` if given, else ``results_root/<space name>``.

    An empty ``out`` (an unset variable in a script) is refused rather than read as the current folder.
    """
    if out is not None and not str(out).strip():
        raise SearchError("out (--out) must not be empty: give the experiment folder, or leave it out for "
                          f"{Path(results_root) / space.name}")
    return Path(out) if out is not None else Path(results_root) / space.name


def _make_folder(exp_dir: Path) -> bool:
    """Create the experiment folder if missing (its parent must exist); True when this call created it."""
    parent = exp_dir.parent
    if not parent.is_dir():
        raise SearchError(f"output parent folder {parent} does not exist; create it or choose another --out")
    try:
        exp_dir.mkdir()
    except FileExistsError:
        if not exp_dir.is_dir():
            raise SearchError(f"output folder {exp_dir} exists and is not a folder; choose another --out") from None
        return False
    except OSError as exc:
        raise SearchError(f"output folder {exp_dir} is not writable: {exc.strerror or exc}") from None
    return True


def _check_output(exp_dir: Path, resume: bool) -> None:
    """With the folder locked, before Ray starts: it is writable and holds what the command needs."""
    try:
        results.check_writable(exp_dir)
    except OSError as exc:
        raise SearchError(f"output folder {exp_dir} is not writable: {exc.strerror or exc}") from None
    tune_dir = exp_dir / RAY_DIR / TUNE_NAME
    if resume and not tune_dir.is_dir() and not (exp_dir / STUDY_FILE).is_file():
        raise SearchError(f"nothing to resume in {exp_dir} (neither {RAY_DIR}/{TUNE_NAME} nor {STUDY_FILE}); "
                          f"run without --resume")
    if not resume and (exp_dir / results.EXPERIMENT_FILE).exists():
        raise SearchError(f"{exp_dir} already holds an experiment; pass --resume to continue it, "
                          f"or --out to start a new one elsewhere")


def _load_for_run(space_path: str | Path, exp_dir: Path, previous: dict[str, Any] | None,
                  name: str | None) -> SearchSpace:
    """The space a run searches: ``space_path``'s, or on a resume (``previous``: the folder's
    experiment.json) the copy saved by the first run, with that run's overrides."""
    copy = exp_dir / SPACE_COPY
    if previous is not None and copy.is_file():
        # A resumed search must keep the space it started with (Ray Tune and Optuna both expect it).
        space = load_space(copy, name=name or previous.get("name"), saved=True)
        # the command-line overrides of the first run (--num-samples, --pruner) stay in force
        space = dataclasses.replace(space, num_samples=previous.get("num_samples", space.num_samples),
                                    pruner=previous.get("pruner", space.pruner))
        if Path(space_path).resolve() != copy.resolve() and Path(space_path).read_text() != copy.read_text():
            print(f"lmsearch: resuming with the space saved in {copy}; {space_path} differs and is ignored",
                  file=sys.stderr)
        return space
    return load_space(space_path, name=name)


def _check_study(exp_dir: Path, name: str) -> None:
    """On ``--resume``: a study.db present is a sound SQLite file holding the study ``name``."""
    path = exp_dir / STUDY_FILE
    if not path.is_file():
        # Ray's state alone would run the rest without a study to tell: the study is the experiment's record
        raise SearchError(f"{path} is missing (or not a file): the experiment's Optuna study cannot be resumed; "
                          f"restore it from a backup or version control, or start the experiment again in "
                          f"another --out; nothing in {exp_dir} was changed")
    try:  # read-write, so SQLite may roll back a transaction a killed search left; only reads here
        with contextlib.closing(sqlite3.connect(path)) as db:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            names = [row[0] for row in db.execute("SELECT study_name FROM studies")]
    except sqlite3.Error as exc:
        raise SearchError(f"{path} is corrupt or not an Optuna study ({exc}); restore it from a backup or "
                          f"version control, or start the experiment again in another --out; "
                          f"nothing in {exp_dir} was changed") from None
    if name not in names:
        raise SearchError(f"{path} holds no study named {name!r} (it holds {', '.join(map(repr, names)) or 'none'});"
                          f" resume with the experiment's own --name")


def run_search(
    space_path: str | Path,
    *,
    out: str | Path | None = None,
    results_root: str | Path = "results",
    num_samples: int | None = None,
    pruner: str | None = None,
    address: str | None = None,
    resume: bool = False,
    node_ip: str | None = DEFAULT_NODE_IP,
    name: str | None = None,
    verbose: int = 0,
    progress: bool = True,
    time_budget: float | None = None,
) -> Path:
    """Run (or ``resume``) the search a space file describes; returns the experiment folder.

    Args:
        space_path: a YAML search-space file (see ``search_spaces/``).
        out: the experiment folder (default ``results_root/<space name>``).
        num_samples: number of trials (default: the file's ``search.num_samples``).
        pruner: replaces the file's ``search.pruner`` (its name; default parameters).
        address: a Ray cluster to join (``"auto"`` or ``"host:port"``); None starts a
            local node bound to ``node_ip`` (a loopback address by default).
        resume: continue an interrupted search in ``out``: finished trials are kept,
            unfinished ones continue from their last epoch checkpoint. Without Ray's
            state (``out/ray``, e.g. in a fresh clone of a committed experiment) the
            search continues from its Optuna study instead: unfinished trials are
            marked FAILED and their configurations run again, from their epoch
            checkpoint in ``out/checkpoints/`` when there is one (else from epoch 0).
            A FAILED trial is final: it is not run again.
        verbose: 0 (default): no output from Ray but warnings; 1: Ray Tune's status table
            of every trial every 30 s and the trials' own output; 2, 3: more of Ray's detail.
        time_budget: seconds from this sitting's first trial after which no trial is drawn (replaces
            the file's ``search.time_budget``); the trials drawn before finish, experiment.json says
            ``stopped``, and ``resume`` runs the rest (from the study: Ray's saved search has ended).
        progress: one line per trial event (started or resumed, epoch, retried, pruned, completed, failed) with
            the counts, the front size and the estimated time left.

    Raises:
        SearchError: the search cannot start (folder, data, cluster, resources); a new
            search then leaves nothing behind, a resumed one its folder unchanged.
        ExperimentLocked: another running search owns the folder.
        SearchInterrupted: Ctrl-C stopped the search; the folder resumes with ``resume``.
    """
    space = load_space(space_path, name=name)
    exp_dir = experiment_dir(space, out, results_root).resolve()
    lock, made = ExperimentLock(exp_dir), False
    try:
        for _ in range(3):
            made = _make_folder(exp_dir) or made
            try:
                lock.acquire()
                break
            except FileNotFoundError:
                continue  # a failed start of another search removed the folder just now
            except OSError as exc:
                raise SearchError(f"output folder {exp_dir} is not writable: {exc.strerror or exc}") from None
        else:
            raise SearchError(f"output folder {exp_dir} keeps disappearing; is another program removing it?")
        _check_output(exp_dir, resume)
        previous = results.read_experiment(exp_dir) if resume else None  # read once: the run it continues
        space = _load_for_run(space_path, exp_dir, previous, name)
        if num_samples is not None:
            if num_samples < 1:
                raise SearchError(f"--num-samples must be >= 1; got {num_samples}")
            if resume and num_samples != space.num_samples and _ray_state_restores(exp_dir):
                # Tuner.restore keeps the trial count it was started with: a new one would be ignored
                raise SearchError(f"--num-samples {num_samples}: {exp_dir} is resumed from Ray's state, which keeps "
                                  f"the {space.num_samples} trials it was started with; to change the count, "
                                  f"delete {exp_dir / RAY_DIR} (the search then resumes from its study, finished "
                                  f"trials kept) or resume without --num-samples")
            space = dataclasses.replace(space, num_samples=num_samples)
        if time_budget is not None:
            try:
                space = dataclasses.replace(space, time_budget=parse_duration(time_budget))
            except ValueError as exc:
                raise SearchError(f"--time-budget {exc}") from None
        if pruner is not None:
            if pruner not in PRUNERS:
                raise SearchError(f"--pruner must be one of {', '.join(PRUNERS)}; got {pruner!r}")
            space = dataclasses.replace(space, pruner={"name": pruner})
        if resume:
            _check_study(exp_dir, space.name)
        with _library_output(verbose):
            return _run(space, exp_dir, space_file=None if resume else Path(space_path), address=address,
                        previous=previous, node_ip=node_ip, verbose=verbose, progress=progress)
    finally:
        held = lock.held
        lock.release()
        if made and held:  # a failed start leaves no empty folder behind (rmdir refuses a non-empty one)
            with contextlib.suppress(OSError):
                exp_dir.rmdir()


def _experiment_meta(space: SearchSpace, status: str, created: str, plan: dict[str, int]) -> dict[str, Any]:
    return {
        "name": space.name, "dataset": space.dataset, "seed": space.seed, "epochs": space.epochs,
        "num_samples": space.num_samples, "sampler": space.sampler, "pruner": space.pruner,
        "objectives": [{"name": o.name, "direction": o.direction} for o in space.objectives],
        "study": "study.db", "created": created, "status": status, **plan,
    }


def _restored_plan(meta: dict[str, Any], space: SearchSpace) -> dict[str, int]:
    """The plan of the Ray experiment a restore continues: how many trials its Tuner was given
    (``ray_trials``) and how many rows trials.csv has when it ends (``trials_planned``).

    A search resumed from its study runs fewer Ray trials than ``num_samples`` and keeps its
    interrupted trials as FAILED rows beside their reruns, so neither follows from the space.
    ``meta`` is the folder's experiment.json; folders written before these keys existed fall
    back to ``num_samples``.
    """
    plan = {}
    for key in ("ray_trials", "trials_planned"):
        value = meta.get(key)
        plan[key] = value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else space.num_samples
    return plan


def _load_data(space: SearchSpace) -> Any:
    """The space's dataset, or a :class:`SearchError` naming the space file and what is wrong."""
    from lmsearch.data import load_dataset

    try:
        return load_dataset(**space.dataset_kwargs())  # name, root, val_fraction, seed, subset, image_size
    except (OSError, ValueError) as exc:
        raise SearchError(f"{space.path}: dataset {space.dataset!r}: {exc}") from None


def _check_address(address: str | None) -> None:
    """Refuse a ``HOST:PORT`` nobody listens on before Ray starts (``ray.init`` would wait for it for minutes).

    Without ``address``, ``RAY_ADDRESS`` is checked, which ``init_ray`` would join.
    """
    given = f"--address {address}" if address is not None else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}"
    address = address if address is not None else os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # Ray's own forms (a host with its default port, ...): ray.init judges them
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as exc:
        raise SearchError(f"cannot reach the Ray cluster at {given}: {exc.strerror or exc}; is its "
                          f"head running (ray start --head ...) and the address right?") from None


def _check_resources(space: SearchSpace) -> None:
    """Refuse per-trial resources that no node of the cluster has: such trials would stay PENDING forever."""
    import ray

    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    wanted = {"CPU": ("resources.cpu", space.cpu), "GPU": ("resources.gpu", space.gpu)}
    if any(all(node.get(key, 0.0) >= value for key, (_, value) in wanted.items()) for node in nodes):
        return
    total = ray.cluster_resources()
    for key, (field, value) in wanted.items():
        largest = max((node.get(key, 0.0) for node in nodes), default=0.0)
        if value > largest:
            raise SearchError(
                f"{space.path}: {field}: {value:g} per trial, but no node of the Ray cluster has {value:g} {key} "
                f"(the largest has {largest:g}, the cluster {total.get(key, 0.0):g} in all), so no trial could "
                f"ever start; lower {field} or add a node that has them")
    raise SearchError(f"{space.path}: resources: {space.cpu:g} CPU and {space.gpu:g} GPU per trial, but no node of "
                      f"the Ray cluster has both, so no trial could ever start")


def _start_files(exp_dir: Path) -> list[Path]:
    """What starting a search writes in its folder, deepest first."""
    study = exp_dir / STUDY_FILE
    return [exp_dir / RAY_DIR / TUNE_NAME, exp_dir / RAY_DIR, exp_dir / results.EXPERIMENT_FILE,
            exp_dir / SPACE_COPY, study, *(study.with_name(study.name + end) for end in ("-journal", "-wal", "-shm"))]


def _undo_start(exp_dir: Path, existed: set[Path]) -> None:
    """Remove what a new search that failed before its Tuner ran wrote (nothing it found there)."""
    for path in _start_files(exp_dir):
        if path in existed or not path.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class _DropTrialErrors(logging.Filter):
    """Ray's log of a failed trial (a traceback), of the trials that did not complete, of an
    interrupted run (with Python advice, ``Tuner.restore``, where lmsearch's is ``--resume``) and
    of trials that had not reported yet: the progress lines, the summary and lmsearch's own
    interrupt message say all of it, and a traceback stays in the trial's error.txt."""

    DROPPED = ("Trial task failed", "Trials did not complete", "Experiment has been interrupted",
               "Failed to fetch metrics")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.DROPPED)


@contextlib.contextmanager
def _library_output(verbose: int) -> Any:
    """Below ``verbose`` 1, Optuna says only warnings and Ray does not repeat what the progress lines say."""
    if verbose >= 1:
        yield
        return
    import optuna

    level, drop = optuna.logging.get_verbosity(), _DropTrialErrors()
    names = ("ray.tune.execution.tune_controller", "ray.tune.tune", "ray.tune.analysis.experiment_analysis")
    loggers = [logging.getLogger(name) for name in names]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
        for logger in loggers:
            logger.removeFilter(drop)


def _run(space: SearchSpace, exp_dir: Path, *, space_file: Path | None, address: str | None,
         previous: dict[str, Any] | None, node_ip: str | None, verbose: int, progress: bool) -> Path:
    """Check the data, the cluster and the resources, then run the Tuner.

    ``previous``: on a resume, the folder's experiment.json (None for a new search).

    Until the Tuner runs, a new search that fails removes what it wrote (``space_file``'s
    copy, study.db, ray/) and a resumed one leaves its folder, experiment.json included,
    as it was; from then on experiment.json says running, then finished or interrupted.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # keep the classic reporter, cut to useful columns
    # Every epoch checkpoint forces an experiment snapshot (num_to_keep below): wanted, so a killed
    # driver loses at most the epoch in flight; Ray warns about it, which is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray
    from ray import tune

    from lmsearch import recorder
    from lmsearch.progress import SearchProgress
    from lmsearch.searcher import StudySearcher, TimeBudget
    from lmsearch.trainable import make_trainable

    began_at = time.monotonic()
    data = _load_data(space)  # before Ray starts: a data error leaves nothing behind
    for note in space.notes:
        print(f"lmsearch: {note}")
    late = late_pruner(space.pruner, space.epochs)
    if late is not None and late[0] not in space.pruner:  # a value given in the space was judged by load_space
        print(f"lmsearch: search.pruner.{late[0]} (the {space.pruner['name']} pruner's default) {late[1]}")
    _check_address(address)
    resume = previous is not None
    created = (previous or {}).get("created") or _dt.datetime.now().isoformat(timespec="seconds")
    existed = {path for path in _start_files(exp_dir) if path.exists()}
    started_here = not ray.is_initialized()
    began = undo = False  # began: the Tuner runs, and from then on the folder is a search --resume continues
    status = "interrupted"
    failing: BaseException | None = None  # the exception ending the run, if one does
    try:
        try:
            init_ray(address, node_ip=node_ip, log_to_driver=verbose >= 1)
        except ConnectionError as exc:
            where = f" at --address {address}" if address else ""
            raise SearchError(f"cannot connect to the Ray cluster{where}: {exc}") from None
        _check_resources(space)
        if space_file is not None:
            shutil.copyfile(space_file, exp_dir / SPACE_COPY)
        trainable = make_trainable(space, data, exp_dir)
        tune_dir = exp_dir / RAY_DIR / TUNE_NAME
        from_study = resume and not _ray_state_restores(exp_dir)
        why = None
        if from_study and tune_dir.is_dir():
            shutil.rmtree(exp_dir / RAY_DIR)
            why = (f"the last sitting's time budget ended Ray's search before every trial was drawn, so "
                   f"{exp_dir / RAY_DIR} could not go on with it and is removed")
        to_run, earlier = space.num_samples, []
        if not resume or from_study:
            searcher: Any = StudySearcher(space, exp_dir, in_channels=data.info.in_channels,
                                          num_classes=data.info.num_classes, fresh=not resume)
            if from_study:
                to_run, earlier = _continue_from_study(searcher, space, exp_dir, why)
            plan = {"ray_trials": to_run, "trials_planned": len(earlier) + to_run}
        else:
            plan = _restored_plan(previous or {}, space)
            to_run = plan["ray_trials"]
        lines = SearchProgress(plan["trials_planned"], space.epochs, [(o.name, o.direction) for o in space.objectives],
                               earlier=earlier or results.read_trial_rows(exp_dir)) if progress else None
        run_config = tune.RunConfig(
            name=TUNE_NAME,
            storage_path=str(exp_dir / RAY_DIR),
            callbacks=[recorder.TrialRecorder(space, exp_dir, earlier, progress=lines)],
            failure_config=tune.FailureConfig(max_failures=space.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            progress_reporter=_reporter(space) if verbose >= 1 else None,
            verbose=min(max(verbose, 0), 3),  # Ray knows 0-3; -vvvv is -vvv
        )
        if resume and not from_study:
            recorder.RESTORED_PROGRESS = lines  # Tuner.restore unpickles the first run's recorder
            tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True,
                                       resume_errored=False)
        elif to_run == 0:
            tuner = None
        else:
            if space.max_concurrent:
                searcher = tune.search.ConcurrencyLimiter(searcher, max_concurrent=space.max_concurrent)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=to_run,
                                            scheduler=_scheduler(space, exp_dir), reuse_actors=True,
                                            trial_name_creator=trial_name, trial_dirname_creator=trial_name),
                run_config=run_config,
            )
        results.write_experiment(exp_dir, _experiment_meta(space, "running", created, plan))
        TimeBudget.start(space.time_budget)  # per sitting: a resumed search gets the whole budget again
        began = True
        if tuner is None:  # resumed from a study that had nothing left to run
            results.write_trials_table(exp_dir, earlier)
            ran = 0
        else:
            ran = len(tuner.fit())
        # Ctrl-C makes fit() return early: trials missing, or rows still RUNNING in trials.csv
        if ran >= to_run and not _unfinished(exp_dir):
            status = "finished"
            shutil.rmtree(exp_dir / CHECKPOINT_DIR, ignore_errors=True)  # no unfinished trial is left
        elif TimeBudget.spent and not _unfinished(exp_dir):
            status = STOPPED
    except BaseException as exc:
        failing = exc
        undo = not began and not resume
        if began and type(exc) is KeyboardInterrupt:  # a second Ctrl-C, which Ray lets through
            raise SearchInterrupted(exp_dir) from None
        raise
    finally:
        recorder.RESTORED_PROGRESS = None
        TimeBudget.start(None)  # a searcher used later in this process has no deadline
        try:
            if began:  # also after a second Ctrl-C or an error: the status and pareto.csv agree with the tables
                table = _record_end(exp_dir, space, _experiment_meta(space, status, created, plan), failing)
        finally:
            if started_here:
                try:
                    ray.shutdown()
                except KeyboardInterrupt:  # a Ctrl-C while Ray shuts down: after began, an interrupted search
                    if not began:
                        raise
                    raise SearchInterrupted(exp_dir) from None
            if undo:
                _undo_start(exp_dir, existed)
    stopped_by = None
    if status == STOPPED:  # a resume goes on from the study (see _ray_state_restores)
        stopped_by = (f"The time budget ({space.time_budget or 0:g} s) was spent: no trial was drawn after it, "
                      f"and the trials drawn before it finished")
    from lmsearch.progress import search_summary

    objectives = [(o.name, o.direction) for o in space.objectives]
    try:
        plot = _write_front_plot(exp_dir, table, objectives)
        print(search_summary(exp_dir, table, objectives, finished=status == "finished", plot=plot,
                             wall_s=time.monotonic() - began_at, stopped_by=stopped_by))
    except KeyboardInterrupt:  # the tables are written: what is left is only the summary
        raise SearchInterrupted(exp_dir) from None
    if status not in ("finished", STOPPED):
        raise SearchInterrupted(exp_dir)
    return exp_dir


def _ray_state_restores(exp_dir: Path) -> bool:
    """Whether ``Tuner.restore`` can go on with the folder's Ray state.

    Not when there is none (a fresh clone), nor when its saved search generator ended before
    every trial was drawn (a time budget spent in an earlier sitting): restored, it would
    draw no trial again. The search then goes on from its study.
    """
    tune_dir = exp_dir / RAY_DIR / TUNE_NAME
    if not tune_dir.is_dir():
        return False
    try:  # Ray's own reader of its search-generator checkpoint (a pickle): internal, hence guarded
        from ray.tune.search.search_generator import SearchGenerator
        from ray.tune.utils.util import _load_newest_checkpoint

        state = _load_newest_checkpoint(str(tune_dir), SearchGenerator.CKPT_FILE_TMPL.format("*"))
    except Exception:  # noqa: BLE001 - unreadable: let Tuner.restore judge it, as before
        return True
    ended_early = bool(state) and bool(state.get("finished")) and state.get("counter", 0) < state.get(
        "total_samples", 0)
    return not ended_early


def _record_end(exp_dir: Path, space: SearchSpace, meta: dict[str, Any], failing: BaseException | None) -> Any:
    """Write the run's end: experiment.json (its status) and pareto.csv from trials.csv; returns the trials table.

    While ``failing`` (the exception ending the run) propagates, a failure here is a warning, so that the
    error the user sees is the one that ended the run; a Ctrl-C here is an interrupted search.
    """
    from lmsearch.pareto import pareto_front

    try:
        results.write_experiment(exp_dir, meta)
        table = results.load_results(exp_dir)
        results.write_pareto(exp_dir, pareto_front(table, [(o.name, o.direction) for o in space.objectives]))
        return table
    except KeyboardInterrupt:
        raise SearchInterrupted(exp_dir) from failing
    except Exception as exc:
        if failing is None:
            raise
        print(f"lmsearch: could not record the end of the run in {exp_dir} ({exc}); `lmsearch check {exp_dir}` "
              f"says what disagrees", file=sys.stderr)
        return None


def _continue_from_study(searcher: Any, space: SearchSpace, exp_dir: Path,
                         why: str | None = None) -> tuple[int, list[dict[str, str]]]:
    """Prepare a search resumed from its Optuna study alone (Ray's state is gone).

    The study's RUNNING trials are orphans (no Ray trial will finish them):
    they are failed and their configurations queued again, which keeps every
    grid point; queued grid points are still WAITING in the study. Returns
    the number of trials left to run and the earlier trials.csv rows, with the
    rows of unfinished trials marked FAILED. ``why`` (printed) says why the study is the source
    (default: the folder has no Ray state).
    """
    why = why or f"no Ray state in {exp_dir / RAY_DIR}"
    searcher.reconcile_orphans()
    finished, test_accs = searcher.finished_outcomes(), searcher.test_accuracies()
    rows = results.read_trial_rows(exp_dir)
    for row in rows:
        if row["state"] != RUNNING:
            continue
        told = finished.get(int(row["number"])) if row.get("number") else None
        if told in (COMPLETE, PRUNED):  # told to Optuna just before the driver died
            row["state"] = told
            if told == COMPLETE and int(row["number"]) in test_accs:
                row["test_acc"] = repr(test_accs[int(row["number"])])
        else:
            row["state"] = FAILED
            row["error"] = "interrupted; resumed from the study, which queued this configuration again"
    left = max(0, space.num_samples - len(finished))
    print(f"lmsearch: {why}; resuming from the study: {len(finished)} trial{'s' if len(finished) != 1 else ''} "
          f"finished, {left} to run", file=sys.stderr)
    return left, rows


def trial_name(trial: Any) -> str:
    """Short trial names and folders: ``trial_<id>`` instead of Ray's config-laden default."""
    return f"trial_{trial.trial_id}"


def _unfinished(exp_dir: Path) -> bool:
    df = results.load_results(exp_dir)
    return bool((df["state"] == RUNNING).any())


def _scheduler(space: SearchSpace, exp_dir: Path) -> Any:
    """The trial scheduler for the space's pruner (FIFO when none)."""
    if space.pruner.get("name", "none") == "none":
        return None
    from lmsearch.pruning import make_scheduler

    return make_scheduler(space, exp_dir)


def _reporter(space: SearchSpace) -> Any:
    from ray import tune

    return tune.CLIReporter(
        parameter_columns={"spec/scheme": "scheme", "spec/depth": "depth", "spec/width": "width",
                           "spec/noise": "noise"},
        metric_columns={"epoch": "epoch", "params": "params", "val_acc": "val_acc", "status": "status"},
        max_report_frequency=30,
        sort_by_metric=False,
    )


def _write_front_plot(exp_dir: Path, table: Any, objectives: list[tuple[str, str]]) -> Path | None:
    """pareto.png of the experiment (seed means where seeds repeat); None when it cannot be drawn."""
    if len(objectives) < 2 or not (table.get("state") == COMPLETE).any():
        return None
    from lmsearch.pareto import front_table
    from lmsearch.plots import plot_pareto

    try:
        return plot_pareto(front_table(table)[0], exp_dir / results.PARETO_PLOT, objectives=objectives,
                           title=exp_dir.name)
    except (OSError, ValueError) as exc:  # the tables are written; a plot is not worth failing the search
        print(f"lmsearch: could not draw {exp_dir / results.PARETO_PLOT}: {exc}", file=sys.stderr)
        return None
