"""Take an architecture away: ``arch.json`` + ``model.safetensors``, and back into a model.

An export directory holds two files:

* ``model.safetensors`` — the model's ``state_dict`` (safetensors: no pickle,
  so loading cannot run code);
* ``arch.json`` — ``{"format": "lmsearch-arch", "version": 1, "spec": {...},
  "weights": "model.safetensors", "sha256": <hex digest of the weights file>,
  ...metadata}``, where the metadata (by convention ``"metrics"`` and
  ``"provenance"``) is stored verbatim at the top level.

:func:`load_architecture` rebuilds the network from the spec with
:func:`lmsearch.build_model` and loads the weights strictly: a weights file
whose hash differs from arch.json's (tampered, or from another export), or
whose tensors do not fit the spec (missing or unexpected keys, wrong shapes)
is refused with an :class:`ArchitectureFileError` naming the file.

:func:`export_best` picks a trial of a search and exports it (see there).

Example:
    >>> spec = lmsearch.ArchSpec(scheme="lm", depth=20, width=8, in_channels=1)   # doctest: +SKIP
    >>> model = lmsearch.build_model(spec)                                       # doctest: +SKIP
    >>> lmsearch.save_architecture(model, spec, "out/lm20")                      # doctest: +SKIP
    >>> again = lmsearch.load_architecture("out/lm20")                           # doctest: +SKIP
    >>> again.spec == spec                                                       # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmsearch.arch import ArchSpec
from lmsearch.atomic import atomic_write, atomic_write_text

__all__ = [
    "FORMAT",
    "VERSION",
    "ARCH_FILE",
    "WEIGHTS_FILE",
    "ArchitectureFileError",
    "save_architecture",
    "load_architecture",
    "read_arch_json",
    "find_trial_weights",
    "select_trial",
    "export_best",
]

FORMAT = "lmsearch-arch"
VERSION = 1
ARCH_FILE = "arch.json"
WEIGHTS_FILE = "model.safetensors"
_RESERVED = ("format", "version", "spec", "weights", "sha256")


class ArchitectureFileError(ValueError):
    """An export directory that cannot be loaded safely (missing, tampered or mismatched files)."""


# =========================================================================== helpers
def _build_model(spec: ArchSpec) -> nn.Module:
    from lmsearch.nn.network import build_model

    return build_model(spec)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as independent, contiguous CPU tensors.

    safetensors refuses tensors that share memory (tied weights, views) and
    non-contiguous ones, so every entry is copied into its own storage; the
    values are unchanged bit for bit.
    """
    return {name: t.detach().cpu().contiguous().clone() for name, t in model.state_dict().items()}


def _compare_state(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise ArchitectureFileError listing missing/unexpected keys and shape mismatches."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: file {tuple(found[k].shape)} vs spec {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    problems = []

    def few(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")

    if missing:
        problems.append(f"missing tensors {few(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {few(unexpected)}")
    if shapes:
        problems.append(f"wrong shapes {few(shapes)}")
    if problems:
        raise ArchitectureFileError(f"{where}: the weights do not fit the architecture in arch.json: "
                                    + "; ".join(problems))


def _json_safe(value: Any, where: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} must be JSON-serialisable: {exc}") from None


# =========================================================================== save / load
def save_architecture(
    model: nn.Module,
    spec: ArchSpec | None,
    directory: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and ``spec`` to ``directory``; returns the directory.

    Args:
        model: a network built from ``spec`` (its state_dict is saved).
        spec: its ArchSpec; ``None`` takes ``model.spec``. A model carrying a
            different ``.spec`` is refused.
        directory: created if needed; ``arch.json`` and ``model.safetensors``
            in it are replaced atomically (weights first, so arch.json always
            describes a complete weights file).
        metadata: JSON-serialisable extras stored at the top level of
            arch.json, by convention ``{"metrics": {...}, "provenance": {...}}``.
            The keys format, version, spec, weights and sha256 are reserved.

    Tied or non-contiguous tensors are saved as independent copies with the
    same values, so the round trip is bit-exact.
    """
    from safetensors.torch import save_file

    if spec is None:
        spec = getattr(model, "spec", None)
        if spec is None:
            raise ValueError("save_architecture needs a spec (the model carries no .spec)")
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"spec must be an lmsearch.ArchSpec; got {type(spec).__name__}")
    own = getattr(model, "spec", None)
    if isinstance(own, ArchSpec) and own != spec:
        raise ValueError(f"the model was built from {own} but spec is {spec}")
    extra = dict(metadata or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved by the arch.json format")
    extra = _json_safe(extra, "metadata")

    tensors = _state_tensors(model)
    try:  # catch a model/spec mismatch now rather than at load time
        with torch.device("meta"):
            reference = _build_model(spec).state_dict()
    except Exception:  # noqa: BLE001 - a builder that cannot run on meta: skip the early check
        reference = None
    if reference is not None:
        _compare_state(reference, tensors, f"save_architecture({spec.scheme}-{spec.depth})")

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    doc = {"format": FORMAT, "version": VERSION, "spec": spec.to_dict(), "weights": WEIGHTS_FILE,
           "sha256": _sha256(weights), **extra}
    text = json.dumps(doc, indent=2) + "\n"
    atomic_write_text(out / ARCH_FILE, text)
    return out


def read_arch_json(directory: str | os.PathLike) -> dict[str, Any]:
    """The validated arch.json of an export directory (spec not yet built)."""
    path = Path(directory)
    arch = path / ARCH_FILE if path.is_dir() else path
    if not arch.is_file():
        raise ArchitectureFileError(f"{arch}: no such file (an export directory holds {ARCH_FILE} "
                                    f"and {WEIGHTS_FILE})")
    try:
        doc = json.loads(arch.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchitectureFileError(f"{arch}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ArchitectureFileError(f"{arch}: not an lmsearch architecture file (format must be {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise ArchitectureFileError(f"{arch}: format version {doc.get('version')!r} is not supported "
                                    f"(this lmsearch reads version {VERSION})")
    for key in ("spec", "sha256"):
        if key not in doc:
            raise ArchitectureFileError(f"{arch}: the {key!r} entry is missing")
    weights = doc.get("weights", WEIGHTS_FILE)
    if not isinstance(weights, str) or Path(weights).name != weights or weights in ("", ".", ".."):
        raise ArchitectureFileError(f"{arch}: 'weights' must be a file name in the same directory; got {weights!r}")
    return doc


def load_architecture(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The model saved by :func:`save_architecture`, with its weights, in eval mode.

    Only JSON and safetensors are read (nothing is unpickled). The weights'
    SHA-256 must equal arch.json's, and the tensors must match the network
    built from the spec key for key and shape for shape; otherwise an
    :class:`ArchitectureFileError` names the file and the problem. Outputs are
    bit-identical to the saved model's. The model carries ``.spec`` (the
    ArchSpec) and ``.metadata`` (arch.json's metadata: metrics, provenance...).
    Weights saved in another floating dtype (e.g. float16) load into a model
    converted to that dtype.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(directory)
    root = root.parent if root.is_file() else root
    doc = read_arch_json(root)
    arch = root / ARCH_FILE
    try:
        spec = ArchSpec.from_dict(doc["spec"])
    except (TypeError, ValueError) as exc:
        raise ArchitectureFileError(f"{arch}: invalid architecture spec: {exc}") from None
    weights = root / doc.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise ArchitectureFileError(f"{weights}: no such file (named by {arch})")
    digest = _sha256(weights)
    if digest != doc["sha256"]:
        raise ArchitectureFileError(
            f"{weights}: SHA-256 {digest[:16]}... does not match {arch} ({str(doc['sha256'])[:16]}...): "
            "the weights were modified or belong to another export; refusing to load"
        )
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArchitectureFileError(f"{weights}: not a readable safetensors file ({exc})") from None

    model = _build_model(spec)
    _compare_state(model.state_dict(), state, str(weights))
    float_dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    model_dtypes = {t.dtype for t in model.state_dict().values() if t.is_floating_point()}
    if len(float_dtypes) == 1 and float_dtypes != model_dtypes:
        model = model.to(next(iter(float_dtypes)))
    model.load_state_dict(state, strict=True)
    model = model.to(map_location)
    model.spec = spec
    model.metadata = {k: v for k, v in doc.items() if k not in _RESERVED}
    return model.eval()


# =========================================================================== export a search's trial
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
    ``number`` equals it. Otherwise: among the Pareto front (COMPLETE trials,
    ``objectives``, default val_acc max / params min) within ``max_params``
    parameters, the most accurate by ``val_acc`` (ties: fewer parameters, then
    the lower trial number). Raises ValueError when nothing qualifies.
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
        row = hit.iloc[-1]
        if row.get("state") not in (None, "COMPLETE") and not pd.isna(row.get("state")):
            warnings.warn(f"trial {key} is {row['state']}, not COMPLETE", stacklevel=2)
        return row
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

        return load_space(space_file).data_dir
    except Exception:  # noqa: BLE001 - an unreadable copy only loses the hint
        return None


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
    trainer.fit()
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
    number, dataset, seed, hyperparameters, weights source, export time).
    """
    from lmsearch.results import load_results, read_experiment

    if retrain_epochs < 0:
        raise ValueError(f"retrain_epochs must be >= 0; got {retrain_epochs}")
    exp = Path(exp_dir)
    meta = read_experiment(exp)
    df = load_results(exp)
    if objectives is None and meta.get("objectives"):
        objectives = [(o["name"], o["direction"]) for o in meta["objectives"]]
    row = select_trial(df, max_params=max_params, trial=trial, objectives=objectives)
    arch_json = _clean(row.get("arch_json"))
    if not arch_json:
        raise ValueError(f"trial {row['trial_id']} records no arch_json")
    spec = ArchSpec.from_json(arch_json)
    trial_id = str(row["trial_id"])

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
        "hyperparameters": {k: _clean(row.get(k)) for k in ("lr", "weight_decay", "batch_size", "epochs")},
        "weights": source,
        "selected_by": f"trial {trial}" if trial is not None else
                       f"most accurate front architecture with <= {max_params} params" if max_params is not None
                       else "most accurate front architecture",
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return save_architecture(model, spec, out_dir, metadata={"metrics": metrics, "provenance": provenance})
