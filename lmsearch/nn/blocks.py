"""Residual functions f and projection shortcuts: the conv blocks the schemes step with.

A residual function maps a state of ``in_channels`` to an increment of
``out_channels`` (optionally strided). Its layers come in one of two orders:

* pre-activation (``preact=True``, He et al. 2016b): every unit is BN-ReLU-conv,
  so the function ends with a convolution;
* post-activation (``preact=False``, He et al. 2016a): every unit is conv-BN-ReLU
  except the last, which is conv-BN (the ReLU after the addition belongs to the
  step, see :mod:`lmsearch.nn.schemes`).

Blocks (``spec.block``):

* ``basic``: 3x3 (stride) -> 3x3, inner width ``out_channels``;
* ``bottleneck``: 1x1 -> 3x3 (stride, as torchvision's ResNet v1.5) -> 1x1,
  inner width ``out_channels // 4``;
* ``resnext``: the bottleneck with a grouped 3x3 of ``groups * group_width * 2**stage``
  channels (for a full-width state; scaled with ``out_channels``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from lmsearch.arch import ArchSpec

__all__ = ["conv_layer", "function_width", "residual_function", "projection", "PadShortcut"]


def conv_layer(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free ``kernel`` x ``kernel`` convolution padded to keep the size (before striding)."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)


def function_width(spec: ArchSpec, stage: int, out_channels: int) -> int:
    """Channels inside a residual function of ``spec.block`` with ``out_channels`` outputs in ``stage``.

    ``out_channels`` is the stage's state width, or half of it for the coupled
    functions of a reversible step; the inner width scales with it.
    """
    if spec.block == "basic":
        return out_channels
    if spec.block == "bottleneck":
        return out_channels // 4
    full = spec.groups * spec.group_width * 2**stage
    inner, rest = divmod(full * out_channels, spec.stage_channels[stage])
    if rest or inner % spec.groups:
        raise ValueError(
            f"a resnext function with {out_channels} outputs in stage {stage} would have {full * out_channels / spec.stage_channels[stage]:g} "
            f"inner channels, not a multiple of groups={spec.groups}"
        )
    return inner


def _unit(
    preact: bool, in_channels: int, out_channels: int, kernel: int, stride: int, groups: int, last: bool, i: int
) -> list[tuple[str, nn.Module]]:
    """One BN-ReLU-conv (pre-activation) or conv-BN[-ReLU] (post-activation) unit, layers numbered ``i``."""
    if preact:
        return [(f"bn{i}", nn.BatchNorm2d(in_channels)), (f"relu{i}", nn.ReLU(inplace=True)),
                (f"conv{i}", conv_layer(in_channels, out_channels, kernel, stride, groups))]
    layers = [(f"conv{i}", conv_layer(in_channels, out_channels, kernel, stride, groups)),
              (f"bn{i}", nn.BatchNorm2d(out_channels))]
    return layers if last else [*layers, (f"relu{i}", nn.ReLU(inplace=True))]


def residual_function(
    block: str,
    in_channels: int,
    out_channels: int,
    *,
    inner: int,
    stride: int = 1,
    groups: int = 1,
    preact: bool = True,
) -> nn.Sequential:
    """One residual function f as an ``nn.Sequential`` (layers named conv1, bn1, relu1, ...).

    Args:
        block: ``basic`` (two 3x3), ``bottleneck`` or ``resnext`` (1x1, 3x3, 1x1).
        in_channels, out_channels: channels of the input state and of f's output.
        inner: channels between the convolutions (see :func:`function_width`).
        stride: stride of the first 3x3 (spatial subsampling of a shape-changing step).
        groups: groups of the 3x3 of a ``resnext`` function.
        preact: BN-ReLU-conv units instead of conv-BN-ReLU.
    """
    if block == "basic":
        shapes = [(in_channels, inner, 3, stride, 1), (inner, out_channels, 3, 1, 1)]
    elif block in ("bottleneck", "resnext"):
        g = groups if block == "resnext" else 1
        shapes = [(in_channels, inner, 1, 1, 1), (inner, inner, 3, stride, g), (inner, out_channels, 1, 1, 1)]
    else:
        raise ValueError(f"block must be one of basic, bottleneck, resnext; got {block!r}")
    layers = []
    for i, (cin, cout, kernel, s, g) in enumerate(shapes, start=1):
        layers += _unit(preact, cin, cout, kernel, s, g, last=i == len(shapes), i=i)
    return nn.Sequential(OrderedDict(layers))


class PadShortcut(nn.Module):
    """He et al.'s option A shortcut: subsample by ``stride``, zero-pad the new channels. No parameters.

    The ``out_channels - in_channels`` zero channels are split evenly before
    and after the existing ones (one more after when odd).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"a pad shortcut cannot reduce channels ({in_channels} -> {out_channels})")
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (0, 0, 0, 0, extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, self.pad)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad[4:]}"


def projection(kind: str, in_channels: int, out_channels: int, stride: int, preact: bool) -> nn.Module | None:
    """The shortcut P of a step from ``in_channels`` to ``out_channels`` with ``stride``; ``None`` if the shape holds.

    ``conv``: a strided 1x1 convolution, followed by BN in post-activation nets.
    ``pad``: :class:`PadShortcut` (no parameters).
    ``preact_conv``: BN -> ReLU -> strided 1x1 convolution, with its own batch norm
    (the LM-ResNet authors' projection of a pre-activation step's input).
    """
    if in_channels == out_channels and stride == 1:
        return None
    if kind == "pad":
        return PadShortcut(in_channels, out_channels, stride)
    if kind not in ("conv", "preact_conv"):
        raise ValueError(f"shortcut must be one of conv, pad, preact_conv; got {kind!r}")
    conv = conv_layer(in_channels, out_channels, 1, stride)
    if kind == "preact_conv":
        return nn.Sequential(OrderedDict(bn=nn.BatchNorm2d(in_channels), relu=nn.ReLU(inplace=True), conv=conv))
    if preact:
        return nn.Sequential(OrderedDict(conv=conv))
    return nn.Sequential(OrderedDict(conv=conv, bn=nn.BatchNorm2d(out_channels)))
