"""The network builder: ArchSpec -> stem, stages of scheme steps, head.

Layout (He et al. 2016a/b, torchvision's ResNet):

* stem ``small``: 3x3 conv ``in_channels -> width`` (+BN+ReLU when post-activation);
  ``imagenet``: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool;
* stages with ``spec.stage_channels``; the first stage keeps the resolution,
  each later one halves it at its first step (stride 2);
* head: BN+ReLU for pre-activation nets, global average pool, linear classifier.

The steps come from the registered scheme class (:mod:`lmsearch.nn.schemes`).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from lmsearch.arch import MAX_ARCH_PARAMS, ArchSpec
from lmsearch.nn.blocks import conv_layer
from lmsearch.nn.registry import get_scheme
from lmsearch.nn.schemes import StepContext

__all__ = ["build_model", "ResidualNetwork"]


def _stem(spec: ArchSpec) -> nn.Sequential:
    if spec.stem == "imagenet":
        return nn.Sequential(OrderedDict(
            conv=conv_layer(spec.in_channels, spec.width, 7, stride=2),
            bn=nn.BatchNorm2d(spec.width),
            relu=nn.ReLU(inplace=True),
            pool=nn.MaxPool2d(3, stride=2, padding=1),
        ))
    layers = OrderedDict(conv=conv_layer(spec.in_channels, spec.width, 3))
    if not spec.preact:
        layers.update(bn=nn.BatchNorm2d(spec.width), relu=nn.ReLU(inplace=True))
    return nn.Sequential(layers)


class ResidualNetwork(nn.Module):
    """A residual network built from ``spec`` (kept as ``.spec``): ``stem -> stages -> head -> classifier``."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        scheme = get_scheme(spec.scheme)
        self.stem = _stem(spec)
        total = sum(spec.steps_per_stage)
        stages, index, channels = [], 0, spec.width
        for stage, (n_steps, out) in enumerate(zip(spec.steps_per_stage, spec.stage_channels, strict=True)):
            steps = []
            for step in range(n_steps):
                index += 1
                first = step == 0
                ctx = StepContext(
                    spec, stage=stage, step=step, index=index, total=total,
                    in_channels=channels if first else out, out_channels=out,
                    stride=2 if first and stage > 0 else 1,
                )
                steps.append(scheme.build(ctx))
            stages.append(scheme.make_stage(steps))
            channels = out
        self.stages = nn.ModuleList(stages)
        self.head = (
            nn.Sequential(OrderedDict(bn=nn.BatchNorm2d(channels), relu=nn.ReLU(inplace=True)))
            if spec.preact else nn.Identity()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, spec.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        """The final state after the head (before pooling)."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build_model(spec: ArchSpec) -> nn.Module:
    """The network described by ``spec`` (an ``nn.Module`` with ``.spec``).

    A spec with a torchvision ``base`` gives torchvision's network, converted
    (:func:`lmsearch.nn.torchvision_lm.build_base`); any other a :class:`ResidualNetwork`.

    Example:
        >>> from lmsearch.arch import ArchSpec
        >>> model = build_model(ArchSpec(scheme="lm", depth=20, width=16))
        >>> sum(p.numel() for p in model.parameters())
        272288
    """
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"build_model needs an lmsearch.ArchSpec; got {type(spec).__name__}")
    at_least = spec.min_params()
    if at_least > MAX_ARCH_PARAMS:
        raise ValueError(f"this network has at least {at_least:.3g} parameters; at most "
                         f"{MAX_ARCH_PARAMS:.0e} are allowed: choose a smaller width or depth")
    if spec.base is not None:
        from lmsearch.nn.torchvision_lm import build_base

        return build_base(spec)
    return ResidualNetwork(spec)
