"""Reversible coupling and an autograd Function that recomputes activations instead of storing them.

A coupling step splits the channels of x into halves (u, v) and computes

    u' = u + f(v),   v' = v + g(u')

which is exactly invertible: ``v = v' - g(u')``, ``u = u' - f(v)`` (Gomez et
al. 2017, RevNet). :func:`reversible_sequence` runs a run of such steps under
``no_grad`` and saves only the last output for backward (the memcnn /
RevTorch idea). Backward walks the steps in reverse: it reconstructs each
step's input from its output, re-evaluates f and g with autograd on the
reconstruction and backpropagates through that one step (RevNet's
Algorithm 1: one evaluation of g and one of f per step). So the tensors saved
for backward are one output per sequence, whatever its length.

Exactness: the recomputation sees the same inputs (up to the rounding of the
reconstruction), so gradients equal those of plain autograd. Two pieces of
state are handled so that this holds in training mode too: BatchNorm running
statistics are restored after the recomputation (they are updated once, in
forward), and when a step is stochastic (stochastic depth, shake-shake) the
RNG state before each of its f and g calls is recorded in forward (CPU and the
tensor's device, as ``torch.utils.checkpoint`` does) and replayed in backward,
so the recomputation draws the same masks and alphas. The autocast state of
forward (the tensor's device and the CPU, as ``torch.utils.checkpoint`` keeps
it) is re-entered for the recomputation, so under mixed precision f and g run
in the dtypes they ran in forward whatever the autocast state around backward.
Double backward is not supported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import get_device_states, set_device_states

__all__ = ["Coupling", "couple", "uncouple", "reversible_sequence"]


class Coupling(Protocol):
    """A reversible step: an ``nn.Module`` with the coupled functions ``f`` and ``g`` on half the channels."""

    def f(self, v: Tensor) -> Tensor: ...

    def g(self, u: Tensor) -> Tensor: ...

    def parameters(self) -> Iterator[nn.Parameter]: ...

    def modules(self) -> Iterator[nn.Module]: ...


def couple(step: Coupling, x: Tensor) -> Tensor:
    """``(u, v) -> (u + f(v), v + g(u + f(v)))`` on the channel halves of ``x``."""
    u, v = x.chunk(2, dim=1)
    u = u + step.f(v)
    v = v + step.g(u)
    return torch.cat((u, v), dim=1)


def uncouple(step: Coupling, y: Tensor) -> Tensor:
    """The inverse of :func:`couple`: ``(u', v') -> (u' - f(v), v)`` with ``v = v' - g(u')``."""
    u, v = y.chunk(2, dim=1)
    v = v - step.g(u)
    u = u - step.f(v)
    return torch.cat((u, v), dim=1)


class _RngState:
    """The CPU and device RNG states at one moment, to replay a random computation."""

    def __init__(self, x: Tensor) -> None:
        self.cpu = torch.get_rng_state()
        self.device_type = x.device.type
        self.devices, self.states = get_device_states(x)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        kwargs = {"device_type": self.device_type} if self.devices else {}
        with torch.random.fork_rng(devices=self.devices, **kwargs):
            torch.set_rng_state(self.cpu)
            set_device_states(self.devices, self.states, device_type=self.device_type)
            yield


class _AutocastState:
    """The autocast settings of the tensor's device type and of the CPU at one moment, to re-enter them."""

    def __init__(self, x: Tensor) -> None:
        self.kwargs = {
            device_type: {
                "enabled": torch.is_autocast_enabled(device_type),
                "dtype": torch.get_autocast_dtype(device_type),
                "cache_enabled": torch.is_autocast_cache_enabled(),
            }
            for device_type in dict.fromkeys((x.device.type, "cpu"))
            if torch.amp.is_autocast_available(device_type)
        }

    @contextlib.contextmanager
    def restore(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for device_type, kwargs in self.kwargs.items():
                stack.enter_context(torch.autocast(device_type, **kwargs))
            yield


@contextlib.contextmanager
def _bn_stats_kept(module: nn.Module) -> Iterator[None]:
    """Restore every BatchNorm running statistic of ``module`` on exit (recomputation must not update them)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [[b.clone() for b in m.buffers()] for m in bns]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(bns, saved, strict=True):
                for b, old in zip(m.buffers(), buffers, strict=True):
                    b.copy_(old)


def _stochastic(step: nn.Module) -> bool:
    return bool(getattr(step, "stochastic", False))


class _ReversibleSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, steps: Sequence[Coupling], *params: Tensor) -> Tensor:
        rng: list[tuple[_RngState, _RngState] | None] = []
        for step in steps:
            if _stochastic(step):
                u, v = x.chunk(2, dim=1)
                before_f = _RngState(x)
                u = u + step.f(v)
                before_g = _RngState(x)
                x = torch.cat((u, v + step.g(u)), dim=1)
                rng.append((before_f, before_g))
            else:
                x = couple(step, x)
                rng.append(None)
        ctx.steps, ctx.rng, ctx.autocast = steps, rng, _AutocastState(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (y,) = ctx.saved_tensors
        y = y.detach()
        step_grads: list[list[Tensor | None]] = []
        for step, rng in zip(reversed(ctx.steps), reversed(ctx.rng), strict=True):
            params = [p for p in step.parameters() if p.requires_grad]
            y1, y2 = y.chunk(2, dim=1)
            gy1, gy2 = grad.chunk(2, dim=1)
            replay_f, replay_g = (r.replay() for r in rng) if rng else (contextlib.nullcontext(),) * 2
            with _bn_stats_kept(step):  # BN's backward reads its running stats: restore after the grads
                # Only the recomputation runs in forward's autocast state; the grads below, like
                # plain autograd's backward, run in the state around backward.
                with torch.enable_grad(), ctx.autocast.restore():
                    z1 = y1.detach().requires_grad_()
                    with replay_g:
                        gz = step.g(z1)
                    x2 = (y2 - gz.detach()).requires_grad_()
                    with replay_f:
                        fx = step.f(x2)
                g_z1, *g_params_g = torch.autograd.grad(gz, (z1, *params), gy2, allow_unused=True)
                gx1 = gy1 + g_z1
                g_x2, *g_params_f = torch.autograd.grad(fx, (x2, *params), gx1, allow_unused=True)
            gx2 = gy2 + g_x2
            x1 = y1 - fx.detach()
            y = torch.cat((x1, x2.detach()), dim=1)
            grad = torch.cat((gx1, gx2), dim=1)
            summed = iter([a if b is None else b if a is None else a + b for a, b in zip(g_params_g, g_params_f, strict=True)])
            step_grads.append([next(summed) if p.requires_grad else None for p in step.parameters()])
        flat = [g for grads in reversed(step_grads) for g in grads]
        return (grad, None, *flat)


def reversible_sequence(x: Tensor, steps: Sequence[Coupling]) -> Tensor:
    """Apply the coupling ``steps`` in order to ``x``, saving only the final output for backward.

    Equals ``for s in steps: x = couple(s, x)`` in value and gradients (for
    the input and every parameter of the steps).
    """
    params = [p for step in steps for p in step.parameters()]
    return _ReversibleSequence.apply(x, tuple(steps), *params)
