"""The Ray Tune trial: ArchSpec -> build_model -> Trainer.fit, one ``tune.report`` per epoch.

Every epoch is reported with a checkpoint of the whole training state, so a
trial whose worker dies, or whose search is resumed, continues from its last
finished epoch and ends with the same numbers as an uninterrupted run. The
last report of a completed trial carries its test accuracy and a checkpoint
with the exported model (arch.json + model.safetensors). When the experiment
folder is reachable from the worker, the epoch state also goes to its
``checkpoints/`` (:mod:`lmsearch.trial_checkpoints`) and a completed trial's
export to its ``weights/<trial_id>/``, so both outlive Ray's ``ray/`` folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmsearch.arch import ArchSpec
from lmsearch.faults import log_trained_epoch, maybe_inject_fault
from lmsearch.space import SearchSpace
from lmsearch.states import STATUS_DIVERGED, STATUS_OVER_BUDGET
from lmsearch.trial_checkpoints import checkpoint_path, load_checkpoint, save_checkpoint

__all__ = ["make_trainable", "train_trial", "TRAINER_STATE", "train_config"]

TRAINER_STATE = "trainer.pt"
WEIGHTS_DIR = "weights"  # exp_dir/weights/<trial_id>/: a completed trial's export (lmsearch.export finds it there)
FINAL_METRICS = "final.json"  # in the last checkpoint of a trial that has ended


def train_config(space: SearchSpace, train: dict[str, Any], device: str) -> Any:
    """The TrainConfig of one trial: the space's budget plus its sampled training values."""
    from lmsearch.train import TrainConfig

    return TrainConfig(epochs=space.epochs, device=device, progress=False, **train)


def _device(space: SearchSpace) -> str:
    return "cuda" if space.gpu > 0 and torch.cuda.is_available() else "cpu"


def _ray_context() -> dict[str, Any]:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}


def train_trial(config: dict[str, Any], *, space: SearchSpace, data: Any, exp_dir: str | None = None) -> None:
    """Train one configuration sampled by the StudySearcher and report every epoch to Tune.

    With ``exp_dir`` (reachable from the worker: the driver's node, or shared storage)
    every epoch's state is also kept in ``exp_dir/checkpoints/`` (see
    :mod:`lmsearch.trial_checkpoints`), and a trial without a Ray checkpoint
    continues from the one there: a search resumed from its study alone picks an
    interrupted configuration up at its last finished epoch.
    """
    from ray import tune

    from lmsearch.archfile import save_architecture
    from lmsearch.nn.counting import count_flops
    from lmsearch.nn.network import build_model
    from lmsearch.train import Trainer

    torch.set_num_threads(max(1, int(space.cpu)))
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no "checkpoint created" line per epoch
    spec = ArchSpec.from_dict(config["spec"])
    where = _ray_context()
    fixed = {"params": config["params"], "epochs": space.epochs, **where}
    if space.max_params is not None and config["params"] > space.max_params:
        tune.report({**fixed, "epoch": 0, "status": STATUS_OVER_BUDGET,
                     "message": f"{config['params']} parameters > max_params {space.max_params}; not trained"})
        return
    fixed["flops"] = count_flops(spec, input_size=tuple(data.info.shape))

    def new_trainer() -> Trainer:
        torch.manual_seed(config["train"]["seed"])  # the initial weights are part of the trial's seed
        return Trainer(build_model(spec), data, train_config(space, config["train"], _device(space)))

    def resumed_from(state: dict[str, Any] | None) -> Trainer | None:
        """A trainer continuing ``state``, or None when the state does not fit (then the trial starts over)."""
        if state is None:
            return None
        fresh = new_trainer()
        try:
            fresh.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, TypeError):
            return None
        return fresh

    folder_checkpoint = _folder_checkpoint(exp_dir, config, space.epochs)
    folder_weights = _folder_weights(exp_dir, tune.get_context().get_trial_id())
    trainer: Trainer | None = None
    for state_dir in _checkpoint_dirs(tune.get_checkpoint()):
        final = state_dir / FINAL_METRICS
        if final.is_file():
            # Finished before the search was interrupted: report the same result again, train nothing.
            tune.report(json.loads(final.read_text()), checkpoint=tune.Checkpoint.from_directory(str(state_dir)))
            return
        # a checkpoint cut short by a killed worker does not load: use the one before
        trainer = resumed_from(load_checkpoint(state_dir / TRAINER_STATE))
        if trainer is not None:
            break
    if trainer is None and folder_checkpoint is not None:
        trainer = resumed_from(load_checkpoint(folder_checkpoint, legacy=_legacy_folder_checkpoint(
            exp_dir, config, space.epochs)))
        if trainer is not None:
            # This trial continues an interrupted one (a search resumed from its study): its earlier epochs
            # are reported again, untrained, so its curve, the study and the pruner see every epoch.
            for past in trainer.history:
                tune.report({**fixed, **past, "status": "running",
                             "wall_time_s": sum(h["seconds"] for h in trainer.history[:past["epoch"]])})
    trainer = trainer or new_trainer()
    model = trainer.model

    def report(epoch_metrics: dict[str, Any]) -> None:
        maybe_inject_fault(config["number"], epoch_metrics["epoch"])
        last = epoch_metrics["epoch"] >= space.epochs
        # the trainer names non-finite losses or weights; an older trainer only has the training loss
        problem = epoch_metrics.get("diverged")
        diverged = bool(problem) or not math.isfinite(epoch_metrics.get("train_loss", 0.0))
        metrics = {**fixed, **epoch_metrics, "status": "running",
                   "wall_time_s": sum(h["seconds"] for h in trainer.history)}
        with tempfile.TemporaryDirectory() as d:
            state = trainer.state_dict()
            torch.save(state, Path(d) / TRAINER_STATE)
            if diverged:
                metrics.update(status=STATUS_DIVERGED, message=problem or f"diverged at epoch "
                                                                           f"{epoch_metrics['epoch']} (non-finite loss)")
            elif last:
                started = time.perf_counter()
                metrics.update(status="completed", test_acc=trainer.evaluate("test")["acc"])
                metrics["wall_time_s"] += time.perf_counter() - started  # the test pass is the trial's work too
                save_architecture(model, spec, d, metadata={
                    "metrics": {k: metrics.get(k) for k in ("val_acc", "val_loss", "test_acc", "params", "flops")},
                    "provenance": {"experiment": space.name, "trial_number": config["number"],
                                   "dataset": space.dataset, "seed": config["train"]["seed"],
                                   "epochs": space.epochs, "train": config["train"]},
                })
                if folder_weights is not None:
                    _keep_weights(Path(d), folder_weights)
            if diverged or last:
                (Path(d) / FINAL_METRICS).write_text(json.dumps(metrics))
            log_trained_epoch(config["number"], epoch_metrics["epoch"])
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            # after the report, so the folder's checkpoint is never ahead of what the tables record
            if folder_checkpoint is not None and not (last or diverged):
                save_checkpoint(folder_checkpoint, state)

    trainer.fit(callback=report)


def _folder_checkpoint(exp_dir: str | None, config: dict[str, Any], epochs: int) -> Path | None:
    """This trial's checkpoint file in the experiment folder, or None when the folder is not reachable here."""
    if exp_dir is None or not Path(exp_dir).is_dir():
        return None
    return checkpoint_path(exp_dir, config, epochs)


def _legacy_folder_checkpoint(exp_dir: str | None, config: dict[str, Any], epochs: int) -> Path | None:
    """Where a checkpoint written before runs were part of the key lies (results/compression-paper-w8 has one)."""
    if exp_dir is None:
        return None
    return checkpoint_path(exp_dir, {k: v for k, v in config.items() if k != "run"}, epochs, legacy=True)


def _folder_weights(exp_dir: str | None, trial_id: str | None) -> Path | None:
    """Where a completed trial's final weights stay: ``exp_dir/weights/<trial_id>/`` (None: folder not reachable)."""
    if exp_dir is None or trial_id is None or not Path(exp_dir).is_dir():
        return None
    return Path(exp_dir) / WEIGHTS_DIR / str(trial_id)


def _keep_weights(export_dir: Path, dest: Path) -> None:
    """Copy an export (arch.json + model.safetensors) to ``dest``, replacing it whole (a reader never sees half)."""
    from lmsearch.archfile import ARCH_FILE, WEIGHTS_FILE

    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (ARCH_FILE, WEIGHTS_FILE):
        shutil.copy2(export_dir / name, tmp / name)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def _checkpoint_dirs(restored: Any) -> list[Path]:
    """Checkpoint folders to resume from, newest first.

    Ray hands a restored trial the checkpoint its last saved experiment state
    knew; a driver killed between a report and that save knows an older one.
    The trial folder may hold newer checkpoints, so those come first.
    """
    from ray import tune

    found: list[Path] = []
    trial_dir = Path(tune.get_context().get_trial_dir())
    if trial_dir.is_dir():
        found = sorted(trial_dir.glob("checkpoint_*"), key=lambda p: p.name, reverse=True)
    if restored is not None and Path(restored.path) not in found and Path(restored.path).is_dir():
        found.append(Path(restored.path))
    return [p for p in found if (p / TRAINER_STATE).is_file()]


def make_trainable(space: SearchSpace, data: Any, exp_dir: str | Path | None = None) -> Callable[..., Any]:
    """``train_trial`` bound to the space, the dataset (shared through Ray's object store) and the folder."""
    from ray import tune

    trainable = tune.with_parameters(train_trial, space=space, data=data,
                                     exp_dir=None if exp_dir is None else str(exp_dir))
    return tune.with_resources(trainable, {"cpu": space.cpu, "gpu": space.gpu})
