"""ArchSpec: the frozen, validated description of one network in the search space.

Depth counts weighted layers on the main path, as the ResNet papers do:
``depth = layers_per_function * sum(stage_functions) + 2`` where a residual
function has 2 layers for ``block="basic"`` and 3 for ``"bottleneck"`` and
``"resnext"`` (the +2 are the stem convolution and the classifier). So a
3-stage CIFAR net with basic blocks has depth 6n+2 and n functions per stage.

How functions become steps depends on the scheme: euler, lm and poly use one
function per step, rk2 two (a Heun step), rk4 four, rev two (the coupled pair
f, g), so the number of functions in every stage must be a multiple of the
scheme's ``functions_per_step``.

**Torchvision bases.** ``base="torchvision:resnet50"`` (any name of
:data:`TORCHVISION_BASES`) describes torchvision's own network, converted
by :func:`lmsearch.nn.torchvision_lm.to_lm` (its module names and weights
unchanged): the structural fields (depth, width, stages, block, groups,
group_width, preact, shortcut, stem) are the base's and are filled in from it.
A given structural value is only checked when it differs from ArchSpec's
default: a value other than the default and the base's is refused, but a
default value cannot be told from an omitted one, so it is replaced
(``ArchSpec(base="torchvision:resnet18", stem="small").stem`` is
``"imagenet"``). scheme (euler or lm), noise (none or
stochastic_depth), noise_prob, lm_k, lm_k_init, in_channels and
num_classes are free.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from lmsearch.nn.registry import get_scheme, scheme_names

__all__ = ["ArchSpec", "BLOCKS", "NOISES", "STEMS", "SHORTCUTS", "LM_K_MODES", "LM_K_INITS", "TORCHVISION_BASES",
           "BASE_SCHEMES", "BASE_NOISES", "BASE_FIELDS", "MAX_ARCH_PARAMS", "layers_per_function", "lm_k_init_range"]

BLOCKS = ("basic", "bottleneck", "resnext")
NOISES = ("none", "stochastic_depth", "shake_shake")
STEMS = ("small", "imagenet")
SHORTCUTS = ("conv", "pad", "preact_conv")
LM_K_MODES = ("scalar", "channel")
MAX_ARCH_PARAMS = 10**9  # per architecture: 4 GB of fp32 weights, before gradients and momentum
_LAYERS_PER_FUNCTION = {"basic": 2, "bottleneck": 3, "resnext": 3}
_DEFAULT_STAGES = {"small": 3, "imagenet": 4}
#: Named k_n initialisations: ``zero`` (an LM net that starts as its Euler net) and the paper's U(-0.1, 0).
LM_K_INITS: dict[str, tuple[float, float]] = {"zero": (0.0, 0.0), "paper": (-0.1, 0.0)}

_BASE_LAYOUT = {"width": 64, "preact": False, "shortcut": "conv", "stem": "imagenet"}


def _tv(block: str, stages: tuple[int, ...], groups: int = 1, group_width: int = 0) -> dict[str, Any]:
    # A wide ResNet is a resnext of one group: its 3x3 has group_width * 2**stage channels.
    depth = _LAYERS_PER_FUNCTION[block] * sum(stages) + 2
    return {**_BASE_LAYOUT, "depth": depth, "stages": stages, "block": block, "groups": groups,
            "group_width": group_width}


#: torchvision constructors lmsearch converts -> the ArchSpec structure they have (torchvision's
#: ``groups`` and ``width_per_group`` are ``groups`` and ``group_width`` here).
TORCHVISION_BASES: dict[str, dict[str, Any]] = {
    "torchvision:resnet18": _tv("basic", (2, 2, 2, 2)),
    "torchvision:resnet34": _tv("basic", (3, 4, 6, 3)),
    "torchvision:resnet50": _tv("bottleneck", (3, 4, 6, 3)),
    "torchvision:resnet101": _tv("bottleneck", (3, 4, 23, 3)),
    "torchvision:resnet152": _tv("bottleneck", (3, 8, 36, 3)),
    "torchvision:resnext50_32x4d": _tv("resnext", (3, 4, 6, 3), 32, 4),
    "torchvision:resnext101_32x8d": _tv("resnext", (3, 4, 23, 3), 32, 8),
    "torchvision:resnext101_64x4d": _tv("resnext", (3, 4, 23, 3), 64, 4),
    "torchvision:wide_resnet50_2": _tv("resnext", (3, 4, 6, 3), 1, 128),
    "torchvision:wide_resnet101_2": _tv("resnext", (3, 4, 23, 3), 1, 128),
}
#: The fields a base sets, and the schemes and noises a base can be converted with.
BASE_FIELDS = ("depth", "width", "stages", "block", "groups", "group_width", "preact", "shortcut", "stem")
BASE_SCHEMES = ("euler", "lm")
BASE_NOISES = ("none", "stochastic_depth")


def lm_k_init_range(value: str | tuple[float, float] | list[float], name: str = "k_init") -> tuple[float, float]:
    """A k_n init as a ``(low, high)`` pair: a name of :data:`LM_K_INITS` or the pair itself.

    The one check of a k_n init (ArchSpec's ``lm_k_init``, :func:`lmsearch.to_lm`'s
    ``k_init``, a space file's ``k_init``): anything but a name or a pair of finite
    numbers with low <= high is a ValueError naming ``name`` and the allowed values.

    Example:
        >>> lm_k_init_range("paper"), lm_k_init_range([0, 0.1])
        ((-0.1, 0.0), (0, 0.1))
        >>> lm_k_init_range(0.1)
        Traceback (most recent call last):
        ...
        ValueError: k_init must be a pair [low, high] with low <= high, both finite, or one of zero, paper; got 0.1
    """
    if isinstance(value, str) and value in LM_K_INITS:
        return LM_K_INITS[value]
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            and value[0] <= value[1]):
        return (value[0], value[1])
    raise ValueError(f"{name} must be a pair [low, high] with low <= high, both finite, or one of "
                     f"{', '.join(LM_K_INITS)}; got {value!r}")


def layers_per_function(block: str) -> int:
    """Weighted layers on the main path of one residual function of ``block``."""
    return _LAYERS_PER_FUNCTION[block]


def _choice(field_name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{field_name} must be one of {', '.join(allowed)}; got {value!r}")


def _int(field_name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field_name} must be an integer >= {minimum}; got {value!r}")


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: numerical scheme x depth x width x block x noise.

    Example:
        >>> spec = ArchSpec(scheme="lm", depth=20, width=16, in_channels=1)
        >>> spec.stage_functions
        (3, 3, 3)
        >>> ArchSpec.from_json(spec.to_json()) == spec
        True

    Fields:
        scheme: a registered numerical scheme (euler, lm, rk2, rk4, poly, rev).
        depth: weighted layers on the main path (see the module docstring).
        width: channels of the first stage; stage i has ``width * 2**i``
            (times 4 at a bottleneck/resnext output).
        stages: residual functions per stage, e.g. ``(3, 4, 6, 3)``; ``None``
            splits the depth evenly over 3 stages (small stem) or 4 (imagenet).
        block: ``basic`` (two 3x3 convs), ``bottleneck`` (1x1, 3x3, 1x1) or
            ``resnext`` (bottleneck with a grouped 3x3 of ``groups * group_width``
            channels in the first stage).
        groups, group_width: ResNeXt cardinality and per-group width.
        preact: pre-activation ordering (BN-ReLU-conv) instead of conv-BN-ReLU.
        shortcut: ``conv`` (1x1 projection), ``pad`` (He et al.'s option A:
            subsample and zero-pad channels; basic blocks only) or ``preact_conv``
            (BN-ReLU-1x1 conv with its own batch norm, applied to the step's input:
            the LM-ResNet authors' projection; pre-activation nets only).
        noise: ``none``, ``stochastic_depth`` or ``shake_shake``.
        noise_prob: stochastic depth's drop probability of the last step,
            ``1 - p_L``; survival falls linearly from 1 to ``p_L`` over the
            steps. Must be 0 unless noise is stochastic_depth.
        lm_k: ``scalar`` (one k_n per step) or ``channel`` (one per channel).
        lm_k_init: uniform init range of k_n, ``(low, high)`` or a name of
            :data:`LM_K_INITS` (stored as its pair). The default is the
            authors' U(-0.1, 0) (``paper``), which lmsearch's own LM nets have
            always used; :func:`lmsearch.to_lm`, ``lmsearch train --lm`` and a
            space file on a ``base`` default to ``zero`` instead (see
            :mod:`lmsearch.space`).
        in_channels, num_classes: input channels and classifier outputs.
        stem: ``small`` (3x3 conv, 28/32 px images) or ``imagenet`` (7x7/2 conv
            and 3x3/2 max-pool, 224 px).
        base: ``None`` (lmsearch's own network) or a torchvision network of
            :data:`TORCHVISION_BASES`, which sets the structural fields (see
            the module docstring). Left out of :meth:`to_dict` when ``None``.
    """

    scheme: str = "euler"
    depth: int = 20
    width: int = 16
    stages: tuple[int, ...] | None = None
    block: Literal["basic", "bottleneck", "resnext"] = "basic"
    groups: int = 1
    group_width: int = 0
    preact: bool = True
    shortcut: Literal["conv", "pad", "preact_conv"] = "conv"
    noise: Literal["none", "stochastic_depth", "shake_shake"] = "none"
    noise_prob: float = 0.0
    lm_k: Literal["scalar", "channel"] = "scalar"
    lm_k_init: tuple[float, float] = (-0.1, 0.0)
    in_channels: int = 3
    num_classes: int = 10
    stem: Literal["small", "imagenet"] = "small"
    base: str | None = None
    _derived_stages: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Lists arriving from JSON/YAML become tuples so the spec stays hashable.
        if isinstance(self.stages, list):
            object.__setattr__(self, "stages", tuple(self.stages))
        if isinstance(self.lm_k_init, list):
            object.__setattr__(self, "lm_k_init", tuple(self.lm_k_init))
        elif isinstance(self.lm_k_init, str) and self.lm_k_init in LM_K_INITS:  # a name: its pair
            object.__setattr__(self, "lm_k_init", LM_K_INITS[self.lm_k_init])
        if self.base is not None:
            self._take_base_structure()
        object.__setattr__(self, "_derived_stages", self._validate())

    def _take_base_structure(self) -> None:
        """Take the structural fields (:data:`BASE_FIELDS`) from ``base``.

        A given value is checked only when it differs from ArchSpec's default:
        one that is neither the default nor the base's is refused. A value equal
        to the default is indistinguishable from an omitted one (dataclass
        defaults) and is replaced by the base's, even when the base's differs.
        """
        structure = TORCHVISION_BASES.get(self.base)  # type: ignore[arg-type]
        if structure is None:
            raise ValueError(f"base must be one of {', '.join(TORCHVISION_BASES)}; got {self.base!r}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in BASE_FIELDS:
            given, wanted = getattr(self, name), structure[name]
            if given != defaults[name] and given != wanted:
                raise ValueError(f"{name} is set by base {self.base} ({wanted!r}); got {given!r}")
            object.__setattr__(self, name, wanted)
        for name, allowed in (("scheme", BASE_SCHEMES), ("noise", BASE_NOISES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)} with a base ({self.base}); "
                                 f"got {getattr(self, name)!r}")

    # ------------------------------------------------------------------ checks
    def _validate(self) -> tuple[int, ...]:
        _choice("scheme", self.scheme, scheme_names())
        _choice("block", self.block, BLOCKS)
        _choice("noise", self.noise, NOISES)
        _choice("stem", self.stem, STEMS)
        _choice("shortcut", self.shortcut, SHORTCUTS)
        _choice("lm_k", self.lm_k, LM_K_MODES)
        _int("width", self.width, 1)
        _int("in_channels", self.in_channels, 1)
        _int("num_classes", self.num_classes, 1)
        _int("groups", self.groups, 1)
        _int("group_width", self.group_width, 0)
        _int("depth", self.depth, 3)
        if not isinstance(self.preact, bool):
            raise ValueError(f"preact must be true or false; got {self.preact!r}")
        self._validate_block_options()
        self._validate_noise()
        self._validate_lm_options()
        stages = self._validate_depth()
        if self.scheme == "rev" and self.width % 2:
            raise ValueError(f"width must be even for scheme=rev (channels split in two halves); got {self.width}")
        return stages

    def _validate_block_options(self) -> None:
        if self.block == "resnext":
            if self.group_width < 1:
                raise ValueError(f"group_width must be >= 1 for block=resnext; got {self.group_width}")
        elif self.groups != 1 or self.group_width != 0:
            raise ValueError(
                f"groups/group_width are only for block=resnext; got groups={self.groups}, "
                f"group_width={self.group_width} with block={self.block}"
            )
        if self.shortcut == "pad" and self.block != "basic":
            raise ValueError(f"shortcut=pad is only for block=basic; got block={self.block}")
        if self.shortcut == "preact_conv" and not self.preact:
            raise ValueError("shortcut=preact_conv (BN-ReLU-conv) is only for pre-activation nets; got preact=false")

    def _validate_noise(self) -> None:
        p = self.noise_prob
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise ValueError(f"noise_prob must be a number; got {p!r}")
        if self.noise == "stochastic_depth":
            if not 0.0 < p < 1.0:
                raise ValueError(f"noise_prob must be in (0, 1) for noise=stochastic_depth; got {p}")
        elif p != 0.0:
            raise ValueError(f"noise_prob must be 0 unless noise=stochastic_depth; got {p} with noise={self.noise}")

    def _validate_lm_options(self) -> None:
        lm_k_init_range(self.lm_k_init, "lm_k_init")

    def _validate_depth(self) -> tuple[int, ...]:
        layers = layers_per_function(self.block)
        fps = get_scheme(self.scheme).functions_per_step
        unit = layers * fps
        if self.stages is not None:
            if not self.stages or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in self.stages):
                raise ValueError(f"stages must be a non-empty list of integers >= 1; got {self.stages!r}")
            expected = layers * sum(self.stages) + 2
            if self.depth != expected:
                raise ValueError(
                    f"depth must be {expected} for stages={list(self.stages)} with block={self.block} "
                    f"({layers} layers per function + 2); got {self.depth}"
                )
            bad = [n for n in self.stages if n % fps]
            if bad:
                raise ValueError(
                    f"stages must hold a multiple of {fps} functions each for scheme={self.scheme} "
                    f"({fps} functions per step); got {list(self.stages)}"
                )
            return self.stages
        n_stages = _DEFAULT_STAGES[self.stem]
        step = n_stages * unit
        if (self.depth - 2) % step or self.depth <= 2:
            examples = ", ".join(str(step * i + 2) for i in range(1, 5))
            raise ValueError(
                f"depth must be {step}n+2 for block={self.block}, scheme={self.scheme}, {n_stages} stages: "
                f"{examples}, ...; got {self.depth}"
            )
        return ((self.depth - 2) // (n_stages * layers),) * n_stages

    # ------------------------------------------------------------- structure
    @property
    def stage_functions(self) -> tuple[int, ...]:
        """Residual functions in each stage."""
        return self._derived_stages

    @property
    def steps_per_stage(self) -> tuple[int, ...]:
        """Scheme steps in each stage (functions // functions_per_step)."""
        fps = get_scheme(self.scheme).functions_per_step
        return tuple(n // fps for n in self._derived_stages)

    @property
    def lm_steps(self) -> int:
        """Steps with a k_n when ``scheme`` is lm: all but the first step of each stage.

        The first step of a stage (where the shape changes) is an Euler step, so an lm
        net with one step per stage has none and *is* the euler net (:meth:`canonical`).

        Example:
            >>> ArchSpec(scheme="lm", depth=20).lm_steps, ArchSpec(scheme="lm", depth=8).lm_steps
            (6, 0)
        """
        return sum(max(0, n - 1) for n in self.steps_per_stage) if self.scheme == "lm" else 0

    def canonical(self) -> ArchSpec:
        """The same network spelt one way: an lm net without an LM step is the euler net,
        and a net without an LM step has the default ``lm_k`` and ``lm_k_init`` (it has no k_n).

        Such specs build the same modules and compute the same function, so a search
        counts them once and an export names the net by what it is.

        Example:
            >>> ArchSpec(scheme="lm", depth=8, lm_k="channel").canonical() == ArchSpec(scheme="euler", depth=8)
            True
            >>> ArchSpec(scheme="euler", lm_k_init="zero").canonical() == ArchSpec(scheme="euler")
            True
        """
        if self.lm_steps:
            return self
        defaults = {f.name: f.default for f in dataclasses.fields(ArchSpec) if f.name in ("lm_k", "lm_k_init")}
        scheme = "euler" if self.scheme == "lm" else self.scheme
        if scheme == self.scheme and all(getattr(self, k) == v for k, v in defaults.items()):
            return self
        return self.replace(scheme=scheme, **defaults)

    def min_params(self) -> int:
        """A lower bound of the parameter count from arithmetic alone: one 3x3 convolution per residual function.

        Building a network (even on the meta device) costs time and memory in
        proportion to its size; this is what guards against a spec of billions of
        parameters (:data:`MAX_ARCH_PARAMS`) before anything is built.

        Example:
            >>> ArchSpec(scheme="euler", depth=20, width=16).min_params()
            145152
        """
        total = 0
        for stage, (functions, width) in enumerate(zip(self.stage_functions, self.stage_widths, strict=True)):
            inner = self.groups * self.group_width * 2**stage if self.block == "resnext" else width
            if self.scheme == "rev":  # each function of a coupled pair sees half the channels
                inner //= 2
            total += functions * 9 * inner * inner // (self.groups if self.block == "resnext" else 1)
        return total

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Inner (per-function) width of each stage: ``width * 2**i``."""
        return tuple(self.width * 2**i for i in range(len(self._derived_stages)))

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels of the state x_n in each stage (x4 for bottleneck/resnext)."""
        expansion = 1 if self.block == "basic" else 4
        return tuple(w * expansion for w in self.stage_widths)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field (tuples as lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            if f.name == "base" and value is None:
                continue  # the dict of an lmsearch net is what it was before bases existed (checkpoint keys)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        """Build from :meth:`to_dict` output; unknown keys are an error."""
        if not isinstance(data, dict):
            raise ValueError(f"an architecture must be a mapping of fields; got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ArchSpec field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        return cls(**data)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> ArchSpec:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)
