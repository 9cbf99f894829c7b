"""LM for any torchvision ResNet: :func:`to_lm` turns a ResNet-family model into its LM-ResNet.

torchvision's blocks are post-activation steps, ``x_{n+1} = relu(f(x_n) + P x_n)``.
The converted model runs each stage (``layer1`` ... ``layer4``) as lmsearch's
schemes do (:mod:`lmsearch.nn.schemes`): a stage threads ``(x_n, x_{n-1})``
through its blocks from ``x_{-1} = x_0``, and a block is

* an **Euler step** ``relu(D f(x_n) + P x_n)`` when it is the first block of its
  stage or changes the shape (it has a ``downsample``): no k, and its
  (projected) input ``P x_n`` is the next step's ``x_{n-1}``;
* an **LM step** ``relu((1 - k_n) x_n + k_n x_{n-1} + D f(x_n))`` otherwise, with
  one learnable ``k_n`` (a scalar, or one per channel) computed by
  :func:`lmsearch.nn.schemes.lm_combine` (one lerp and an in-place add).

``D`` is stochastic depth of the increment only (:class:`lmsearch.nn.noise.StochasticDepth`,
survival falling linearly to ``1 - p`` over all blocks; identity in eval and
without noise). At k_n = 0 the model computes exactly torchvision's network:
``lerp(x, x_prev, 0)`` is ``x`` bit for bit, ``x + f`` is ``f + x``, and the
backward pass gives ``g * 1`` and ``g * 0``, so eval outputs and the
gradients of every original parameter are bit-identical.

Every layer and weight of the original stays, the same objects under the
same names (``layer1.1.conv1.weight``); only the containers change (each
block becomes a :class:`ResNetStep` holding its layers, each ``layerN`` a
:class:`ResNetStage`): a state_dict of the original (pretrained
weights) loads into the converted model with ``strict=True``, the k_n keeping
their values (a load_state_dict pre-hook, which fills in k_n only for a
state_dict holding none: one with some k_n missing, or taken from an Euler
conversion, is reported by strict loading). A converted model whose structure is
exactly what torchvision's constructor builds (:func:`base_mismatch`) carries
``.spec``, an :class:`lmsearch.ArchSpec` with ``base="torchvision:<name>"``, so
:func:`lmsearch.save_architecture` writes it as arch.json + safetensors and
:func:`lmsearch.load_architecture` rebuilds it from torchvision's constructor
(:func:`build_base`), never from a pickle. A changed one (``maxpool`` replaced,
a ``conv1`` of another stride, an ``fc`` that is not one Linear) converts as
well but has ``.spec = None``: no constructor rebuilds it, so it is saved with
``torch.save(model.state_dict())``, not as an arch.json.

Example:
    >>> import torch, torchvision
    >>> net = torchvision.models.resnet18(num_classes=10).eval()
    >>> lm = to_lm(net)                                  # a copy; k_n = 0
    >>> x = torch.randn(2, 3, 32, 32)
    >>> torch.equal(lm(x), net(x))
    True
    >>> import lmsearch
    >>> lm.spec.base, len(lmsearch.lm_coefficients(lm))  # one k_n per block but the first of each stage
    ('torchvision:resnet18', 4)
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from lmsearch.arch import BASE_SCHEMES, TORCHVISION_BASES, ArchSpec, lm_k_init_range
from lmsearch.nn.noise import StochasticDepth, survival_probability
from lmsearch.nn.schemes import lm_combine, run_steps

__all__ = ["to_lm", "convert_resnet", "build_base", "base_name", "base_mismatch", "adapt_io", "ResNetStep", "ResNetStage", "LAYERS"]

LAYERS = ("layer1", "layer2", "layer3", "layer4")


def _keep_k(model: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook of a converted model: the original torchvision model's state_dict keeps the k_n.

    Fills in the current k_n only when ``state_dict`` holds none of this model's
    k_n and was not saved from a converted model (the metadata of a state_dict
    taken in this process or saved with ``torch.save`` records its blocks as
    :class:`ResNetStep`); any other missing k_n is left to strict loading to report.
    A state_dict without metadata (e.g. read from a safetensors file) and without
    k_n is taken for the original's: an Euler conversion's has the same keys.
    """
    steps = {prefix + name: m for name, m in model.named_modules() if isinstance(m, ResNetStep) and m.k is not None}
    if not steps or any(name + ".k" in state_dict for name in steps):
        return
    metadata = getattr(state_dict, "_metadata", None) or {}
    if any(metadata.get(name, {}).get("version") == ResNetStep._version for name in steps):
        return  # saved from a converted model (an Euler conversion): its missing k_n are an error
    for name, step in steps.items():
        state_dict[name + ".k"] = step.k.detach().clone()


class ResNetStep(nn.Module):
    """A torchvision ``BasicBlock`` or ``Bottleneck`` as a scheme step: ``(x_n, x_{n-1}) -> (x_{n+1}, x_n')``.

    Takes over the block's modules under their names (conv1, bn1, ...,
    downsample); ``k`` is ``None`` for an Euler step. ``stage`` and ``step``
    (0-based) are where :func:`lmsearch.lm_coefficients` places it. It is in the
    block's training mode (eval stays eval).
    """

    # torchvision's blocks are version 1: a state_dict's metadata tells a converted model's from the original's
    _version = 2

    def __init__(self, block: BasicBlock | Bottleneck, *, stage: int, step: int, lm: bool,
                 per_channel: bool = False, k_init: tuple[float, float] = (0.0, 0.0),
                 survival: float = 1.0) -> None:
        super().__init__()
        if type(block) not in (BasicBlock, Bottleneck):
            raise TypeError(f"a torchvision BasicBlock or Bottleneck is needed; got {type(block).__name__}")
        for name, child in block.named_children():
            self.add_module(name, child)
        self.downsample = block.downsample
        self.bottleneck = isinstance(block, Bottleneck)
        self.stage, self.step = stage, step
        self.drop = StochasticDepth(survival) if survival < 1.0 else nn.Identity()
        self.drop.train(block.training)
        self.training = block.training
        if lm and self.downsample is not None:
            raise ValueError("an LM step keeps its shape; a block with a downsample is an Euler step")
        self.k_init = tuple(k_init)
        if lm:
            out = block.bn3 if self.bottleneck else block.bn2
            shape = (1, out.num_features, 1, 1) if per_channel else ()
            self.k = nn.Parameter(torch.empty(shape, dtype=out.weight.dtype, device=out.weight.device))
            self.reset_parameters()
        else:
            self.register_parameter("k", None)

    def reset_parameters(self) -> None:
        """Draw k from U(k_init) (k_init (0, 0): k = 0)."""
        if self.k is not None:
            nn.init.uniform_(self.k, *self.k_init)

    def residual(self, x: Tensor) -> Tensor:
        """f(x_n): the block's convolutions, exactly as torchvision runs them."""
        out = self.relu(self.bn1(self.conv1(x)))
        if self.bottleneck:
            out = self.relu(self.bn2(self.conv2(out)))
            return self.bn3(self.conv3(out))
        return self.bn2(self.conv2(out))

    def forward(self, x: Tensor, x_prev: Tensor) -> tuple[Tensor, Tensor]:
        out = self.drop(self.residual(x))
        if self.k is None:
            base = x if self.downsample is None else self.downsample(x)  # after f, as torchvision does
            out += base
            return self.relu(out), base
        return self.relu(lm_combine(x, x_prev, out, self.k)), x

    def extra_repr(self) -> str:
        kind = "euler" if self.k is None else f"lm, k {tuple(self.k.shape) or 'scalar'}"
        return f"stage={self.stage}, step={self.step}, {kind}"


class ResNetStage(nn.Sequential):
    """One torchvision ``layerN`` of :class:`ResNetStep` s (children ``0``, ``1``, ... as before)."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return run_steps(self, x)


def _block_kind(block: nn.Module) -> str:
    if isinstance(block, ResNetStep):
        return "bottleneck" if block.bottleneck else "basic"
    return "bottleneck" if isinstance(block, Bottleneck) else "basic"


def base_name(model: nn.Module) -> str | None:
    """The :data:`lmsearch.arch.TORCHVISION_BASES` name whose constructor builds ``model``'s structure, or None.

    Compares the block type, blocks per stage and torchvision's ``groups`` /
    ``base_width``; a model with dilated stages is none of them.
    """
    if not isinstance(model, ResNet) or getattr(model, "dilation", 1) != 1:
        return None
    stages = tuple(len(getattr(model, layer)) for layer in LAYERS)
    kind = _block_kind(model.layer1[0])
    groups, width = getattr(model, "groups", 1), getattr(model, "base_width", 64)
    if kind == "bottleneck" and (groups, width) != (1, 64):
        kind = "resnext"
    for name, s in TORCHVISION_BASES.items():
        if s["block"] == kind and s["stages"] == stages and (
                kind != "resnext" or (s["groups"], s["group_width"]) == (groups, width)):
            return name
    return None


def _convert(model: nn.Module, *, scheme: str, low_high: tuple[float, float], per_channel: bool,
             p: float) -> nn.Module:
    """Replace ``model``'s blocks and stages by steps (in place, arguments checked); no ``.spec``."""
    total = sum(len(getattr(model, layer)) for layer in LAYERS)
    index = 0
    for stage, layer in enumerate(LAYERS):
        old = getattr(model, layer)
        steps = []
        for step, block in enumerate(old):
            index += 1
            lm = scheme == "lm" and step > 0 and block.downsample is None
            steps.append(ResNetStep(block, stage=stage, step=step, lm=lm, per_channel=per_channel,
                                    k_init=low_high, survival=survival_probability(index, total, p)))
        new = ResNetStage(*steps)
        new.training = old.training  # the new containers keep the mode of what they replace
        setattr(model, layer, new)
    if scheme == "lm":
        model.register_load_state_dict_pre_hook(_keep_k)
    return model


def _layout(model: nn.Module) -> list[tuple[str, type, str]]:
    """Every module's name, type and hyper-parameters (its ``extra_repr``: kernel, stride, channels, eps ...)."""
    return [(name, type(m), m.extra_repr()) for name, m in model.named_modules()]


def base_mismatch(model: nn.Module, spec: ArchSpec) -> str | None:
    """Where ``model`` differs from the network :func:`build_base` rebuilds from ``spec``; None when nowhere.

    Compares every module's name, type and hyper-parameters with ``build_base(spec)``
    built on the meta device (nothing allocated): a replaced ``maxpool``, a
    ``conv1`` of another stride or an ``fc`` that is not one Linear is a
    mismatch, which a reload from torchvision's constructor would silently lose.
    """
    with torch.device("meta"):
        reference = build_base(spec)
    mine, theirs = _layout(model), _layout(reference)
    for (name, kind, args), (ref_name, ref_kind, ref_args) in zip(mine, theirs, strict=False):  # lengths compared below
        if (name, kind, args) != (ref_name, ref_kind, ref_args):
            return (f"{name or 'the model'} is {kind.__name__}({args}) where {spec.base} has "
                    f"{ref_name or 'the model'}: {ref_kind.__name__}({ref_args})")
    if len(mine) != len(theirs):
        extra = mine[len(theirs):] or theirs[len(mine):]
        which = "the model has" if len(mine) > len(theirs) else f"{spec.base} has"
        return f"{which} the further module {extra[0][0]} ({extra[0][1].__name__})"
    return None


def convert_resnet(model: nn.Module, *, scheme: str = "lm", k_init: str | tuple[float, float] = "zero",
                   per_channel: bool = False, stochastic_depth: float = 0.0, inplace: bool = False) -> nn.Module:
    """A torchvision ResNet with its stages run as ``scheme`` steps (see the module docstring).

    ``scheme="euler"`` keeps torchvision's arithmetic (and adds stochastic
    depth when asked); ``"lm"`` is :func:`to_lm`. Arguments as :func:`to_lm`.
    """
    if not isinstance(model, ResNet):
        raise TypeError(f"a torchvision ResNet (resnet*, resnext*, wide_resnet*) is needed; got {type(model).__name__}")
    if any(isinstance(getattr(model, layer), ResNetStage) for layer in LAYERS):
        raise ValueError("the model is already converted (its stages are ResNetStage)")
    if scheme not in BASE_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(BASE_SCHEMES)}; got {scheme!r}")
    low_high = lm_k_init_range(k_init)
    p = stochastic_depth
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"stochastic_depth (drop probability of the last block) must be in [0, 1); got {p!r}")
    name = base_name(model)
    in_channels = getattr(model.conv1, "in_channels", None)
    num_classes = getattr(model.fc, "out_features", None) if isinstance(model.fc, nn.Linear) else None
    spec = None
    if name is not None and isinstance(in_channels, int) and num_classes is not None:
        spec = ArchSpec(base=name, scheme=scheme, lm_k="channel" if per_channel else "scalar", lm_k_init=low_high,
                        noise="stochastic_depth" if p > 0 else "none", noise_prob=float(p),
                        in_channels=in_channels, num_classes=num_classes)
    if not inplace:
        model = copy.deepcopy(model)
    model = _convert(model, scheme=scheme, low_high=low_high, per_channel=per_channel, p=p)
    # a named base only when torchvision's constructor rebuilds exactly this structure (a changed stem or fc: None)
    model.spec = spec if spec is not None and base_mismatch(model, spec) is None else None
    return model


def to_lm(model: nn.Module, *, k_init: str | tuple[float, float] = "zero", per_channel: bool = False,
          stochastic_depth: float = 0.0, inplace: bool = False) -> nn.Module:
    """The LM-ResNet of a torchvision ResNet-family model, exactly the original at k_n = 0.

    Args:
        model: torchvision's resnet18/34/50/101/152, resnext50_32x4d,
            resnext101_32x8d/64x4d, wide_resnet50_2/101_2 (any
            ``torchvision.models.ResNet`` of BasicBlock or Bottleneck blocks
            converts; those named, with torchvision's structure unchanged but
            for ``fc`` / ``conv1`` as :func:`adapt_io` makes them, have a
            ``.spec`` to save and rebuild with; any other has ``.spec = None``).
            Replace ``fc`` / ``conv1`` first (:func:`adapt_io`) if the task
            needs other classes or channels.
        k_init: ``"zero"`` (default: the converted model computes the original
            bit for bit), ``"paper"`` (U(-0.1, 0), as Lu et al.) or a pair
            ``(low, high)`` of finite numbers (anything else is a ValueError,
            :func:`lmsearch.arch.lm_k_init_range`). Zero is also the default of
            ``lmsearch train torchvision:NAME --lm`` and of a space file with a
            ``base`` and no ``k_init``; an :class:`lmsearch.ArchSpec` without
            ``lm_k_init`` (lmsearch's own LM nets) has the paper's U(-0.1, 0).
        per_channel: one k_n per channel instead of one scalar per block.
        stochastic_depth: drop probability of the last block's increment
            (survival falls linearly over the blocks; 0: no noise). Only f is
            dropped, the LM state mixing stays.
        inplace: convert ``model`` itself instead of a deep copy.

    Returns the converted model (a ``torchvision.models.ResNet``) with one
    learnable ``k`` per LM block (every block but the first of each stage
    and those with a downsample) and ``.spec`` (None when no torchvision
    constructor rebuilds it), in the training mode of ``model`` (an eval-mode
    model converts to an eval-mode model).
    """
    return convert_resnet(model, scheme="lm", k_init=k_init, per_channel=per_channel,
                          stochastic_depth=stochastic_depth, inplace=inplace)


def adapt_io(model: nn.Module, *, in_channels: int | None = None, num_classes: int | None = None) -> nn.Module:
    """Fit a torchvision ResNet's ``conv1`` to ``in_channels`` and ``fc`` to ``num_classes`` (in place).

    A layer that already fits stays. A new ``fc`` is a fresh ``nn.Linear``
    (torchvision's init). A new ``conv1`` keeps kernel 7, stride 2, padding 3:
    for one channel from three its filters are the sum of the RGB filters
    (a grey image then gives what the same grey RGB image gave: pretrained
    filters carry over), otherwise it is freshly initialised as torchvision does.
    """
    conv = model.conv1
    if in_channels is not None and in_channels != conv.in_channels:
        new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False,
                        device=conv.weight.device, dtype=conv.weight.dtype)
        if in_channels == 1:
            with torch.no_grad():
                new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        else:
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        model.conv1 = new
    fc = model.fc
    if num_classes is not None and not isinstance(fc, nn.Linear):
        raise TypeError(f"adapt_io replaces an nn.Linear fc; this model's fc is {type(fc).__name__}")
    if num_classes is not None and num_classes != fc.out_features:
        model.fc = nn.Linear(fc.in_features, num_classes, device=fc.weight.device, dtype=fc.weight.dtype)
    spec = getattr(model, "spec", None)
    if isinstance(spec, ArchSpec):
        fits = isinstance(model.fc, nn.Linear) and isinstance(model.conv1, nn.Conv2d)
        model.spec = spec.replace(in_channels=model.conv1.in_channels, num_classes=model.fc.out_features) \
            if fits else None
    return model


def build_base(spec: ArchSpec) -> nn.Module:
    """The network of a spec with a torchvision ``base``: torchvision's constructor (random init), adapted, converted.

    ``num_classes`` goes to the constructor; ``in_channels`` other than 3
    replaces ``conv1`` (:func:`adapt_io`). Works on the meta device.
    """
    import torchvision.models

    if spec.base is None:
        raise ValueError("build_base needs a spec with a torchvision base")
    constructor = getattr(torchvision.models, spec.base.split(":", 1)[1])
    model = adapt_io(constructor(weights=None, num_classes=spec.num_classes), in_channels=spec.in_channels)
    model = _convert(model, scheme=spec.scheme, low_high=lm_k_init_range(spec.lm_k_init, "lm_k_init"),
                     per_channel=spec.lm_k == "channel", p=spec.noise_prob)
    model.spec = spec
    return model
