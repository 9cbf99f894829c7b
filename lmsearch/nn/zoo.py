"""The model zoo: the papers' networks as named ArchSpec presets (timm-style ``create_model``).

Families (``*`` = 20, 32, 44, 56, 110):

* ``resnet*`` / ``lm_resnet*``: He et al. 2016a CIFAR-10 nets: post-activation,
  basic blocks, option-A (``pad``) shortcuts, width 16 (0.27M ... 1.7M params);
* ``preact_resnet*`` / ``lm_preact_resnet*``: pre-activation with bare 1x1 conv
  shortcuts;
* ``authors_resnet*`` / ``lm_authors_resnet*``: the LM-ResNet authors' CIFAR nets
  (their MResNet): pre-activation, stem conv without BN, and a shape-changing
  step's shortcut BN -> ReLU -> 1x1 conv with its own batch norm
  (``shortcut="preact_conv"``); ``lm_authors_resnet20/56/110`` have the 272,384 /
  855,698 / 1,730,669 parameters their forward pass uses;
* ``resnext29_8x64d``, ``resnext29_16x64d`` (+ ``lm_``): Xie et al. 2017 CIFAR-100
  ResNeXt-29, post-activation, conv shortcuts, width 64;
* ``resnet50``, ``resnet101`` (+ ``lm_``): ImageNet, post-activation bottlenecks,
  stages (3, 4, 6, 3) / (3, 4, 23, 3), width 64, 1000 classes.

An ``lm_`` entry is its plain twin with ``scheme="lm"``: one extra scalar k per
LM step (every step except the first of each stage).
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from typing import Any

from torch import nn

from lmsearch.arch import ArchSpec

__all__ = ["MODELS", "create_model", "list_models", "model_spec"]

_CIFAR_DEPTHS = (20, 32, 44, 56, 110)
_CIFAR = {"width": 16, "block": "basic", "num_classes": 10, "in_channels": 3, "stem": "small"}
_IMAGENET = {
    "width": 64, "block": "bottleneck", "preact": False, "shortcut": "conv",
    "num_classes": 1000, "in_channels": 3, "stem": "imagenet",
}


def _presets() -> dict[str, dict[str, Any]]:
    models: dict[str, dict[str, Any]] = {}
    for depth in _CIFAR_DEPTHS:
        models[f"resnet{depth}"] = {**_CIFAR, "depth": depth, "preact": False, "shortcut": "pad"}
        models[f"preact_resnet{depth}"] = {**_CIFAR, "depth": depth, "preact": True, "shortcut": "conv"}
        models[f"authors_resnet{depth}"] = {**_CIFAR, "depth": depth, "preact": True, "shortcut": "preact_conv"}
    for cardinality in (8, 16):
        models[f"resnext29_{cardinality}x64d"] = {
            "depth": 29, "width": 64, "block": "resnext", "groups": cardinality, "group_width": 64,
            "preact": False, "shortcut": "conv", "num_classes": 100, "in_channels": 3, "stem": "small",
        }
    models["resnet50"] = {**_IMAGENET, "depth": 50, "stages": (3, 4, 6, 3)}
    models["resnet101"] = {**_IMAGENET, "depth": 101, "stages": (3, 4, 23, 3)}
    out: dict[str, dict[str, Any]] = {}
    for name, kwargs in models.items():
        out[name] = {"scheme": "euler", **kwargs}
        out[f"lm_{name}"] = {"scheme": "lm", **kwargs}
    return dict(sorted(out.items()))


MODELS: dict[str, dict[str, Any]] = _presets()
"""Zoo name -> ArchSpec keyword arguments."""


def list_models(pattern: str = "*") -> list[str]:
    """Sorted zoo names matching the shell-style ``pattern`` (all by default)."""
    return [name for name in MODELS if fnmatch.fnmatchcase(name, pattern)]


def model_spec(name: str, **overrides: Any) -> ArchSpec:
    """The ArchSpec of zoo entry ``name`` with ``overrides`` applied (validated).

    Example:
        >>> model_spec("lm_resnet56", num_classes=100).num_classes
        100
    """
    try:
        kwargs = MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(MODELS), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (lmsearch.list_models() lists all {len(MODELS)})") from None
    return ArchSpec(**{**kwargs, **overrides})


def create_model(name: str | os.PathLike[str], **overrides: Any) -> nn.Module:
    """A zoo network by name, or a saved architecture from an export directory.

    ``name`` naming an existing directory loads it with
    :func:`lmsearch.archfile.load_architecture` (weights included; overrides are
    not allowed then). Otherwise it is a zoo name and ``overrides`` are
    ArchSpec fields, e.g. ``create_model("lm_resnet56", num_classes=100)``.
    """
    if os.path.isdir(name):
        if overrides:
            raise ValueError(f"create_model({str(name)!r}): overrides cannot be applied to a saved architecture")
        from lmsearch.archfile import load_architecture

        return load_architecture(name)
    from lmsearch.nn.network import build_model

    return build_model(model_spec(str(name), **overrides))
