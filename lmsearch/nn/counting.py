"""Model size without training: parameters (no weights allocated) and forward FLOPs."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from lmsearch.arch import ArchSpec
from lmsearch.nn.network import build_model

__all__ = ["count_params", "count_flops", "default_input_size"]


def count_params(spec: ArchSpec) -> int:
    """Number of parameters of ``build_model(spec)``, built on the meta device (no memory for weights).

    Example:
        >>> count_params(ArchSpec(scheme="euler", depth=20, width=16, preact=False, shortcut="pad"))
        269722
    """
    with torch.device("meta"):
        model = build_model(spec)
    return sum(p.numel() for p in model.parameters())


def default_input_size(spec: ArchSpec) -> tuple[int, int, int]:
    """``(in_channels, 224, 224)`` for the imagenet stem, ``(in_channels, 32, 32)`` for the small one."""
    side = 224 if spec.stem == "imagenet" else 32
    return (spec.in_channels, side, side)


def count_flops(spec: ArchSpec, input_size: tuple[int, int, int] | None = None) -> int:
    """Forward FLOPs of one image through ``build_model(spec)`` in eval mode.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device:
    convolutions and matrix products at 2 FLOPs per multiply-accumulate;
    elementwise ops, BN and pooling are not counted (so an LM net counts the
    same as its Euler net). ``input_size`` is ``(C, H, W)``; by default
    :func:`default_input_size`.

    Example:
        >>> count_flops(ArchSpec(scheme="euler", depth=20, width=16, preact=False, shortcut="pad"))
        81102080
    """
    size = tuple(input_size) if input_size is not None else default_input_size(spec)
    if len(size) != 3:
        raise ValueError(f"input_size must be (channels, height, width); got {input_size!r}")
    with torch.device("meta"):
        model = build_model(spec).eval()
        x = torch.empty((1, *size))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())
