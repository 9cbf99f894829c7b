"""Stochastic depth and shake-shake: eval deterministic, training stochastic, expectations right."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmsearch.arch import ArchSpec
from lmsearch.nn.network import build_model
from lmsearch.nn.noise import ShakeShake, StochasticDepth, survival_probability
from lmsearch.nn.schemes import LMScheme


def test_survival_falls_linearly_to_p_L() -> None:
    assert [survival_probability(i, 4, 0.5) for i in range(1, 5)] == [0.875, 0.75, 0.625, 0.5]
    with pytest.raises(ValueError, match="step index must be in 1..4"):
        survival_probability(0, 4, 0.5)
    spec = ArchSpec(scheme="lm", depth=20, width=4, noise="stochastic_depth", noise_prob=0.3)
    drops = [m for m in build_model(spec).modules() if isinstance(m, StochasticDepth)]
    assert len(drops) == 9  # one per step, Euler steps included
    assert [d.survival for d in drops] == pytest.approx([1 - 0.3 * n / 9 for n in range(1, 10)], abs=1e-12)
    assert drops[-1].survival == pytest.approx(0.7)


def test_stochastic_depth_module() -> None:
    drop = StochasticDepth(0.25)
    f = torch.randn(40000, 3, 2, 2)
    assert torch.equal(drop.eval()(f), f)  # eval: f unchanged
    out = drop.train()(f)
    kept = (out == f / 0.25).flatten(1).all(1)
    dropped = (out == 0).flatten(1).all(1)
    assert bool((kept ^ dropped).all())  # whole samples kept (scaled by 1/p) or dropped
    n = f.shape[0]
    assert abs(kept.float().mean().item() - 0.25) < 5 * (0.25 * 0.75 / n) ** 0.5
    assert not torch.equal(drop(f), out)  # a fresh mask each call
    with pytest.raises(ValueError, match="survival probability must be in"):
        StochasticDepth(0.0)


def test_stochastic_depth_drops_f_only_in_an_lm_step() -> None:
    spec = ArchSpec(scheme="lm", depth=14, width=4, in_channels=1, noise="stochastic_depth", noise_prob=0.5)
    model = build_model(spec).double().eval()
    step = model.stages[1].steps[1]
    assert isinstance(step, LMScheme)
    p = step.drop.survival
    with torch.no_grad():
        step.k.fill_(0.3)
        n = 20000
        x = torch.randn(1, 8, 4, 4, dtype=torch.float64).expand(n, -1, -1, -1)
        x_prev = torch.randn(1, 8, 4, 4, dtype=torch.float64).expand(n, -1, -1, -1)
        mixed = 0.7 * x + 0.3 * x_prev
        f = step.functions[0](x)
        eval_out, _ = step(x, x_prev)
        torch.testing.assert_close(eval_out, mixed + f)
        step.drop.train()  # only the noise in training mode; BN stays in eval
        out, new_prev = step(x, x_prev)
    assert torch.equal(new_prev, x)
    kept = torch.isclose(out, mixed + f / p, rtol=1e-12, atol=1e-12).flatten(1).all(1)
    dropped = torch.isclose(out, mixed, rtol=1e-12, atol=1e-12).flatten(1).all(1)
    assert bool((kept ^ dropped).all())  # the mixing of states is never dropped
    assert abs(kept.double().mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5
    # E[output] = eval output: the mean over samples approaches it within a few standard errors.
    stderr = f[0].abs() * ((1 - p) / p / n) ** 0.5
    assert bool(((out.mean(0) - eval_out[0]).abs() <= 5 * stderr + 1e-12).all())


@pytest.mark.parametrize("noise", ["stochastic_depth", "shake_shake"])
@pytest.mark.parametrize("scheme", ["euler", "lm", "rev"])
def test_network_eval_deterministic_training_stochastic(noise: str, scheme: str) -> None:
    prob = 0.5 if noise == "stochastic_depth" else 0.0
    spec = ArchSpec(scheme=scheme, depth=26, width=4, in_channels=1, noise=noise, noise_prob=prob)
    model = build_model(spec)
    x = torch.randn(16, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        a = model(x)
        torch.manual_seed(123)
        b = model(x)
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        c, d = model(x), model(x)
    assert not torch.allclose(c, d)
    quiet = build_model(spec.replace(noise="none", noise_prob=0.0)).train()
    with torch.no_grad():
        assert torch.equal(quiet(x), quiet(x))  # the randomness comes from the noise, not from BN


class _Negate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x


def test_shake_shake_coefficients() -> None:
    shake = ShakeShake(nn.Identity(), _Negate())
    n = 20000
    x = torch.ones(n, 1, 1, 1, dtype=torch.float64, requires_grad=True)
    out = shake.train()(x)  # alpha * x - (1 - alpha) * x
    out.sum().backward()  # d/dx = beta - (1 - beta)
    alpha = ((out.detach() + 1) / 2).flatten()
    beta = ((x.grad + 1) / 2).flatten()
    for c in (alpha, beta):  # U(0, 1), one per sample
        assert bool(((c > 0) & (c < 1)).all())
        assert abs(c.mean().item() - 0.5) < 0.01 and abs(c.var().item() - 1 / 12) < 0.005
        assert c.unique().numel() > n * 0.99
    corr = torch.corrcoef(torch.stack([alpha, beta]))[0, 1].item()
    assert abs(corr) < 0.05  # beta is independent of alpha
    assert abs(out.mean().item()) < 0.02  # E[alpha a + (1 - alpha) b] = (a + b) / 2 = 0 here
    with torch.no_grad():
        y = torch.randn(5, 2, 3, 3)
        assert torch.equal(shake.eval()(y), torch.zeros_like(y))  # 0.5 * y + 0.5 * (-y)


def test_shake_shake_in_the_network_has_two_branches() -> None:
    spec = ArchSpec(scheme="lm", depth=14, width=4, in_channels=1)
    plain = build_model(spec)
    shaken = build_model(spec.replace(noise="shake_shake"))
    shakes = [m for m in shaken.modules() if isinstance(m, ShakeShake)]
    assert len(shakes) == 6  # one per residual function
    n_plain = sum(p.numel() for p in plain.parameters())
    n_shaken = sum(p.numel() for p in shaken.parameters())
    n_functions = sum(p.numel() for n, p in plain.named_parameters() if ".functions." in n)
    assert n_shaken == n_plain + n_functions
    branch = shakes[0].branches
    x = torch.randn(2, 4, 8, 8)
    shaken.eval()
    with torch.no_grad():
        torch.testing.assert_close(shakes[0](x), 0.5 * (branch[0](x) + branch[1](x)))
