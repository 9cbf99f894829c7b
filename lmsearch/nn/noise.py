"""Noise terms of the SDE reading of a residual network: stochastic depth and shake-shake.

Both run on any device (random numbers come from the tensor's own device, no
``.cuda()``) and are deterministic in eval mode.

**Stochastic depth** (Huang et al. 2016) drops the residual increment f of a
step for a whole sample: in training the step uses ``f * m / p_n`` with
``m ~ Bernoulli(p_n)`` per sample; in eval it uses f unchanged. This is the
"inverted" convention of current libraries (torchvision's ``StochasticDepth``,
timm's ``DropPath``, which this module uses); the paper instead multiplies f by
p_n at test time. Both have the same expectation, ``E[f m / p_n] = f``; the
inverted form keeps the eval network exactly the trained ResNet. Only f is
dropped: the state mixing of a scheme (LM's ``(1 - k) x_n + k x_{n-1}``, the
projection shortcut) stays. Survival falls linearly over the L steps of the
net (Huang et al.'s linear decay rule): ``p_l = 1 - (l / L) (1 - p_L)``,
l = 1..L, so p_0 = 1 at the input and ``p_L = 1 - spec.noise_prob`` at the
last step.

**Shake-shake** (Gastaldi 2017) makes a residual function of two branches:
``alpha a + (1 - alpha) b`` forward with ``alpha ~ U(0, 1)`` per sample, while
the backward pass scales the gradients by an independent ``beta ~ U(0, 1)``
(drawn when the backward runs) and ``1 - beta``; in eval both are 0.5.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import stochastic_depth

__all__ = ["survival_probability", "StochasticDepth", "ShakeShake", "shake"]


def survival_probability(index: int, total: int, drop_last: float) -> float:
    """Survival p_l of step ``index`` (1-based) of ``total``: ``1 - index / total * drop_last``."""
    if not 1 <= index <= total:
        raise ValueError(f"step index must be in 1..{total}; got {index}")
    return 1.0 - index / total * drop_last


class StochasticDepth(nn.Module):
    """Drop a residual increment per sample with probability ``1 - survival`` (training only).

    Training: ``f * m / survival`` with ``m ~ Bernoulli(survival)`` of shape
    (batch, 1, 1, 1). Eval: ``f``.
    """

    def __init__(self, survival: float) -> None:
        super().__init__()
        if not 0.0 < survival <= 1.0:
            raise ValueError(f"survival probability must be in (0, 1]; got {survival}")
        self.survival = survival

    def forward(self, f: Tensor) -> Tensor:
        return stochastic_depth(f, 1.0 - self.survival, "row", self.training)

    def extra_repr(self) -> str:
        return f"survival={self.survival:.4g}"


def _per_sample(x: Tensor) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (x.dim() - 1)


class _Shake(torch.autograd.Function):
    """``alpha a + (1 - alpha) b`` forward; gradients ``beta g`` and ``(1 - beta) g``, beta drawn in backward."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, alpha: Tensor) -> Tensor:
        ctx.shape = alpha.shape
        return torch.lerp(b, a, alpha)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        beta = torch.rand(ctx.shape, dtype=grad.dtype, device=grad.device)
        return grad * beta, grad - grad * beta, None


def shake(a: Tensor, b: Tensor, alpha: Tensor) -> Tensor:
    """``alpha a + (1 - alpha) b`` with an independent U(0, 1) per-sample ``beta`` in backward."""
    return _Shake.apply(a, b, alpha)


class ShakeShake(nn.Module):
    """A residual function made of two branches mixed by shake-shake (0.5/0.5 in eval)."""

    def __init__(self, branch1: nn.Module, branch2: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList([branch1, branch2])

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.branches[0](x), self.branches[1](x)
        if not self.training:
            return (a + b) * 0.5
        alpha = torch.rand(_per_sample(a), dtype=a.dtype, device=a.device)
        return shake(a, b, alpha)
