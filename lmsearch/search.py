"""The distributed scheme search: a space file in, an experiment folder out.

    space.yaml -> load_space -> StudySearcher (Optuna, define-by-run, study.db)
               -> Ray Tune Tuner (train_trial per configuration, data in the object store)
               -> TrialRecorder -> results/<name>/{trials,curves,pareto}.csv

Example:
    >>> from lmsearch.search import run_search
    >>> exp_dir = run_search("search_spaces/fashion_quick.yaml")  # doctest: +SKIP
    >>> import lmsearch; lmsearch.pareto_front(lmsearch.load_results(exp_dir))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from lmsearch import results
from lmsearch.cluster import DEFAULT_NODE_IP, init_ray
from lmsearch.lock import ExperimentLock
from lmsearch.space import PRUNERS, SearchSpace, load_space

__all__ = ["run_search", "SearchError", "experiment_dir"]

RAY_DIR = "ray"
TUNE_NAME = "tune"
SPACE_COPY = "space.yaml"
STUDY_FILE = "study.db"
FRONT_COLUMNS = ["number", "scheme", "depth", "width", "block", "noise", "params", "val_acc", "test_acc"]


class SearchError(RuntimeError):
    """The search cannot start (bad output folder, nothing to resume, ...)."""


def experiment_dir(space: SearchSpace, out: str | Path | None, results_root: str | Path = "results") -> Path:
    """Where an experiment's folder lives: ``out`` if given, else ``results_root/<space name>``."""
    return Path(out) if out is not None else Path(results_root) / space.name


def _check_output(exp_dir: Path, resume: bool) -> None:
    """Fail before Ray starts when the experiment folder cannot be used."""
    parent = exp_dir.parent
    if not parent.is_dir():
        raise SearchError(f"output parent folder {parent} does not exist; create it or choose another --out")
    try:  # a real write, since permission bits say little to root or on network file systems
        exp_dir.mkdir(exist_ok=True)
        probe = exp_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SearchError(f"output folder {exp_dir} is not writable: {exc.strerror or exc}") from None
    tune_dir = exp_dir / RAY_DIR / TUNE_NAME
    if resume and not tune_dir.is_dir() and not (exp_dir / STUDY_FILE).is_file():
        raise SearchError(f"nothing to resume in {exp_dir} (neither {RAY_DIR}/{TUNE_NAME} nor {STUDY_FILE}); "
                          f"run without --resume")
    if not resume and (exp_dir / results.EXPERIMENT_FILE).exists():
        raise SearchError(f"{exp_dir} already holds an experiment; pass --resume to continue it, "
                          f"or --out to start a new one elsewhere")


def _load_for_run(space_path: str | Path, exp_dir: Path, resume: bool, name: str | None) -> SearchSpace:
    copy = exp_dir / SPACE_COPY
    if resume and copy.is_file():
        # A resumed search must keep the space it started with (Ray Tune and Optuna both expect it).
        meta = results.read_experiment(exp_dir)
        space = load_space(copy, name=name or meta.get("name"))
        # the command-line overrides of the first run (--num-samples, --pruner) stay in force
        space = dataclasses.replace(space, num_samples=meta.get("num_samples", space.num_samples),
                                    pruner=meta.get("pruner", space.pruner))
        if Path(space_path).resolve() != copy.resolve() and Path(space_path).read_text() != copy.read_text():
            print(f"lmsearch: resuming with the space saved in {copy}; {space_path} differs and is ignored",
                  file=sys.stderr)
        return space
    return load_space(space_path, name=name)


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
    verbose: int = 1,
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
            marked FAILED and their configurations run again from epoch 0.
    """
    space = load_space(space_path, name=name)
    exp_dir = experiment_dir(space, out, results_root).resolve()
    _check_output(exp_dir, resume)
    with ExperimentLock(exp_dir):
        space = _load_for_run(space_path, exp_dir, resume, name)
        if num_samples is not None:
            if num_samples < 1:
                raise SearchError(f"--num-samples must be >= 1; got {num_samples}")
            space = dataclasses.replace(space, num_samples=num_samples)
        if pruner is not None:
            if pruner not in PRUNERS:
                raise SearchError(f"--pruner must be one of {', '.join(PRUNERS)}; got {pruner!r}")
            space = dataclasses.replace(space, pruner={"name": pruner})
        if not resume:
            shutil.copyfile(space_path, exp_dir / SPACE_COPY)
        return _run(space, exp_dir, address=address, resume=resume, node_ip=node_ip, verbose=verbose)


def _experiment_meta(space: SearchSpace, status: str, created: str) -> dict[str, Any]:
    return {
        "name": space.name, "dataset": space.dataset, "seed": space.seed, "epochs": space.epochs,
        "num_samples": space.num_samples, "sampler": space.sampler, "pruner": space.pruner,
        "objectives": [{"name": o.name, "direction": o.direction} for o in space.objectives],
        "study": "study.db", "created": created, "status": status,
    }


def _run(space: SearchSpace, exp_dir: Path, *, address: str | None, resume: bool, node_ip: str | None,
         verbose: int) -> Path:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # keep the classic reporter, cut to useful columns
    # Every epoch checkpoint forces an experiment snapshot (num_to_keep below): wanted, so a killed
    # driver loses at most the epoch in flight; Ray warns about it, which is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray
    from ray import tune

    from lmsearch.data import load_dataset
    from lmsearch.recorder import TrialRecorder
    from lmsearch.searcher import StudySearcher
    from lmsearch.trainable import make_trainable

    created = results.read_experiment(exp_dir).get("created") if resume else None
    created = created or _dt.datetime.now().isoformat(timespec="seconds")
    results.write_experiment(exp_dir, _experiment_meta(space, "running", created))
    started_here = not ray.is_initialized()
    init_ray(address, node_ip=node_ip)
    status = "interrupted"
    try:
        data_dir = str(Path(space.data_dir).expanduser()) if space.data_dir else None
        data = load_dataset(space.dataset, root=data_dir, val_fraction=space.val_fraction,
                            seed=space.seed, subset=space.subset)
        trainable = make_trainable(space, data)
        tune_dir = exp_dir / RAY_DIR / TUNE_NAME
        from_study = resume and not tune_dir.is_dir()
        to_run, earlier = space.num_samples, []
        if not resume or from_study:
            searcher: Any = StudySearcher(space, exp_dir, in_channels=data.info.in_channels,
                                          num_classes=data.info.num_classes, fresh=not resume)
            if from_study:
                to_run, earlier = _continue_from_study(searcher, space, exp_dir)
        run_config = tune.RunConfig(
            name=TUNE_NAME,
            storage_path=str(exp_dir / RAY_DIR),
            callbacks=[TrialRecorder(space, exp_dir, earlier)],
            failure_config=tune.FailureConfig(max_failures=space.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            progress_reporter=_reporter(space),
            verbose=verbose,
        )
        if resume and not from_study:
            tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
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
        if tuner is None:  # resumed from a study that had nothing left to run
            results.write_trials_table(exp_dir, earlier)
            ran = 0
        else:
            ran = len(tuner.fit())
        # Ctrl-C makes fit() return early: trials missing, or rows still RUNNING in trials.csv
        if ran >= to_run and not _unfinished(exp_dir):
            status = "finished"
    finally:
        results.write_experiment(exp_dir, _experiment_meta(space, status, created))
        if started_here:
            ray.shutdown()
    from lmsearch.pareto import pareto_front

    front = pareto_front(results.load_results(exp_dir), [(o.name, o.direction) for o in space.objectives])
    results.write_pareto(exp_dir, front)
    _print_front(front, exp_dir, status)
    return exp_dir


def _continue_from_study(searcher: Any, space: SearchSpace, exp_dir: Path) -> tuple[int, list[dict[str, str]]]:
    """Prepare a search resumed from its Optuna study alone (Ray's state is gone).

    The study's RUNNING trials are orphans (no Ray trial will finish them):
    they are failed and their configurations queued again, which keeps every
    grid point; queued grid points are still WAITING in the study. Returns
    the number of trials left to run and the earlier trials.csv rows, with the
    rows of unfinished trials marked FAILED.
    """
    from lmsearch.searcher import COMPLETE, FAILED, PRUNED, RUNNING  # imports Ray: not at module import

    searcher.reconcile_orphans()
    finished = searcher.finished_outcomes()
    rows = results.read_trial_rows(exp_dir)
    for row in rows:
        if row["state"] != RUNNING:
            continue
        told = finished.get(int(row["number"])) if row.get("number") else None
        if told in (COMPLETE, PRUNED):  # told to Optuna just before the driver died
            row["state"] = told
        else:
            row["state"] = FAILED
            row["error"] = "interrupted; resumed from the study, which queued this configuration again"
    left = max(0, space.num_samples - len(finished))
    print(f"lmsearch: no Ray state in {exp_dir / RAY_DIR}; resuming from the study: {len(finished)} trials "
          f"finished, {left} to run", file=sys.stderr)
    return left, rows


def trial_name(trial: Any) -> str:
    """Short trial names and folders: ``trial_<id>`` instead of Ray's config-laden default."""
    return f"trial_{trial.trial_id}"


def _unfinished(exp_dir: Path) -> bool:
    df = results.load_results(exp_dir)
    return bool((df["state"] == "RUNNING").any())


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


def _print_front(front: Any, exp_dir: Path, status: str) -> None:
    cols = [c for c in FRONT_COLUMNS if c in front.columns]
    print(f"\nPareto front ({len(front)} architectures) of {exp_dir}:")
    if len(front):
        print(front[cols].sort_values("params").to_string(index=False))
    if status != "finished":
        print(f"\nThe search did not finish; continue it with: lmsearch search {exp_dir / SPACE_COPY} "
              f"--out {exp_dir} --resume")
