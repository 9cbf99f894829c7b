"""The export format: a directory with ``arch.json`` + ``model.safetensors``, and back into a model.

This module owns the format (writing, reading, validating); choosing a trial
of a search and retraining it live in :mod:`lmsearch.export`.

An export directory holds two files:

* ``model.safetensors`` — the model's ``state_dict`` (safetensors: no pickle,
  so loading cannot run code);
* ``arch.json`` — ``{"format": "lmsearch-arch", "version": 1, "spec": {...},
  "weights": "model.safetensors", "sha256": <hex digest of the weights file>,
  ...metadata}``, where the metadata (by convention ``"metrics"`` and
  ``"provenance"``) is stored verbatim at the top level.

A spec names one of two kinds of network: lmsearch's own (no ``base``), or a
torchvision network converted by :func:`lmsearch.to_lm`, whose spec holds
``"base": "torchvision:resnet50"`` (one of
:data:`lmsearch.arch.TORCHVISION_BASES`) with its scheme, k_n options,
noise, ``in_channels`` and ``num_classes``: it is rebuilt from torchvision's
constructor of that name (random init, then the weights file), never from a
pickle. An unknown base is refused naming the file, the field and the
allowed names.

:func:`load_architecture` validates arch.json, checks the weights' hash, then
compares the tensors the spec needs (built on PyTorch's ``meta`` device, so
nothing is allocated) with the safetensors header before it builds the real
network: a spec that does not fit its weights, however large it claims to be,
is refused with an :class:`ArchitectureFileError` naming the file and tensor.

Example:
    >>> import tempfile, lmsearch
    >>> spec = lmsearch.ArchSpec(scheme="lm", depth=20, width=8, in_channels=1)
    >>> model = lmsearch.build_model(spec)
    >>> out = lmsearch.save_architecture(model, spec, tempfile.mkdtemp() + "/lm20")
    >>> again = lmsearch.load_architecture(out)
    >>> again.spec == spec
    True
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmsearch.arch import ArchSpec
from lmsearch.atomic import atomic_write, atomic_write_text
from lmsearch.results import EXPERIMENT_FILE

__all__ = [
    "FORMAT",
    "VERSION",
    "ARCH_FILE",
    "WEIGHTS_FILE",
    "ArchitectureFileError",
    "save_architecture",
    "load_architecture",
    "read_arch_json",
    "check_output_dir",
]

FORMAT = "lmsearch-arch"
VERSION = 1
ARCH_FILE = "arch.json"
WEIGHTS_FILE = "model.safetensors"
_RESERVED = ("format", "version", "spec", "weights", "sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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


def _few(items: list[str]) -> str:
    return ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")


def _compare_shapes(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
                    where: str) -> None:
    """Raise ArchitectureFileError listing missing/unexpected tensors and shape mismatches."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{k}: file {found[k]} vs spec {expected[k]}"
              for k in sorted(set(expected) & set(found)) if found[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing tensors {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_few(unexpected)}")
    if shapes:
        problems.append(f"wrong shapes {_few(shapes)}")
        need, have = sum(math.prod(s) for s in expected.values()), sum(math.prod(s) for s in found.values())
        problems.append(f"the spec needs {need:,} values, the file holds {have:,}")
    if problems:
        raise ArchitectureFileError(f"{where}: the weights do not fit the architecture in arch.json: "
                                    + "; ".join(problems))


def _meta_shapes(spec: ArchSpec, where: str) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes the network of ``spec`` has, built on the meta device (no memory allocated)."""
    try:
        with torch.device("meta"):
            state = _build_model(spec).state_dict()
    except (RuntimeError, ValueError, OverflowError, MemoryError) as exc:
        raise ArchitectureFileError(f"{where}: the network of this spec cannot be built "
                                    f"(width {spec.width}, depth {spec.depth}): {exc}") from None
    return {name: tuple(t.shape) for name, t in state.items()}


def _json_safe(value: Any, where: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} must be JSON-serialisable: {exc}") from None


def check_output_dir(directory: str | os.PathLike) -> Path:
    """``directory`` as a Path if an export can be written there; else a ValueError naming the obstacle.

    It may exist as a directory or not exist yet; an existing file at its
    place, or a file among its parents, is refused (before any work is done).
    """
    if not str(directory).strip():
        raise ValueError("the export directory is an empty path; give a directory name")
    out = Path(directory).expanduser()
    if (out / EXPERIMENT_FILE).is_file():
        raise ValueError(f"{out} is an experiment folder; export into a directory of its own")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory; an export is a directory holding {ARCH_FILE} "
                         f"and {WEIGHTS_FILE}: choose a new or existing directory")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{parent} is a file, so the export directory {out} cannot be created there")
            break
    return out


# =========================================================================== save / load
def _no_spec_reason(model: nn.Module) -> str:
    """Why a model has no .spec, for save_architecture's message."""
    from lmsearch.nn.torchvision_lm import LAYERS, ResNetStage

    if all(isinstance(getattr(model, layer, None), ResNetStage) for layer in LAYERS):
        return (" (a converted torchvision ResNet whose structure is not what a torchvision constructor builds, "
                "e.g. a replaced maxpool, conv1 or fc, so arch.json cannot rebuild it; save its state_dict with "
                "torch.save instead)")
    return ""


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
            different ``.spec`` is refused, and so is, for a spec with a
            torchvision ``base``, a model whose modules differ from what
            :func:`lmsearch.nn.torchvision_lm.build_base` builds (e.g. a
            replaced maxpool: the same tensors, another network).
        directory: created if needed (an existing file there is refused);
            ``arch.json`` and ``model.safetensors`` in it are replaced
            atomically (weights first, so arch.json always describes a
            complete weights file).
        metadata: JSON-serialisable extras stored at the top level of
            arch.json, by convention ``{"metrics": {...}, "provenance": {...}}``.
            The keys format, version, spec, weights and sha256 are reserved.

    Weights with NaN or infinite values are refused (ValueError naming the
    tensor; nothing is written). Tied or non-contiguous tensors are saved as
    independent copies with the same values, so the round trip is bit-exact.
    """
    from safetensors.torch import save_file

    if spec is None:
        spec = getattr(model, "spec", None)
        if spec is None:
            raise ValueError(f"save_architecture needs a spec: the model carries no .spec{_no_spec_reason(model)}")
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"spec must be an lmsearch.ArchSpec; got {type(spec).__name__}")
    own = getattr(model, "spec", None)
    if isinstance(own, ArchSpec) and own.canonical() != spec.canonical():  # lm without LM step == euler
        raise ValueError(f"the model was built from {own} but spec is {spec}")
    if spec.base is not None:  # same tensor shapes can still be another net (a replaced maxpool): compare modules
        from lmsearch.nn.torchvision_lm import base_mismatch

        mismatch = base_mismatch(model, spec)
        if mismatch is not None:
            raise ValueError(f"the model is not the network of base {spec.base}, which load_architecture would "
                             f"rebuild: {mismatch}; save its state_dict with torch.save instead")
    extra = dict(metadata or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved by the arch.json format")
    extra = _json_safe(extra, "metadata")
    out = check_output_dir(directory)

    tensors = _state_tensors(model)
    where = f"save_architecture({spec.scheme}-{spec.depth})"
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"{where}: tensors {_few(bad)} hold NaN or infinite values (a diverged run?); "
                         f"nothing written to {out}")
    # a model/spec mismatch is caught now rather than at load time
    _compare_shapes(_meta_shapes(spec, where), {k: tuple(t.shape) for k, t in tensors.items()}, where)

    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    doc = {"format": FORMAT, "version": VERSION, "spec": spec.to_dict(), "weights": WEIGHTS_FILE,
           "sha256": _sha256(weights), **extra}
    atomic_write_text(out / ARCH_FILE, json.dumps(doc, indent=2) + "\n")
    return out


def read_arch_json(directory: str | os.PathLike) -> dict[str, Any]:
    """The validated arch.json of an export directory (or the arch.json itself); the spec is not yet built.

    Raises ArchitectureFileError naming the file and the field when it is
    missing, not JSON, of another format or version, or when ``spec`` is not
    an object, ``sha256`` not 64 lower-case hex digits or ``weights`` not a
    file name in the same directory.
    """
    path = Path(directory)
    arch = path / ARCH_FILE if path.is_dir() else path
    if not arch.is_file():
        raise ArchitectureFileError(f"{arch}: no such file (an export directory holds {ARCH_FILE} "
                                    f"and {WEIGHTS_FILE})")
    try:
        doc = json.loads(arch.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchitectureFileError(f"{arch}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ArchitectureFileError(f"{arch}: not an lmsearch architecture file (format must be {FORMAT!r})")
    version = doc.get("version")
    if type(version) is not int or version != VERSION:
        raise ArchitectureFileError(f"{arch}: format version {version!r} is not supported "
                                    f"(this lmsearch reads version {VERSION})")
    for key in ("spec", "sha256"):
        if key not in doc:
            raise ArchitectureFileError(f"{arch}: the {key!r} entry is missing")
    if not isinstance(doc["spec"], dict):
        raise ArchitectureFileError(f"{arch}: 'spec' must be an object of ArchSpec fields; "
                                    f"got {type(doc['spec']).__name__}")
    if not isinstance(doc["sha256"], str) or not _SHA256.fullmatch(doc["sha256"]):
        raise ArchitectureFileError(f"{arch}: 'sha256' must be the 64 hexadecimal digits (lower case) of the "
                                    f"weights file's SHA-256; got {doc['sha256']!r}")
    weights = doc.get("weights", WEIGHTS_FILE)
    if not isinstance(weights, str) or Path(weights).name != weights or weights in ("", ".", ".."):
        raise ArchitectureFileError(f"{arch}: 'weights' must be a file name in the same directory; got {weights!r}")
    return doc


def _header_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors header (no tensor data is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt", device="cpu") as fh:
            return {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArchitectureFileError(f"{weights}: not a readable safetensors file ({exc})") from None


def load_architecture(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The model saved by :func:`save_architecture`, with its weights, in eval mode.

    Only JSON and safetensors are read (nothing is unpickled). Before any
    weight is allocated, arch.json is validated (:func:`read_arch_json`), the
    weights' SHA-256 must equal arch.json's, and the tensors the spec needs
    (built on the meta device) must match the safetensors header name for
    name and shape; otherwise an :class:`ArchitectureFileError` names the
    file and the field or tensor. Outputs are bit-identical to the saved
    model's. The model carries ``.spec`` (the ArchSpec) and ``.metadata``
    (arch.json's metadata: metrics, provenance...). Weights saved in another
    floating dtype (e.g. float16) load into a model converted to that dtype.
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
            f"{weights}: SHA-256 {digest[:16]}... does not match {arch} ({doc['sha256'][:16]}...): "
            "the weights were modified or belong to another export; refusing to load"
        )
    found = _header_shapes(weights)
    functions = sum(spec.stage_functions)
    if functions > len(found):  # every residual function has weights: refuse before building a huge net
        raise ArchitectureFileError(
            f"{arch}: the spec (depth {spec.depth}) has {functions} residual functions but {weights.name} "
            f"holds only {len(found)} tensors: the weights do not fit the architecture in arch.json")
    _compare_shapes(_meta_shapes(spec, str(arch)), found, str(weights))
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArchitectureFileError(f"{weights}: not a readable safetensors file ({exc})") from None

    model = _build_model(spec)
    float_dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    model_dtypes = {t.dtype for t in model.state_dict().values() if t.is_floating_point()}
    if len(float_dtypes) == 1 and float_dtypes != model_dtypes:
        model = model.to(next(iter(float_dtypes)))
    model.load_state_dict(state, strict=True)
    model = model.to(map_location)
    model.spec = spec
    model.metadata = {k: v for k, v in doc.items() if k not in _RESERVED}
    return model.eval()
