"""Scheme semantics (lmsearch.nn.schemes' docstring) against references written out from the formulas.

The references recompute the forward pass from the model's own submodules
(stem, residual functions, shortcuts, k, head) by the scheme formulas; they
never call a scheme's ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from lmsearch.arch import ArchSpec
from lmsearch.nn import registry
from lmsearch.nn.network import build_model
from lmsearch.nn.schemes import EulerScheme, LMScheme, PolyScheme, Scheme, StepContext, lm_combine


def _randomise(model: nn.Module, k_range: tuple[float, float] = (-0.6, 0.6)) -> nn.Module:
    """Non-trivial BN statistics/affine and LM coefficients, so no term of a formula can hide."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        for name, p in model.named_parameters():
            if name.endswith(".k"):
                p.uniform_(*k_range)
    return model


def _identity(t: Tensor) -> Tensor:
    return t


def _reference(model: nn.Module, x: Tensor) -> Tensor:
    """The network's output computed from its parts by the schemes' formulas."""
    spec = model.spec
    act: Callable[[Tensor], Tensor] = _identity if spec.preact else torch.relu
    h = model.stem(x)
    for stage in model.stages:
        prev = h
        for step in stage.steps:
            fs = list(step.functions)
            proj = step.shortcut if step.shortcut is not None and spec.scheme != "rev" else _identity
            base = proj(h)
            if spec.scheme == "euler" or (spec.scheme in ("lm", "poly") and type(step) is EulerScheme):
                new, new_prev = act(base + fs[0](h)), base
            elif spec.scheme == "lm":
                k = step.k
                new, new_prev = act((1 - k) * h + k * prev + fs[0](h)), h
            elif spec.scheme == "poly":
                f, f_again = fs[0], step.again  # the same weights, its own batch norms
                new, new_prev = act(h + f(h) + f_again(f(h))), h
            elif spec.scheme == "rk2":
                f, g = fs
                a = f(h)
                b = g(base + a)
                new, new_prev = act(base + (a + b) / 2), base
            elif spec.scheme == "rk4":
                f1, f2, f3, f4 = fs
                k1 = f1(h)
                k2 = f2(base + k1 / 2)
                k3 = f3(base + k2 / 2)
                k4 = f4(base + k3)
                new, new_prev = act(base + (k1 + 2 * k2 + 2 * k3 + k4) / 6), base
            elif spec.scheme == "rev":
                f, g = fs
                c = h.shape[1] // 2
                u, v = h[:, :c], h[:, c:]
                pu, pv = (step.shortcut[0], step.shortcut[1]) if step.shortcut is not None else (_identity, _identity)
                u2 = pu(u) + f(v)
                v2 = pv(v) + g(u2)
                new, new_prev = torch.cat([u2, v2], dim=1), h
            else:
                raise AssertionError(spec.scheme)
            h, prev = new, new_prev
    h = model.head(h)
    return model.classifier(h.mean(dim=(2, 3)))


CASES = [
    dict(scheme="euler", stages=(2, 2), depth=10),
    dict(scheme="euler", stages=(2, 2), depth=10, preact=False, shortcut="pad"),
    dict(scheme="lm", stages=(3, 3), depth=14),
    dict(scheme="lm", stages=(3, 3), depth=14, preact=False, shortcut="pad"),
    dict(scheme="lm", stages=(3, 3), depth=14, lm_k="channel"),
    dict(scheme="lm", stages=(2, 3), depth=17, block="bottleneck"),
    dict(scheme="poly", stages=(2, 2), depth=10),
    dict(scheme="poly", stages=(2, 2), depth=14, block="bottleneck", preact=False),
    dict(scheme="rk2", stages=(2, 4), depth=14),
    dict(scheme="rk2", stages=(2, 2), depth=14, block="bottleneck", preact=False),
    dict(scheme="rk4", stages=(4, 4), depth=18),
    dict(scheme="rk4", stages=(4, 4), depth=18, preact=False, shortcut="pad"),
    dict(scheme="rev", stages=(4, 2), depth=14),
    dict(scheme="rev", stages=(2, 2), depth=10, preact=False, shortcut="pad"),
    dict(scheme="lm", stages=(1, 2), depth=11, block="resnext", groups=2, group_width=2),
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_scheme_equals_reference(kwargs: dict, training: bool) -> None:
    spec = ArchSpec(width=4, in_channels=2, num_classes=3, **kwargs)
    model = _randomise(build_model(spec).double()).train(training)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        ref = _reference(model, x)
    assert out.shape == (3, 3)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scheme", ["lm", "poly", "rk2"])
def test_reference_detects_a_wrong_formula(scheme: str) -> None:
    """Sanity of the harness: perturbing one residual function changes the output beyond tolerance."""
    spec = ArchSpec(scheme=scheme, stages=(2, 2), depth=10, width=4, in_channels=2)
    model = _randomise(build_model(spec).double()).eval()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = _reference(model, x)
        model.stages[1].steps[-1].functions[0][-1].weight.mul_(1.01)
        assert not torch.allclose(model(x), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(preact=False, shortcut="pad"), dict(lm_k="channel"), dict(noise="shake_shake"),
     dict(block="bottleneck", depth=20)],
    ids=["preact", "postact-pad", "channel-k", "shake", "bottleneck"],
)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_lm_with_zero_k_is_bit_identical_to_euler(kwargs: dict, training: bool) -> None:
    spec = ArchSpec(scheme="euler", **{"depth": 20, "width": 4, "in_channels": 1, **kwargs})
    euler = _randomise(build_model(spec)).train(training)
    lm = build_model(spec.replace(scheme="lm")).train(training)
    missing, unexpected = lm.load_state_dict(euler.state_dict(), strict=False)
    lm_steps = [(i, j) for i, n in enumerate(spec.steps_per_stage) for j in range(1, n)]
    assert sorted(missing) == sorted(f"stages.{i}.steps.{j}.k" for i, j in lm_steps) and not unexpected
    with torch.no_grad():
        for i, j in lm_steps:
            lm.stages[i].steps[j].k.zero_()
    x = torch.randn(4, 1, 12, 12)
    x_ = x.clone().requires_grad_()
    torch.manual_seed(1)
    out_e = euler(x_)
    torch.manual_seed(1)
    out_l = lm(x)
    assert torch.equal(out_e, out_l)
    if not training:
        lm.stages[0].steps[1].k.data.fill_(0.5)
        assert not torch.equal(euler(x), lm(x))


def test_lm_structure_and_k_init() -> None:
    spec = ArchSpec(scheme="lm", depth=56, width=4, lm_k_init=(-0.1, 0.0))
    model = build_model(spec)
    for i, stage in enumerate(model.stages):
        assert len(stage.steps) == 9
        assert type(stage.steps[0]) is EulerScheme and not hasattr(stage.steps[0], "k")
        assert (stage.steps[0].shortcut is None) == (i == 0)  # stage 0 keeps the stem's shape
        for j, step in enumerate(stage.steps[1:], start=1):
            assert type(step) is LMScheme and step.k.shape == () and (step.stage, step.step) == (i, j)
    ks = torch.stack([s.k for st in model.stages for s in st.steps[1:]]).detach()
    assert ((ks >= -0.1) & (ks <= 0.0)).all() and ks.std() > 0
    channel = build_model(spec.replace(lm_k="channel"))
    assert channel.stages[2].steps[3].k.shape == (1, 16, 1, 1)  # 4 * 2**2 channels


def test_lm_projected_input_becomes_previous_state() -> None:
    """Second step of a shape-changing stage mixes with P(x), not with the raw stage input."""
    spec = ArchSpec(scheme="lm", stages=(1, 2), depth=8, width=4, in_channels=1, preact=False, shortcut="pad")
    model = _randomise(build_model(spec).double()).eval()
    stage = model.stages[1]
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        first, second = stage.steps
        px = first.shortcut(x)
        x1 = torch.relu(px + first.functions[0](x))
        k = second.k
        expected = torch.relu((1 - k) * x1 + k * px + second.functions[0](x1))
        torch.testing.assert_close(stage(x), expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("scheme", ["euler", "lm", "rk2", "rk4", "poly", "rev"])
def test_steps_per_stage_follow_functions_per_step(scheme: str) -> None:
    spec = ArchSpec(scheme=scheme, depth=50, width=4)  # 8 functions per stage
    model = build_model(spec)
    fps = registry.get_scheme(scheme).functions_per_step
    assert [len(s.steps) for s in model.stages] == [8 // fps] * 3 == list(spec.steps_per_stage)
    for stage in model.stages:
        for step in stage.steps:
            assert len(step.functions) == fps
            assert isinstance(step, Scheme)


def test_poly_applies_the_same_weights_twice_with_separate_batch_norms() -> None:
    step = build_model(ArchSpec(scheme="poly", depth=20, width=4)).stages[0].steps[1]
    f, again = step.functions[0], step.again
    pairs = list(zip(f.modules(), again.modules(), strict=True))
    norms = [(a, b) for a, b in pairs if isinstance(a, nn.BatchNorm2d)]
    weighted = [(a, b) for a, b in pairs if isinstance(a, nn.Conv2d)]
    assert norms and weighted
    assert all(a.weight is b.weight for a, b in weighted)  # one set of conv weights...
    assert all(a is not b and a.weight is not b.weight for a, b in norms)  # ...two sets of statistics
    with torch.no_grad():
        step.train()(torch.randn(8, 4, 6, 6), torch.zeros(1))
    # each norm saw a different input (x, then f(x)), so their running statistics differ
    assert all(not torch.equal(a.running_mean, b.running_mean) for a, b in norms)
    # f's weights are counted once: the twin adds only its batch-norm parameters
    own = sum(p.numel() for p in f.parameters())
    norm_params = sum(p.numel() for a, _ in norms for p in a.parameters())
    assert sum(p.numel() for p in step.parameters()) == own + norm_params


def test_poly_shape_change_falls_back_to_euler() -> None:
    model = build_model(ArchSpec(scheme="poly", depth=20, width=4))
    assert type(model.stages[0].steps[0]) is PolyScheme  # shape kept: a poly step
    assert type(model.stages[1].steps[0]) is EulerScheme and model.stages[1].steps[0].shortcut is not None
    assert type(model.stages[1].steps[1]) is PolyScheme


def test_adding_a_scheme_is_one_class() -> None:
    """A new registered class (explicit midpoint rule) is accepted by ArchSpec and built by build_model."""

    @registry.register_scheme
    class Midpoint(Scheme):
        name = "midpoint_test"
        functions_per_step = 2

        def forward(self, x: Tensor, x_prev: Tensor) -> tuple[Tensor, Tensor]:
            f, g = self.functions
            base = self.base(x)
            return self.act(base + self.drop(g(base + 0.5 * f(x)))), base

    try:
        spec = ArchSpec(scheme="midpoint_test", depth=14, width=4, in_channels=1)
        model = build_model(spec)
        assert [len(s.steps) for s in model.stages] == [1, 1, 1]
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    finally:
        registry._SCHEMES.pop("midpoint_test", None)


def test_step_context_shape_change() -> None:
    spec = ArchSpec(depth=20, width=4)
    assert StepContext(spec, 1, 0, 4, 9, 4, 8, 2).changes_shape
    assert not StepContext(spec, 1, 1, 5, 9, 8, 8, 1).changes_shape


def test_model_keeps_spec_and_runs_channels_last() -> None:
    spec = ArchSpec(scheme="lm", depth=14, width=4, in_channels=1)
    model = build_model(spec).eval()
    assert model.spec is spec
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [dict(scheme="lm"), dict(scheme="lm", preact=False, shortcut="pad"), dict(scheme="lm", lm_k="channel"),
     dict(scheme="rk2", depth=14), dict(scheme="poly")],
    ids=["lm", "lm-postact", "lm-channel", "rk2", "poly"],
)
def test_gradients_equal_reference(kwargs: dict) -> None:
    """The fused LM combination's hand-written backward (and every scheme's) matches autograd of the formulas."""
    spec = ArchSpec(**{"depth": 20, "width": 4, "in_channels": 2, **kwargs})
    model = _randomise(build_model(spec).double()).train()
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    params = [x, *model.parameters()]
    weights = torch.randn(3, 10, dtype=torch.float64)
    got = torch.autograd.grad((model(x) * weights).sum(), params)
    want = torch.autograd.grad((_reference(model, x) * weights).sum(), params)
    for (name, _), g, w in zip([("x", x), *model.named_parameters()], got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("k_shape", [(), (1, 3, 1, 1)], ids=["scalar", "channel"])
def test_lm_combine(memory_format: torch.memory_format, k_shape: tuple) -> None:
    x, x_prev, f = (torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=memory_format)
                    .requires_grad_() for _ in range(3))
    k = torch.empty(k_shape, dtype=torch.float64).uniform_(-0.5, 0.5).requires_grad_()
    torch.testing.assert_close(lm_combine(x, x_prev, f, k), (1 - k) * x + k * x_prev + f, rtol=1e-14, atol=1e-14)
    assert torch.autograd.gradcheck(lm_combine, (x, x_prev, f, k))
    assert torch.equal(lm_combine(x, x_prev, f, torch.zeros(k_shape, dtype=torch.float64)), x + f)
