"""Choose a trial of a search and export it (its own weights or retrained) as arch.json + model.safetensors.

The export format itself (writing, reading, validating an export directory)
belongs to :mod:`lmsearch.archfile` (``lmsearch.save_architecture`` /
``lmsearch.load_architecture``); this module only chooses and retrains.

:func:`export_best` picks a trial with :func:`select_trial`, takes its weights
from :func:`find_trial_weights` or retrains it, and saves it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmsearch.arch import ArchSpec
from lmsearch.archfile import (
    ARCH_FILE,
    ArchitectureFileError,
    _build_model,
    check_output_dir,
    load_architecture,
    save_architecture,
)
from lmsearch.states import COMPLETE, RUNNING

__all__ = [
    "UnfinishedTrialError",
    "find_trial_weights",
    "select_trial",
    "export_best",
]


# =========================================================================== export a search's trial
class UnfinishedTrialError(ValueError):
    """A trial that is not COMPLETE asked to be exported with its own weights (which may not match its metrics)."""


def find_trial_weights(exp_dir: str | os.PathLike, trial_id: str) -> Path | None:
    """The export directory with a trial's final weights inside an experiment folder, or None.

    Looked up in ``exp_dir/weights/<trial_id>/`` first, then among the Ray
    checkpoints under ``exp_dir/ray/`` (the trainable saves arch.json +
    model.safetensors with the last report of a completed trial): the
    checkpoint directory of that trial with the highest number wins.
    """
    root = Path(exp_dir)
    direct = root / "weights" / str(trial_id)
    if (direct / ARCH_FILE).is_file():
        return direct
    ray_dir = root / "ray"
    if not ray_dir.is_dir():
        return None
    pattern = re.compile(rf"(^|[_\-]){re.escape(str(trial_id))}([_\-]|$)")
    found = []
    for arch in ray_dir.rglob(ARCH_FILE):
        if any(pattern.search(part) for part in arch.parent.relative_to(ray_dir).parts):
            numbers = re.findall(r"\d+", arch.parent.name)
            found.append((int(numbers[-1]) if numbers else -1, str(arch.parent)))
    return Path(max(found)[1]) if found else None


def select_trial(df: Any, max_params: int | None = None, trial: str | int | None = None,
                 objectives: Any = None) -> Any:
    """The trials-table row to export.

    With ``trial``: the row whose ``trial_id`` equals it, else whose Optuna
    ``number`` equals it, whatever its state (:func:`export_best` refuses
    the own weights of one that is not COMPLETE). Otherwise: among the
    Pareto front (COMPLETE trials, ``objectives``, default val_acc max /
    params min) within ``max_params`` parameters, the most accurate by
    ``val_acc`` (ties: fewer parameters, then the lower trial number).
    Raises ValueError when nothing qualifies.
    """
    import pandas as pd

    from lmsearch.pareto import pareto_front

    if trial is not None:
        key = str(trial)
        hit = df[df["trial_id"].astype(object) == key]
        if not len(hit) and key.lstrip("-").isdigit():
            hit = df[df["number"].astype("Int64") == int(key)]
        if not len(hit):
            raise ValueError(f"no trial {key!r} in the table (give a trial id or an Optuna trial number)")
        return hit.iloc[-1]
    front = pareto_front(df, objectives)
    if not len(front):
        raise ValueError("no COMPLETE trial with val_acc and params: nothing to export")
    params = pd.to_numeric(front["params"], errors="coerce")
    if max_params is not None:
        within = front[(params <= max_params).to_numpy(dtype=bool)]
        if not len(within):
            raise ValueError(f"no front architecture has <= {max_params:,} parameters; "
                             f"the smallest has {int(params.min()):,}")
        front = within
    order = front.assign(_acc=-pd.to_numeric(front["val_acc"], errors="coerce"),
                         _p=pd.to_numeric(front["params"], errors="coerce"),
                         _n=pd.to_numeric(front.get("number", pd.Series(0, index=front.index)), errors="coerce"))
    return order.sort_values(["_acc", "_p", "_n"], kind="stable").iloc[0].drop(["_acc", "_p", "_n"])


def _clean(value: Any) -> Any:
    """A JSON-friendly scalar from a pandas cell (NA -> None, numpy -> Python)."""
    import pandas as pd

    if value is None or (not isinstance(value, (list, dict)) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _data_dir(exp_dir: Path) -> str | None:
    """The dataset folder named in the experiment's space.yaml, if any."""
    space_file = exp_dir / "space.yaml"
    if not space_file.is_file():
        return None
    try:
        from lmsearch.space import load_space

        return load_space(space_file, saved=True).data_dir
    except Exception:  # noqa: BLE001 - an unreadable copy only loses the hint
        return None


def _check_device(device: str | None) -> None:
    """Refuse a device retraining cannot use (lmsearch.train's checks), before any data is loaded."""
    from lmsearch.train import TrainConfig, resolve_device

    try:
        resolve_device(TrainConfig(device=device or "auto").device)
    except RuntimeError as exc:  # e.g. cuda asked for without CUDA
        raise ValueError(str(exc)) from None


def _check_finished(row: Any, exp: Path) -> None:
    """Raise :class:`UnfinishedTrialError` for a row whose state is not COMPLETE (a missing state passes)."""
    state = _clean(row.get("state"))
    if state in (None, COMPLETE):
        return
    # resumed from Ray's state the trial goes on under its number; from the study alone (a fresh clone) its
    # configuration runs again under a new number, which is the one to export then
    finish = (f"finish it with `lmsearch search {exp / 'space.yaml'} --out {exp} --resume` (then export it, or "
              f"the trial that ran its configuration again, which `lmsearch pareto {exp}` lists), or "
              if state == RUNNING else "")
    raise UnfinishedTrialError(
        f"trial {row['trial_id']} (number {_clean(row.get('number'))}) is {state}, not COMPLETE: weights stored "
        f"for it and its metrics in trials.csv (val_acc {_clean(row.get('val_acc'))}, test_acc "
        f"{_clean(row.get('test_acc'))}) may not belong together, so nothing is exported; "
        f"{finish}pass retrain_epochs > 0 (--retrain-epochs N) to train it anew on the full training set"
    )


def _retrain(spec: ArchSpec, row: Any, epochs: int, device: str | None, data_root: str | None,
             split_seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``spec`` from scratch on the full training set (no validation hold-out) for ``epochs`` epochs."""
    from lmsearch.data import load_dataset
    from lmsearch.train import TrainConfig, Trainer

    dataset = _clean(row.get("dataset"))
    if not dataset:
        raise ValueError("the trial records no dataset; cannot retrain")
    seed = _clean(row.get("seed"))
    if seed is not None:
        torch.manual_seed(int(seed))
    data = load_dataset(dataset, root=data_root, val_fraction=0.0, seed=split_seed, subset=None)
    model = _build_model(spec)
    recipe = _clean(row.get("train_json"))
    if recipe:  # the whole training recipe of the trial
        hyper = dict(json.loads(recipe))
    else:
        hyper = {k: _clean(row.get(k)) for k in ("lr", "weight_decay", "batch_size")}
        hyper = {k: v for k, v in hyper.items() if v is not None}
    if seed is not None:
        hyper["seed"] = int(seed)
    config = TrainConfig(epochs=epochs, device=device or "auto", **hyper)
    trainer = Trainer(model, data, config)
    result = trainer.fit()
    if result.status != "completed":
        raise ValueError(f"retraining trial {_clean(row.get('trial_id'))} did not complete ({result.message}); "
                         "nothing exported")
    metrics = {"retrain_epochs": epochs, "retrain_test_acc": float(trainer.evaluate("test")["acc"])}
    return model.cpu(), metrics


def export_best(
    exp_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_params: int | None = None,
    trial: str | int | None = None,
    retrain_epochs: int = 0,
    objectives: Any = None,
    device: str | None = None,
    data_root: str | os.PathLike | None = None,
) -> Path:
    """Export a search's chosen architecture with weights to ``out_dir``; returns it.

    Picks the row with :func:`select_trial` (the named ``trial``, else the most
    accurate front architecture within ``max_params``). Weights:

    * ``retrain_epochs > 0``: trained from scratch with the trial's
      hyperparameters and seed on the full training set (train + validation)
      for that many epochs; the test accuracy after retraining is recorded.
      The data are read from ``data_root`` (default: the ``data_dir`` of the
      experiment's space.yaml, else the dataset's default location);
    * otherwise the trial's own final weights, found by
      :func:`find_trial_weights`; if the search kept none, a ValueError asks
      for ``retrain_epochs`` (freshly initialised weights are never exported
      as if they were trained).

    arch.json gets ``metrics`` (params, flops, val_acc, val_loss, test_acc of
    the trial, plus the retrain's) and ``provenance`` (experiment, trial_id,
    number, dataset, seed, state, hyperparameters, weights source, export time).

    ``out_dir`` is checked first: an existing file there (or among its
    parents) is a ValueError before anything is loaded or trained, and so is
    a ``device`` retraining cannot use (e.g. ``cuda`` without CUDA). A
    missing dataset is :class:`lmsearch.data.DatasetNotFoundError`. A retrain
    that diverges is a ValueError too; nothing is written.
    """
    from lmsearch.results import experiment_objectives, load_results, read_experiment

    if retrain_epochs < 0:
        raise ValueError(f"retrain_epochs must be >= 0; got {retrain_epochs}")
    check_output_dir(out_dir)  # before any retraining, whose work would otherwise be lost
    if retrain_epochs > 0:
        _check_device(device)
    exp = Path(exp_dir)
    meta = read_experiment(exp)
    df = load_results(exp)
    if objectives is None:
        objectives = experiment_objectives(meta, exp / "experiment.json")
    row = select_trial(df, max_params=max_params, trial=trial, objectives=objectives)
    arch_json = _clean(row.get("arch_json"))
    if not arch_json:
        raise ValueError(f"trial {row['trial_id']} records no arch_json")
    spec = ArchSpec.from_json(arch_json)
    trial_id = str(row["trial_id"])
    if retrain_epochs == 0:
        _check_finished(row, exp)

    metrics = {k: _clean(row.get(k)) for k in ("params", "flops", "val_acc", "val_loss", "test_acc")}
    if retrain_epochs > 0:
        root = str(data_root) if data_root is not None else _data_dir(exp)
        model, extra = _retrain(spec, row, retrain_epochs, device, root, int(meta.get("seed") or 0))
        metrics.update(extra)
        source = f"retrained from scratch for {retrain_epochs} epochs on train+val"
    else:
        stored = find_trial_weights(exp, trial_id)
        if stored is None:
            raise ValueError(
                f"{exp}: no stored weights for trial {trial_id} (looked in weights/{trial_id}/ and ray/ "
                "checkpoints); pass retrain_epochs > 0 (--retrain-epochs E) to train it on the full training set"
            )
        model = load_architecture(stored)
        if model.spec != spec:
            raise ArchitectureFileError(f"{stored}: its spec differs from trial {trial_id}'s arch_json")
        source = f"trial weights from {stored.relative_to(exp) if stored.is_relative_to(exp) else stored}"
    provenance = {
        "experiment": str(meta.get("name") or exp.name),
        "trial_id": trial_id,
        "number": _clean(row.get("number")),
        "dataset": _clean(row.get("dataset")) or meta.get("dataset"),
        "seed": _clean(row.get("seed")),
        "state": _clean(row.get("state")),
        "hyperparameters": {k: _clean(row.get(k)) for k in ("lr", "weight_decay", "batch_size", "epochs")},
        "weights": source,
        "selected_by": f"trial {trial}" if trial is not None else
                       f"most accurate front architecture with <= {max_params} params" if max_params is not None
                       else "most accurate front architecture",
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    canonical = spec.canonical()
    if canonical.scheme != spec.scheme:  # an lm net with one step per stage, searched before spaces left those out
        provenance["searched_as"] = (f"{spec.scheme}-{spec.depth}, which has no LM step (one step per stage): "
                                     f"the same network as {canonical.scheme}-{canonical.depth}, exported as such")
    return save_architecture(model, canonical, out_dir, metadata={"metrics": metrics, "provenance": provenance})
