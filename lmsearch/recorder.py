"""Keeps the experiment folder's tables current while Ray Tune runs the trials.

A Tune callback on the driver: every reported epoch lands in curves.csv and
every change of a trial's state in trials.csv, written atomically, so a
search killed at any moment leaves tables that agree with what had finished.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from lmsearch import results
from lmsearch.progress import ENDED, EPOCH, RETRY, STARTED, SearchProgress
from lmsearch.space import SearchSpace
from lmsearch.states import COMPLETE, FAILED, FINISHED, RUNNING, trial_outcome
from lmsearch.trial_checkpoints import remove_checkpoint

__all__ = ["TrialRecorder", "ray_trial_row"]

# The progress printer of a search restored from Ray's state: Tuner.restore unpickles the
# recorder the search started with, and a printer (a stream) is not part of its state.
RESTORED_PROGRESS: SearchProgress | None = None

_CURVE_KEYS = ("epoch", "train_loss", "val_acc", "val_loss", "images_per_s", "seconds")


def _error_text(trial: Trial) -> str:
    path = trial.error_file
    if not path or not Path(path).is_file():
        return "trial raised an error"
    lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:500] if lines else "trial raised an error"


def ray_trial_row(trial: Trial, space: SearchSpace, ending: str | None = None, ended: bool = True,
                  latest: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of trials.csv for a Ray trial (see lmsearch.results.TRIAL_COLUMNS).

    ``latest`` is the result being reported, when Ray has not stored it yet: Ray
    calls ``on_trial_result`` back before it updates ``trial.last_result``.

    ``ending`` is "complete" or "error" for the trial whose end is being reported:
    Ray calls back before it updates the trial's status. ``ended=False`` says Ray
    never reported the trial's end: a TERMINATED trial is then one that Ctrl-C
    stopped mid-way (it stays RUNNING, and ``--resume`` continues it), not a pruned one.
    """
    config, result = trial.config, (latest if latest is not None else trial.last_result) or {}
    if trial.status == Trial.ERROR or ending == "error":
        state = FAILED
    elif ending == "complete" or (trial.status == Trial.TERMINATED and ended):
        state = trial_outcome(result, errored=False)
    else:
        state = RUNNING
    train = config["train"]
    errored = state == FAILED and (trial.status == Trial.ERROR or ending == "error")
    return results.trial_row(
        config["spec"],
        trial_id=trial.trial_id,
        number=config.get("number"),
        state=state,
        lr=train.get("lr"),
        weight_decay=train.get("weight_decay"),
        batch_size=train.get("batch_size"),
        train_json=json.dumps(train, sort_keys=True),
        epochs=space.epochs,
        params=config.get("params"),
        flops=result.get("flops"),
        val_acc=result.get("val_acc"),
        val_loss=result.get("val_loss"),
        test_acc=result.get("test_acc") if state == COMPLETE else None,
        epochs_run=int(result.get("epoch", 0) or 0),
        wall_time_s=result.get("wall_time_s", result.get("time_total_s")),
        node_id=result.get("node_id"),
        hostname=result.get("hostname"),
        dataset=space.dataset,
        seed=train.get("seed"),
        error=_error_text(trial) if errored else result.get("message", ""),
    )


class TrialRecorder(Callback):
    """Writes trials.csv and curves.csv of ``exp_dir`` as results arrive."""

    def __init__(self, space: SearchSpace, exp_dir: str | Path, earlier: list[dict[str, Any]] | None = None,
                 progress: SearchProgress | None = None) -> None:
        """``earlier``: rows of trials run by a previous Tuner (a search resumed from its study), kept as they are.

        ``progress``: told every trial event with the trial's row as written (None: silent).
        """
        self.space, self.exp_dir = space, Path(exp_dir)
        self._earlier = list(earlier or [])
        self.progress = progress
        self._read_folder()

    def _read_folder(self) -> None:
        """What the folder already records: the epochs in curves.csv, the trials that ended in trials.csv."""
        # trials whose end an earlier run recorded: their rows are final and are written back as they are
        # (a restored Ray trial no longer knows, e.g., its error text)
        self._final = {row["trial_id"]: row for row in results.read_trial_rows(self.exp_dir)
                       if row["state"] in FINISHED}
        # trials whose end Ray reported, in this run or an earlier one
        self._ended = set(self._final)
        # a resumed search keeps the epochs already recorded, read by results' one reader of the format
        self._curves: dict[tuple[str, int], dict[str, Any]] = {
            (row["trial_id"], row["epoch"]): row for row in results.read_curve_rows(self.exp_dir)}

    # Tuner.restore unpickles this callback from the state saved when the search started; what
    # happened since is in the folder, so it is read again rather than taken from the pickle.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_ended", "_final", "_curves", "progress")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.progress = RESTORED_PROGRESS
        self._read_folder()

    def _tell(self, kind: str, trial: Trial, rows: list[dict[str, Any]]) -> None:
        if self.progress is not None:
            row = next((r for r in rows if r["trial_id"] == trial.trial_id), None)
            if row is not None:
                self.progress.event(kind, {**row, "error_file": trial.error_file})

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if self.progress is not None and "spec" in trial.config:
            self.progress.event(STARTED, ray_trial_row(trial, self.space, ended=False))

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if self.progress is not None and "spec" in trial.config:
            self.progress.event(RETRY, ray_trial_row(trial, self.space, ended=False))

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        if result.get("epoch", 0) >= 1:
            row = {"trial_id": trial.trial_id, "number": trial.config.get("number")}
            row.update({k: result.get(k) for k in _CURVE_KEYS})
            self._curves[(trial.trial_id, int(result["epoch"]))] = row
            results.write_curves(self.exp_dir, list(self._curves.values()))
        rows = self.write_trials(trials, latest=(trial.trial_id, result))
        if result.get("epoch", 0) >= 1:
            self._tell(EPOCH, trial, rows)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        self._tell(ENDED, trial, self.write_trials(trials, ending=(trial.trial_id, "complete")))
        self._forget_checkpoint(trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        self._tell(ENDED, trial, self.write_trials(trials, ending=(trial.trial_id, "error")))
        self._forget_checkpoint(trial)

    def _forget_checkpoint(self, trial: Trial) -> None:
        """An ended trial's folder checkpoint goes, once trials.csv records its end."""
        if "spec" in trial.config:
            remove_checkpoint(self.exp_dir, trial.config, self.space.epochs)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.write_trials(trials)

    def write_trials(self, trials: list[Trial], ending: tuple[str, str] | None = None,
                     latest: tuple[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Write trials.csv; returns this run's rows.

        ``latest``: (trial id, the result Ray is reporting and has not stored in the trial yet).
        """
        ended_id, how = ending or (None, None)
        new_id, new = latest or (None, None)
        rows = [self._final[t.trial_id] if t.trial_id in self._final and t.trial_id != ended_id else
                ray_trial_row(t, self.space, how if t.trial_id == ended_id else None, t.trial_id in self._ended,
                              new if t.trial_id == new_id else None)
                for t in trials if "spec" in t.config]
        results.write_trials_table(self.exp_dir, self._earlier + rows)
        return rows
