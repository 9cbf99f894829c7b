"""Numerical schemes: one ``nn.Module`` class per scheme, each computing one step of a stage.

A step takes the state and the previous state, ``(x_n, x_{n-1})``, and returns
``(x_{n+1}, x_n')`` where ``x_n'`` is the (projected) input of the step, the
"previous state" of the next step. A :class:`Stage` threads that pair through
its steps starting from ``x_{-1} = x_0``; only LM reads it. Semantics (the
contract tests/test_schemes.py checks; docs/ARCHITECTURE.md), with P the projection shortcut of a step that changes shape
(identity otherwise), ``D`` the stochastic-depth drop of the increment
(identity without that noise) and ``s`` the post-step ReLU of
post-activation nets (identity for pre-activation nets):

========  ============================================================  =============
scheme    one step                                                      functions/step
========  ============================================================  =============
euler     ``s(P x + D f(x))``                                           1
lm        ``s((1 - k) x_n + k x_{n-1} + D f(x_n))``; Euler at the        1
          first step of a stage and at a shape change
rk2       Heun: ``a = f(x)``, ``b = g(P x + a)``, ``s(P x + D (a + b)/2)``  2
rk4       ``k1 = f1(x)``, ``k2 = f2(P x + k1/2)``, ``k3 = f3(P x + k2/2)``,  4
          ``k4 = f4(P x + k3)``, ``s(P x + D (k1 + 2 k2 + 2 k3 + k4)/6)``
poly      ``s(x + D (f(x) + f(f(x))))``; Euler at a shape change          1
rev       ``u' = P u + D f(v)``, ``v' = P v + D g(u')`` (no ``s``)       2
========  ============================================================  =============

**Depth to steps.** Depth counts weighted layers (:mod:`lmsearch.arch`): a
stage with n residual functions has ``n // functions_per_step`` steps. So a
ResNet-56 (3 stages x 9 basic functions) is 9 Euler/LM/poly steps per stage,
but an rk2 or rev net of depth 56 is invalid (9 is odd) and rk2/rev at depth
110 are 9 steps of two functions each per stage; rk4 needs 4 | n. Every step
uses distinct functions (poly applies its one function twice), so for euler,
lm, rk2, rk4 and poly the parameters are set by depth and width (LM adds one
k per LM step); rev's functions act on half the channels, so a rev net has
about a quarter of the convolution weights of the Euler net of equal depth
and width.

**Shape changes** (the first step of every stage after the first, and of the
first stage when its channels differ from the stem's): the first function
takes the stride and the channel change, the other functions work at the new
shape on ``P x``-based states. LM and poly fall back to an Euler step; rev
uses a coupled step with projections of both halves that is not invertible
(it runs on plain autograd).

**Post-activation** nets (``preact=False``, He et al. 2016a) apply ReLU to
each step's output, after the combination. Rev never does (it would break
invertibility); its post-activation functions end in BN.

**Noise.** Stochastic depth scales the whole increment of a step (for rev,
each of f and g) by the per-sample ``m / p_n``; shake-shake replaces each
residual function by two shaken branches (:mod:`lmsearch.nn.noise`).

**Adding a scheme** is one subclass of :class:`Scheme` decorated with
:func:`register_scheme`, setting ``name`` and ``functions_per_step`` and
implementing ``forward``; override :meth:`Scheme.build` to choose its
functions/shortcut (or to fall back to another scheme) and
:meth:`Scheme.make_stage` to run a stage differently (as rev does).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from lmsearch.nn.blocks import function_width, projection, residual_function
from lmsearch.nn.noise import ShakeShake, StochasticDepth, survival_probability
from lmsearch.nn.registry import register_scheme
from lmsearch.nn.reversible import couple, reversible_sequence, uncouple

if TYPE_CHECKING:
    from lmsearch.arch import ArchSpec

__all__ = [
    "StepContext", "Scheme", "Stage", "ReversibleStage",
    "EulerScheme", "LMScheme", "RK2Scheme", "RK4Scheme", "PolyScheme", "RevScheme", "lm_combine", "run_steps",
]


@dataclass(frozen=True)
class StepContext:
    """Where a step sits in the network and how to build its parts.

    Attributes:
        spec: the network's ArchSpec.
        stage: stage index (0-based).
        step: step index within the stage (0-based).
        index: step index over the whole net (1-based; stochastic depth's l).
        total: steps in the whole net (stochastic depth's L).
        in_channels, out_channels, stride: the shape change of the step.
    """

    spec: ArchSpec
    stage: int
    step: int
    index: int
    total: int
    in_channels: int
    out_channels: int
    stride: int = 1

    @property
    def changes_shape(self) -> bool:
        return self.stride != 1 or self.in_channels != self.out_channels

    def function(self, in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
        """A residual function of the spec's block (two shaken branches under shake-shake)."""
        spec = self.spec

        def make() -> nn.Module:
            return residual_function(
                spec.block, in_channels, out_channels, inner=function_width(spec, self.stage, out_channels),
                stride=stride, groups=spec.groups, preact=spec.preact,
            )

        return ShakeShake(make(), make()) if spec.noise == "shake_shake" else make()

    def projection(self, in_channels: int, out_channels: int) -> nn.Module | None:
        """The spec's shortcut from ``in_channels`` to ``out_channels`` at this step's stride (None: identity)."""
        return projection(self.spec.shortcut, in_channels, out_channels, self.stride, self.spec.preact)

    def drop(self) -> nn.Module:
        """Stochastic depth with this step's survival p_l, or identity."""
        if self.spec.noise != "stochastic_depth":
            return nn.Identity()
        return StochasticDepth(survival_probability(self.index, self.total, self.spec.noise_prob))

    def activation(self) -> nn.Module:
        """The post-step ReLU of post-activation nets, identity for pre-activation ones."""
        return nn.Identity() if self.spec.preact else nn.ReLU(inplace=True)


class Scheme(nn.Module):
    """Base class of a scheme step: ``forward(x, x_prev) -> (x_next, x_base)``.

    Holds ``functions`` (a ModuleList), ``shortcut`` (projection or None),
    ``drop`` (stochastic depth or identity) and ``act`` (post-step ReLU or
    identity); ``stage`` and ``step`` record its position.
    """

    name: ClassVar[str]
    functions_per_step: ClassVar[int]

    def __init__(self, functions: Sequence[nn.Module], ctx: StepContext, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.stage, self.step = ctx.stage, ctx.step
        self.functions = nn.ModuleList(functions)
        self.shortcut = shortcut
        self.drop = ctx.drop()
        self.act = ctx.activation()
        self._noisy = ctx.spec.noise != "none"

    @classmethod
    def build(cls, ctx: StepContext) -> Scheme:
        """The step at ``ctx``: the first function strided/widening, the others at the output shape."""
        first = ctx.function(ctx.in_channels, ctx.out_channels, ctx.stride)
        rest = [ctx.function(ctx.out_channels, ctx.out_channels) for _ in range(cls.functions_per_step - 1)]
        return cls([first, *rest], ctx, ctx.projection(ctx.in_channels, ctx.out_channels))

    @classmethod
    def make_stage(cls, steps: Sequence[Scheme]) -> nn.Module:
        """The module running one stage of ``steps`` (default: :class:`Stage`)."""
        return Stage(steps)

    @property
    def stochastic(self) -> bool:
        """Whether this step draws random numbers now (noise in training mode)."""
        return self._noisy and self.training

    def base(self, x: Tensor) -> Tensor:
        """P x: the projected state (x itself when the shape holds)."""
        return x if self.shortcut is None else self.shortcut(x)

    def forward(self, x: Tensor, x_prev: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"stage={self.stage}, step={self.step}"


class Stage(nn.Module):
    """Run the steps of one stage, threading ``(x_n, x_{n-1})`` with ``x_{-1} = x_0``."""

    def __init__(self, steps: Sequence[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x: Tensor) -> Tensor:
        return run_steps(self.steps, x)


def run_steps(steps: Iterable[nn.Module], x: Tensor) -> Tensor:
    """Thread ``(x_n, x_{n-1})`` through ``steps`` from ``x_{-1} = x_0``; the last state."""
    x_prev = x
    for step in steps:
        x, x_prev = step(x, x_prev)
    return x


@register_scheme
class EulerScheme(Scheme):
    """Forward Euler (ResNet): ``x_{n+1} = P x_n + f(x_n)``."""

    name = "euler"
    functions_per_step = 1

    def forward(self, x: Tensor, x_prev: Tensor) -> tuple[Tensor, Tensor]:
        base = self.base(x)
        return self.act(base + self.drop(self.functions[0](x))), base


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum(a * b)``, as one BLAS ``vdot`` pass when both are float32/64 and laid out alike."""
    if a.dtype == b.dtype and a.dtype in (torch.float32, torch.float64):
        if a.is_contiguous() and b.is_contiguous():
            return torch.vdot(a.view(-1), b.view(-1))
        cl = torch.channels_last
        if a.dim() == 4 and a.is_contiguous(memory_format=cl) and b.is_contiguous(memory_format=cl):
            return torch.vdot(a.permute(0, 2, 3, 1).reshape(-1), b.permute(0, 2, 3, 1).reshape(-1))
    return torch.sum(a * b)


class _LMCombine(torch.autograd.Function):
    """``lerp(x, x_prev, k) + f`` for a scalar k with a lean backward.

    Autograd's own ``lerp`` backward for a 0-dim weight materialises the
    broadcast product and reduces it in several kernels; here the gradients
    are ``g (1 - k)``, ``g k``, ``g`` and ``<g, x_prev> - <g, x>`` (two vdots,
    no temporaries: on a CPU each new large tensor costs page faults), which
    keeps an LM step within a few percent of an Euler step.
    """

    @staticmethod
    def forward(ctx, x: Tensor, x_prev: Tensor, f: Tensor, k: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, x_prev, k)
        mixed = torch.lerp(x, x_prev, k)  # (1 - k) x + k x_prev in one kernel
        return mixed.add_(f) if f.dtype == mixed.dtype else mixed + f

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        x, x_prev, k = ctx.saved_tensors
        g_k = _dot(grad, x_prev) - _dot(grad, x) if ctx.needs_input_grad[3] else None  # reads only, no temporaries
        return grad * (1 - k), grad * k, grad, g_k


def lm_combine(x: Tensor, x_prev: Tensor, f: Tensor, k: Tensor) -> Tensor:
    """``(1 - k) x + k x_prev + f``: one lerp and one in-place add (k = 0 gives exactly ``x + f``)."""
    k = k.to(x.dtype)
    x_prev = x_prev.to(x.dtype)
    if k.dim() == 0:
        return _LMCombine.apply(x, x_prev, f, k)
    mixed = torch.lerp(x, x_prev, k)
    return mixed.add_(f) if f.dtype == mixed.dtype else mixed + f


@register_scheme
class LMScheme(Scheme):
    """Linear two-step (LM-ResNet): ``x_{n+1} = (1 - k_n) x_n + k_n x_{n-1} + f(x_n)``.

    ``k`` is one learnable scalar (``lm_k="scalar"``) or one per channel,
    initialised U(``lm_k_init``). The combination is one ``torch.lerp`` plus an
    in-place add (:func:`lm_combine`), so k_n = 0 gives exactly the Euler
    step's numbers.
    The first step of a stage and a shape-changing step are
    :class:`EulerScheme` steps (no k): :meth:`build` returns one.
    """

    name = "lm"
    functions_per_step = 1

    def __init__(self, functions: Sequence[nn.Module], ctx: StepContext, shortcut: nn.Module | None = None) -> None:
        super().__init__(functions, ctx, shortcut)
        if shortcut is not None:
            raise ValueError("an LM step keeps its shape; a shape-changing step is an Euler step")
        shape = () if ctx.spec.lm_k == "scalar" else (1, ctx.out_channels, 1, 1)
        self.k = nn.Parameter(torch.empty(shape))
        self.k_init = tuple(ctx.spec.lm_k_init)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw k from U(lm_k_init)."""
        nn.init.uniform_(self.k, *self.k_init)

    @classmethod
    def build(cls, ctx: StepContext) -> Scheme:
        if ctx.step == 0 or ctx.changes_shape:
            return EulerScheme.build(ctx)
        return super().build(ctx)

    def forward(self, x: Tensor, x_prev: Tensor) -> tuple[Tensor, Tensor]:
        return self.act(lm_combine(x, x_prev, self.drop(self.functions[0](x)), self.k)), x


@register_scheme
class RK2Scheme(Scheme):
    """Heun's method from two distinct functions: ``x + (a + b)/2``, ``a = f(x)``, ``b = g(x + a)``."""

    name = "rk2"
    functions_per_step = 2

    def forward(self, x: Tensor, x_prev: Tensor) -> tuple[Tensor, Tensor]:
        f, g = self.functions
        base = self.base(x)
        a = f(x)
        b = g(base + a)
        return self.act(base + self.drop((a + b) * 0.5)), base


@register_scheme
class RK4Scheme(Scheme):
    """Classic four-stage Runge-Kutta from four distinct functions (step size 1 absorbed in f)."""

    name = "rk4"
    functions_per_step = 4

    def forward(self, x: Tensor, x_prev: Tensor) -> tuple[Tensor, Tensor]:
        f1, f2, f3, f4 = self.functions
        base = self.base(x)
        k1 = f1(x)
        k2 = f2(base + 0.5 * k1)
        k3 = f3(base + 0.5 * k2)
        k4 = f4(base + k3)
        increment = (k1 + 2.0 * (k2 + k3) + k4) / 6.0
        return self.act(base + self.drop(increment)), base


@register_scheme
class PolyScheme(Scheme):
    """PolyNet poly-2: ``x + f(x) + f(f(x))``; a shape-changing step is an Euler step.

    Both applications of f share its weights, but each has its own batch
    normalisation (``again`` is f with its own batch-norm layers): one set of
    running statistics fed both x and f(x) would average two different
    distributions and break evaluation (measured: 26% val accuracy in eval
    mode vs 56% with batch statistics, where Euler had 51% vs 54%).
    """

    name = "poly"
    functions_per_step = 1

    @classmethod
    def build(cls, ctx: StepContext) -> Scheme:
        if ctx.changes_shape:
            return EulerScheme.build(ctx)
        return super().build(ctx)

    def __init__(self, functions: Sequence[nn.Module], ctx: StepContext, shortcut: nn.Module | None = None) -> None:
        super().__init__(functions, ctx, shortcut)
        self.again = _same_weights_own_norms(self.functions[0])

    def forward(self, x: Tensor, x_prev: Tensor) -> tuple[Tensor, Tensor]:
        fx = self.functions[0](x)
        return self.act(x + self.drop(fx + self.again(fx))), x


def _same_weights_own_norms(f: nn.Module) -> nn.Module:
    """A copy of ``f`` whose parameters are ``f``'s own tensors, except its batch-norm layers'."""
    twin = copy.deepcopy(f)
    for mod, src in zip(twin.modules(), f.modules(), strict=True):
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            continue
        for name, _ in list(mod.named_parameters(recurse=False)):
            setattr(mod, name, getattr(src, name))
    return twin


@register_scheme
class RevScheme(Scheme):
    """RevNet coupling on channel halves: ``u' = u + f(v)``, ``v' = v + g(u')``.

    f and g work on half the channels. A shape-changing step projects both
    halves, ``u' = P_u u + f(v)``, ``v' = P_v v + g(u')``, and is not
    invertible. A stage runs its invertible steps through
    :func:`lmsearch.nn.reversible.reversible_sequence` (:class:`ReversibleStage`).
    """

    name = "rev"
    functions_per_step = 2

    @classmethod
    def build(cls, ctx: StepContext) -> Scheme:
        cin, cout = ctx.in_channels // 2, ctx.out_channels // 2
        functions = [ctx.function(cin, cout, ctx.stride), ctx.function(cout, cout)]
        shortcut = None
        if ctx.changes_shape:
            shortcut = nn.ModuleList([ctx.projection(cin, cout), ctx.projection(cin, cout)])
        return cls(functions, ctx, shortcut)

    def __init__(self, functions: Sequence[nn.Module], ctx: StepContext, shortcut: nn.Module | None = None) -> None:
        super().__init__(functions, ctx, shortcut)
        self.act = nn.Identity()

    @classmethod
    def make_stage(cls, steps: Sequence[Scheme]) -> nn.Module:
        return ReversibleStage(steps)

    @property
    def invertible(self) -> bool:
        return self.shortcut is None

    def f(self, v: Tensor) -> Tensor:
        return self.drop(self.functions[0](v))

    def g(self, u: Tensor) -> Tensor:
        return self.drop(self.functions[1](u))

    def forward(self, x: Tensor, x_prev: Tensor) -> tuple[Tensor, Tensor]:
        if self.shortcut is None:
            return couple(self, x), x
        u, v = x.chunk(2, dim=1)
        u = self.shortcut[0](u) + self.f(v)
        v = self.shortcut[1](v) + self.g(u)
        return torch.cat((u, v), dim=1), x

    def inverse(self, y: Tensor) -> Tensor:
        """The step's input from its output (invertible steps only)."""
        if not self.invertible:
            raise ValueError("a shape-changing rev step is not invertible")
        return uncouple(self, y)


class ReversibleStage(Stage):
    """A stage of rev steps: runs of invertible steps go through :func:`reversible_sequence`.

    With ``memory_saving=False``, or when autograd is off, every step runs on
    plain autograd (the reference the memory-saving path must match).
    """

    def __init__(self, steps: Sequence[RevScheme], memory_saving: bool = True) -> None:
        super().__init__(steps)
        self.memory_saving = memory_saving
        runs: list[tuple[bool, list[int]]] = []
        for i, step in enumerate(steps):
            if runs and runs[-1][0] == step.invertible:
                runs[-1][1].append(i)
            else:
                runs.append((step.invertible, [i]))
        self._runs = [(inv, tuple(idx)) for inv, idx in runs]

    def forward(self, x: Tensor) -> Tensor:
        for invertible, indices in self._runs:
            run = [self.steps[i] for i in indices]
            if invertible and self.memory_saving and torch.is_grad_enabled():
                x = reversible_sequence(x, run)
            else:
                for step in run:
                    x, _ = step(x, x)
        return x

    def extra_repr(self) -> str:
        return f"memory_saving={self.memory_saving}"
