"""The zoo: every entry's parameter count against the papers, count_params/count_flops, create_model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lmsearch
from lmsearch.arch import ArchSpec
from lmsearch.nn.counting import count_flops, count_params, default_input_size
from lmsearch.nn.network import build_model
from lmsearch.nn.zoo import MODELS, create_model, list_models, model_spec

# name -> (published count in millions as printed in the paper, exact reference count or None)
PUBLISHED = {
    "resnet20": ("0.27", 269_722),  # He et al. 2016a, option A shortcuts
    "resnet32": ("0.46", 464_154),
    "resnet44": ("0.66", 658_586),
    "resnet56": ("0.85", 853_018),
    "resnet110": ("1.7", 1_727_962),
    "resnext29_8x64d": ("34.4", None),  # Xie et al. 2017, CIFAR
    "resnext29_16x64d": ("68.1", None),
    "resnet50": ("25.6", 25_557_032),  # torchvision resnet50
    "resnet101": ("44.5", 44_549_160),  # torchvision resnet101
}

EXPECTED_NAMES = sorted(
    [f"{p}resnet{d}" for p in ("", "lm_", "preact_", "lm_preact_", "authors_", "lm_authors_")
     for d in (20, 32, 44, 56, 110)]
    + [f"{p}resnext29_{c}x64d" for p in ("", "lm_") for c in (8, 16)]
    + [f"{p}resnet{d}" for p in ("", "lm_") for d in (50, 101)]
)


def _base(name: str) -> str:
    return name.removeprefix("lm_").removeprefix("preact_").removeprefix("authors_")


def _lm_steps(spec: ArchSpec) -> int:
    return sum(n - 1 for n in spec.steps_per_stage)  # every step but the first of each stage


def test_list_models() -> None:
    assert list_models() == EXPECTED_NAMES == sorted(MODELS)
    assert list_models("lm_resnet*") == ["lm_resnet101", "lm_resnet110", "lm_resnet20", "lm_resnet32",
                                         "lm_resnet44", "lm_resnet50", "lm_resnet56"]
    assert lmsearch.list_models() == EXPECTED_NAMES


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_every_entry_parameter_count(name: str) -> None:
    spec = model_spec(name)
    published, exact = PUBLISHED[_base(name)]
    count = count_params(spec)
    reference = exact if exact is not None else float(published) * 1e6
    assert abs(count / reference - 1) <= 0.01, (count, reference)
    if name.startswith("lm_"):
        plain = count_params(model_spec(name.removeprefix("lm_")))
        assert count - plain == _lm_steps(spec) > 0  # exactly one scalar k per LM step
    elif name in PUBLISHED and exact is not None:
        assert count == exact
        digits = len(published.split(".")[1])
        assert f"{count / 1e6:.{digits}f}" == published


# What the LM-ResNet authors' MResNet uses in its forward pass (3 input channels, 10 classes), counted
# from their code: pre-activation steps, stem conv without BN, BN-ReLU-1x1 conv projections.
AUTHORS_LM_COUNTS = {"lm_authors_resnet20": 272_384, "lm_authors_resnet56": 855_698,
                     "lm_authors_resnet110": 1_730_669}


@pytest.mark.parametrize("name", sorted(AUTHORS_LM_COUNTS))
def test_authors_presets_have_the_authors_parameter_counts(name: str) -> None:
    assert count_params(model_spec(name)) == AUTHORS_LM_COUNTS[name]


def test_authors_projection_is_bn_relu_conv_on_the_step_input() -> None:
    from lmsearch.nn.network import build_model

    model = build_model(model_spec("lm_authors_resnet20"))
    shortcuts = [m.shortcut for m in model.modules() if getattr(m, "shortcut", None) is not None]
    assert len(shortcuts) == 2  # the two stage transitions
    for sc, cin in zip(shortcuts, (16, 32), strict=True):
        assert [type(m).__name__ for m in sc] == ["BatchNorm2d", "ReLU", "Conv2d"]
        assert sc.bn.num_features == cin and sc.conv.kernel_size == (1, 1) and sc.conv.stride == (2, 2)
    # and it differs from the bare-conv layout by exactly those two batch norms
    bare = count_params(model_spec("lm_preact_resnet20"))
    assert count_params(model_spec("lm_authors_resnet20")) - bare == 2 * (16 + 32)
    with pytest.raises(ValueError, match="preact_conv"):
        model_spec("authors_resnet20", preact=False)


def test_zoo_specs_are_the_papers_layouts() -> None:
    r56 = model_spec("resnet56")
    assert (r56.scheme, r56.depth, r56.width, r56.preact, r56.shortcut, r56.stage_functions) == (
        "euler", 56, 16, False, "pad", (9, 9, 9))
    assert model_spec("lm_preact_resnet110").replace(scheme="euler") == model_spec("preact_resnet110")
    rx = model_spec("resnext29_16x64d")
    assert (rx.groups, rx.group_width, rx.num_classes, rx.stage_channels) == (16, 64, 100, (256, 512, 1024))
    r101 = model_spec("lm_resnet101")
    assert (r101.stem, r101.stages, r101.num_classes, r101.block) == ("imagenet", (3, 4, 23, 3), 1000, "bottleneck")


@pytest.mark.parametrize(
    "spec",
    [
        ArchSpec(scheme="lm", depth=20, width=4, lm_k="channel"),
        ArchSpec(scheme="rev", depth=26, width=6, preact=False, shortcut="pad"),
        ArchSpec(scheme="rk4", depth=26, width=4, noise="shake_shake"),
        ArchSpec(scheme="poly", depth=29, width=8, block="resnext", groups=2, group_width=2),
        ArchSpec(scheme="rk2", depth=26, width=4, stages=(2, 2, 2, 2, 2, 2), block="basic"),
        ArchSpec(scheme="euler", depth=26, width=4, stages=(2, 2, 2, 2), block="bottleneck", stem="imagenet"),
    ],
    ids=lambda s: f"{s.scheme}-{s.block}",
)
def test_count_params_equals_built_model(spec: ArchSpec) -> None:
    model = build_model(spec)
    assert count_params(spec) == sum(p.numel() for p in model.parameters())
    assert all(not p.is_meta for p in model.parameters())


def test_count_params_allocates_no_weights() -> None:
    # ResNeXt-29 16x64d holds 68M float parameters (273 MB); on the meta device this is instant.
    assert count_params(model_spec("resnext29_16x64d")) > 68_000_000


def test_count_flops() -> None:
    r20 = model_spec("resnet20")
    assert default_input_size(r20) == (3, 32, 32) and default_input_size(model_spec("resnet50")) == (3, 224, 224)
    flops20 = count_flops(r20)
    assert 2 * 40.0e6 < flops20 < 2 * 41.5e6  # ~41M multiply-adds (He et al.)
    assert count_flops(model_spec("lm_resnet20")) == flops20  # the LM combination is elementwise
    flops50 = count_flops(model_spec("resnet50"))
    assert abs(flops50 / (2 * 4.09e9) - 1) < 0.01  # torchvision: 4.09 GMACs at 224 px
    # convolution FLOPs scale with the pixels; the classifier (64 x 10 multiply-adds) does not
    fc = 2 * 64 * 10
    assert count_flops(r20, input_size=(3, 64, 64)) - fc == 4 * (flops20 - fc)
    # Hand count (multiply-adds) for a pre-activation net of 1 basic function per stage on an 8x8 input.
    tiny = ArchSpec(depth=8, width=2, in_channels=1, num_classes=3)
    macs = (
        9 * 1 * 2 * 64  # stem 3x3 1->2 at 8x8
        + 2 * 9 * 2 * 2 * 64  # stage 0: two 3x3 2->2 at 8x8
        + 9 * 2 * 4 * 16 + 9 * 4 * 4 * 16 + 2 * 4 * 16  # stage 1: 3x3/2 2->4, 3x3 4->4, 1x1/2 projection at 4x4
        + 9 * 4 * 8 * 4 + 9 * 8 * 8 * 4 + 4 * 8 * 4  # stage 2 likewise at 2x2
        + 8 * 3  # classifier
    )
    assert count_flops(tiny, input_size=(1, 8, 8)) == 2 * macs
    with pytest.raises(ValueError, match="input_size must be"):
        count_flops(tiny, input_size=(8, 8))


def test_create_model() -> None:
    model = create_model("lm_resnet20", num_classes=7, in_channels=1)
    assert model.spec == model_spec("lm_resnet20", num_classes=7, in_channels=1)
    assert model.classifier.out_features == 7
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert lmsearch.create_model("resnet20").spec == model_spec("resnet20")


def test_unknown_model_lists_close_matches() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet21'; did you mean resnet.*resnet20"):
        create_model("resnet21")
    with pytest.raises(ValueError, match="unknown model 'lm_resnxt29_8x64d'; did you mean lm_resnext29_8x64d"):
        model_spec("lm_resnxt29_8x64d")
    with pytest.raises(ValueError, match="depth must be 6n\\+2"):
        model_spec("resnet20", depth=21)


def test_create_model_from_a_directory_delegates_to_load_architecture(tmp_path: Path, monkeypatch) -> None:
    import lmsearch.archfile

    calls = []
    sentinel = torch.nn.Identity()
    monkeypatch.setattr(lmsearch.archfile, "load_architecture", lambda path: calls.append(path) or sentinel)
    assert create_model(str(tmp_path)) is sentinel
    assert create_model(tmp_path) is sentinel
    assert calls == [str(tmp_path), tmp_path]
    with pytest.raises(ValueError, match="overrides cannot be applied"):
        create_model(tmp_path, num_classes=3)


def test_models_cli_lists_the_zoo_with_counts() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "lmsearch", "models", "resnet20"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}
    assert {"resnet20", "lm_resnet20", "preact_resnet20", "lm_preact_resnet20"} <= set(lines)
    assert lines["resnet20"][-1] == "269,722"
    assert lines["lm_resnet20"][1] == "lm"
    missing = subprocess.run([sys.executable, "-m", "lmsearch", "models", "vgg"], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 1 and "no model name contains 'vgg'" in missing.stdout
