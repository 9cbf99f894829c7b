"""rev: exact inverse, gradients equal to plain autograd, saved-tensor bytes flat in depth."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.graph import saved_tensors_hooks

from lmsearch.arch import ArchSpec
from lmsearch.nn.network import build_model
from lmsearch.nn.reversible import couple, reversible_sequence, uncouple
from lmsearch.nn.schemes import ReversibleStage, RevScheme


def _rev(depth: int = 26, **kwargs) -> nn.Module:
    return build_model(ArchSpec(scheme="rev", depth=depth, width=4, in_channels=2, **kwargs))


def _set_memory_saving(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, ReversibleStage):
            m.memory_saving = on


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("preact", [True, False])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.float64, 1e-13)], ids=["f32", "f64"])
def test_inverse_reconstructs_input(training: bool, preact: bool, dtype: torch.dtype, tol: float) -> None:
    model = _rev(38, preact=preact).to(dtype).train(training)
    steps = [s for stage in model.stages for s in stage.steps if s.invertible]
    assert len(steps) == 7  # 3 stages x 3 steps; the first of stages 1 and 2 changes shape
    for step in steps:
        c = step.functions[0][0].num_features if preact else step.functions[0][0].in_channels
        x = torch.randn(4, 2 * c, 8, 8, dtype=dtype)
        with torch.no_grad():
            y, _ = step(x, x)
            assert (y - x).abs().max() > 1e-2  # the step does something
            # float32 cannot do better than a few ulps of the largest value that went through the sums
            scale = max(1.0, float(y.abs().max())) if dtype == torch.float32 else 1.0
            assert (step.inverse(y) - x).abs().max() <= tol * scale


def test_couple_and_uncouple_are_inverse_for_any_functions() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

        def f(self, v: Tensor) -> Tensor:
            return torch.tanh(self.a(v)) * 5

        def g(self, u: Tensor) -> Tensor:
            return torch.sin(self.b(u)) * 5

    pair = Pair().double()
    x = torch.randn(7, 6, dtype=torch.float64)
    with torch.no_grad():
        y = couple(pair, x)
        u, v = x[:, :3], x[:, 3:]
        u2 = u + pair.f(v)
        torch.testing.assert_close(y, torch.cat([u2, v + pair.g(u2)], 1), rtol=0, atol=0)
        torch.testing.assert_close(uncouple(pair, y), x, rtol=1e-14, atol=1e-14)


def test_shape_changing_step_is_not_invertible() -> None:
    step = _rev().stages[1].steps[0]
    assert isinstance(step, RevScheme) and not step.invertible
    with pytest.raises(ValueError, match="not invertible"):
        step.inverse(torch.randn(1, 8, 4, 4))


def _grads(model: nn.Module, x: Tensor, seed: int) -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return out.detach(), x.grad, grads, buffers


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(preact=False, shortcut="pad"), dict(noise="stochastic_depth", noise_prob=0.5),
     dict(noise="shake_shake"), dict(block="bottleneck", depth=38)],
    ids=["preact", "postact-pad", "stochastic-depth", "shake-shake", "bottleneck"],
)
def test_gradients_equal_plain_autograd(kwargs: dict) -> None:
    memory_free = _rev(**kwargs).double().train()
    plain = copy.deepcopy(memory_free)
    _set_memory_saving(plain, False)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    out_m, gx_m, g_m, buf_m = _grads(memory_free, x, seed=5)
    out_p, gx_p, g_p, buf_p = _grads(plain, x, seed=5)
    torch.testing.assert_close(out_m, out_p, rtol=0, atol=0)  # same forward arithmetic
    torch.testing.assert_close(gx_m, gx_p, rtol=1e-10, atol=1e-12)
    assert g_m.keys() == g_p.keys() and len(g_m) > 20
    for name in g_m:
        torch.testing.assert_close(g_m[name], g_p[name], rtol=1e-10, atol=1e-12, msg=name)
    for name in buf_m:  # BN running stats updated once, as by plain autograd
        torch.testing.assert_close(buf_m[name], buf_p[name], rtol=0, atol=0, msg=name)


def test_reversible_sequence_is_used_and_matches_direct_steps() -> None:
    model = _rev(noise="none").double().eval()
    stage = model.stages[0]
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    y = reversible_sequence(x, list(stage.steps))
    assert type(y.grad_fn).__name__ == "_ReversibleSequenceBackward"
    direct = x
    for step in stage.steps:
        direct = couple(step, direct)
    torch.testing.assert_close(y, direct, rtol=0, atol=0)


def _saved_bytes(model: nn.Module, x: Tensor) -> int:
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return total


def test_saved_bytes_flat_in_depth_for_rev_but_not_for_euler() -> None:
    x = torch.randn(8, 2, 16, 16)
    depths = (26, 50, 74)  # 2, 4, 6 steps per stage
    rev = [_saved_bytes(_rev(d).train(), x) for d in depths]
    euler = [_saved_bytes(build_model(ArchSpec(depth=d, width=4, in_channels=2)).train(), x) for d in depths]
    assert rev[0] == rev[1] == rev[2] > 0
    assert euler[0] < euler[1] < euler[2]
    assert rev[2] < 0.25 * euler[2]
    plain = _rev(50).train()
    _set_memory_saving(plain, False)
    assert _saved_bytes(plain, x) > 3 * rev[2]  # the flat curve comes from the Function, not from the net
