"""``lmsearch.to_lm``: any torchvision ResNet as its LM-ResNet, exactly the original at k_n = 0.

Every check is exact (``torch.equal``) where the arithmetic is: outputs and
the gradients of the original parameters at k_n = 0, state_dict and arch.json
round trips, stochastic depth in eval mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import lmsearch
from lmsearch.arch import TORCHVISION_BASES, ArchSpec
from lmsearch.archfile import ArchitectureFileError
from lmsearch.nn.torchvision_lm import ResNetStep, adapt_io, base_name, convert_resnet

NAMES = [name.split(":", 1)[1] for name in TORCHVISION_BASES]


def torchvision_net(name: str, **kwargs: object) -> nn.Module:
    return getattr(torchvision.models, name)(weights=None, num_classes=3, **kwargs)


def k_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.endswith(".k")]


def expected_k_names(net: nn.Module) -> list[str]:
    """Every block but the first of each stage and those with a downsample (the rule of lmsearch's LM nets)."""
    return [f"layer{s}.{i}.k" for s in range(1, 5) for i, block in enumerate(getattr(net, f"layer{s}"))
            if i > 0 and block.downsample is None]


# ------------------------------------------------------------------ exactness at k = 0
@pytest.mark.parametrize("name", NAMES)
def test_bit_identical_to_torchvision_at_k_zero(name: str) -> None:
    """Eval outputs, train outputs, BN statistics and every original parameter's gradient: bit for bit."""
    net = torchvision_net(name)
    lm = lmsearch.to_lm(net)  # a copy: net is untouched
    assert lm is not net and not isinstance(net.layer1[0], ResNetStep)
    assert k_names(lm) == expected_k_names(net) and k_names(lm)
    assert all(float(p.detach()) == 0.0 for n, p in lm.named_parameters() if n.endswith(".k"))
    assert lm.spec == ArchSpec(base=f"torchvision:{name}", scheme="lm", lm_k_init=(0.0, 0.0), num_classes=3)

    x = torch.randn(2, 3, 32, 32)
    net.eval(), lm.eval()
    with torch.no_grad():
        assert torch.equal(lm(x), net(x))
    net.train(), lm.train()
    out_net, out_lm = net(x), lm(x)
    assert torch.equal(out_lm, out_net)
    target = torch.randn_like(out_net)
    ((out_net - target) ** 2).sum().backward()
    ((out_lm - target) ** 2).sum().backward()
    converted = dict(lm.named_parameters())
    for pname, p in net.named_parameters():
        assert torch.equal(converted[pname].grad, p.grad), pname
    assert all(converted[k].grad is not None for k in k_names(lm))  # k learns
    for bname, b in lm.named_buffers():  # batch-norm running statistics updated alike
        assert torch.equal(b, net.get_buffer(bname)), bname


# ------------------------------------------------------------------ weights in and out
def test_original_state_dict_loads_strictly_and_keeps_k() -> None:
    pretrained = torchvision_net("resnet18")
    lm = lmsearch.to_lm(torchvision_net("resnet18"), k_init="paper")
    k_before = {n: p.detach().clone() for n, p in lm.named_parameters() if n.endswith(".k")}
    assert set(lm.state_dict()) - set(pretrained.state_dict()) == set(k_before)  # only the k_n are new
    loaded = lm.load_state_dict(pretrained.state_dict(), strict=True)
    assert loaded.missing_keys == [] and loaded.unexpected_keys == []
    for key, value in pretrained.state_dict().items():
        assert torch.equal(lm.state_dict()[key], value), key
    assert all(torch.equal(lm.get_parameter(n), k) for n, k in k_before.items())
    # the converted model's own state_dict round-trips, k included
    again = lmsearch.to_lm(torchvision_net("resnet18"))
    again.load_state_dict(lm.state_dict(), strict=True)
    assert all(torch.equal(again.get_parameter(n), k) for n, k in k_before.items())
    # a pretrained model loaded the torchvision way, then converted: exactly the pretrained net at k = 0
    net = torchvision_net("resnet18")
    net.load_state_dict(pretrained.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(lmsearch.to_lm(net).eval()(x), pretrained.eval()(x))


def test_arch_json_round_trip_rebuilds_from_torchvision(tmp_path: Path) -> None:
    net = adapt_io(torchvision_net("resnext50_32x4d"), in_channels=1, num_classes=5)
    lm = lmsearch.to_lm(net, k_init="paper", per_channel=True, stochastic_depth=0.3).eval()
    out = lmsearch.save_architecture(lm, None, tmp_path / "lm", metadata={"metrics": {"note": "test"}})
    doc = json.loads((out / "arch.json").read_text())
    assert doc["spec"]["base"] == "torchvision:resnext50_32x4d" and doc["spec"]["lm_k"] == "channel"
    assert doc["spec"]["in_channels"] == 1 and doc["spec"]["num_classes"] == 5
    loaded = lmsearch.load_architecture(out)
    assert isinstance(loaded, torchvision.models.ResNet) and loaded.spec == lm.spec
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), lm(x))
    assert lmsearch.lm_coefficients(loaded).equals(lmsearch.lm_coefficients(lm))
    # an lmsearch net's arch.json has no base and loads as before
    assert "base" not in lmsearch.ArchSpec(scheme="lm").to_dict()
    doc["spec"]["base"] = "torchvision:resnet19"
    (out / "arch.json").write_text(json.dumps(doc))
    with pytest.raises(ArchitectureFileError, match=r"arch\.json: invalid architecture spec: base must be one of "
                                                    r"torchvision:resnet18, .*; got 'torchvision:resnet19'"):
        lmsearch.load_architecture(out)


# ------------------------------------------------------------------ options
def test_k_init_range_and_per_channel_shape() -> None:
    net = torchvision_net("resnet50")
    for per_channel in (False, True):
        lm = lmsearch.to_lm(net, k_init="paper", per_channel=per_channel)
        ks = {n: p for n, p in lm.named_parameters() if n.endswith(".k")}
        assert list(ks) == expected_k_names(net)
        values = torch.cat([k.detach().reshape(-1) for k in ks.values()])
        assert (values >= -0.1).all() and (values <= 0.0).all() and values.unique().numel() > len(ks) // 2
        for n, k in ks.items():
            channels = lm.get_submodule(n[:-2]).bn3.num_features
            assert k.shape == ((1, channels, 1, 1) if per_channel else ())
    table = lmsearch.lm_coefficients(lm)
    assert table["name"].tolist() == [n[:-2] for n in expected_k_names(net)]
    assert table[["stage", "step"]].values.tolist()[:3] == [[0, 1], [0, 2], [1, 1]]
    assert (table["n_k"] == [lm.get_parameter(f"{n}.k").numel() for n in table["name"]]).all()
    assert lmsearch.to_lm(net, k_init=(0.2, 0.2)).get_parameter("layer1.1.k").item() == pytest.approx(0.2)


def test_stochastic_depth_drops_f_in_training_and_is_exact_in_eval() -> None:
    net = torchvision_net("resnet34").eval()
    plain = lmsearch.to_lm(net, k_init="paper", inplace=False)
    noisy = lmsearch.to_lm(net, stochastic_depth=0.5)
    noisy.load_state_dict(plain.state_dict())
    survival = [m.drop.survival for m in noisy.modules() if isinstance(m, ResNetStep)]
    assert survival[0] == pytest.approx(1 - 0.5 / 16) and survival[-1] == pytest.approx(0.5)
    assert noisy.spec.noise == "stochastic_depth" and noisy.spec.noise_prob == 0.5
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        first = noisy.eval()(x)
        assert torch.equal(first, noisy(x)) and torch.equal(first, plain.eval()(x))
        noisy.train(), plain.train()
        torch.manual_seed(1)
        a = noisy(x)
        torch.manual_seed(2)
        b = noisy(x)
    assert not torch.equal(a, b)  # some increment was dropped


def test_euler_conversion_and_refusals() -> None:
    net = torchvision_net("resnet18")
    euler = convert_resnet(net, scheme="euler", stochastic_depth=0.1)
    assert k_names(euler) == [] and euler.spec.scheme == "euler" and euler.spec.noise == "stochastic_depth"
    assert base_name(net) == "torchvision:resnet18" and base_name(nn.Linear(2, 2)) is None
    custom = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=3)
    assert lmsearch.to_lm(custom).spec is None  # converts, but is no named base: nothing to rebuild it from
    with pytest.raises(TypeError, match="torchvision ResNet"):
        lmsearch.to_lm(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="already converted"):
        lmsearch.to_lm(euler)
    with pytest.raises(ValueError, match=r"stochastic_depth .* must be in \[0, 1\); got 1.0"):
        lmsearch.to_lm(net, stochastic_depth=1.0)
    with pytest.raises(ValueError, match="k_init must be a pair .* or one of zero, paper; got .small."):
        lmsearch.to_lm(net, k_init="small")


def test_adapt_io_grey_conv1_keeps_pretrained_filters() -> None:
    net = torchvision_net("resnet18").eval()
    grey = adapt_io(lmsearch.to_lm(net), in_channels=1, num_classes=7).eval()
    assert grey.conv1.weight.shape == (64, 1, 7, 7) and grey.fc.out_features == 7
    assert grey.spec.in_channels == 1 and grey.spec.num_classes == 7
    image = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        features = nn.Sequential(grey.conv1)(image)
        assert torch.allclose(features, net.conv1(image.expand(1, 3, 32, 32)), atol=1e-5)


# ------------------------------------------------------------------ fine-tuning
def test_fine_tuning_a_converted_resnet18_moves_k(tmp_path: Path) -> None:
    from lmsearch.data.synthetic import write_image_folder

    root = write_image_folder(tmp_path / "images", classes=3, per_class=16, test_per_class=2, size=(32, 32))
    data = lmsearch.load_dataset("folder", root, image_size=32, val_fraction=0.25, num_workers=0)
    pretrained = torchvision_net("resnet18").state_dict()  # stands for weights=ResNet18_Weights.DEFAULT
    net = torchvision_net("resnet18")
    net.load_state_dict(pretrained)
    lm = lmsearch.to_lm(net)
    config = lmsearch.TrainConfig(epochs=2, batch_size=12, lr=0.05, device="cpu", progress=False)
    result = lmsearch.Trainer(lm, data, config).fit()
    assert result.status == "completed" and len(result.history) == 2
    k = lmsearch.lm_coefficients(lm)
    assert len(k) == 4 and (k["k"].abs() > 1e-4).all(), k  # every k_n left 0
    assert not torch.equal(lm.conv1.weight.detach().cpu(), pretrained["conv1.weight"])


# ------------------------------------------------------------------ review fixes
def test_an_eval_mode_model_converts_to_an_eval_mode_model() -> None:
    """The new containers (steps, stages, their stochastic depth) take the mode of what they replace."""
    net = torchvision_net("resnet18").eval()
    noisy = lmsearch.to_lm(net, stochastic_depth=0.5)  # no .eval() after converting
    assert not any(m.training for m in noisy.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        first = noisy(x)
        assert torch.equal(first, noisy(x)) and torch.equal(first, lmsearch.to_lm(net)(x))
    assert all(m.training for m in lmsearch.to_lm(torchvision_net("resnet18")).modules())  # train stays train


@pytest.mark.parametrize("change", ["maxpool", "conv1_stride", "fc_bias"])
def test_a_changed_structure_has_no_spec_and_is_not_saved_as_the_base(change: str, tmp_path: Path) -> None:
    """Same tensors, another net: torchvision's constructor would rebuild a different model on load."""
    net = torchvision_net("resnet18")
    if change == "maxpool":
        net.maxpool = nn.Identity()
    elif change == "conv1_stride":
        net.conv1 = nn.Conv2d(3, 64, 7, 1, 3, bias=False)
    else:
        net.fc = nn.Linear(512, 3, bias=False)
    lm = lmsearch.to_lm(net)
    assert lm.spec is None and len(lmsearch.lm_coefficients(lm)) == 4
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(lm.eval()(x), net.eval()(x))
    with pytest.raises(ValueError, match="carries no .spec .a converted torchvision ResNet whose structure"):
        lmsearch.save_architecture(lm, None, tmp_path / "a")
    spec = ArchSpec(base="torchvision:resnet18", scheme="lm", lm_k_init=(0.0, 0.0), num_classes=3)
    with pytest.raises(ValueError, match="is not the network of base torchvision:resnet18"):
        lmsearch.save_architecture(lm, spec, tmp_path / "b")  # an explicit spec is checked too
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # the standard structure (fc and conv1 as adapt_io makes them) keeps its spec and saves
    standard = lmsearch.to_lm(adapt_io(torchvision_net("resnet18"), in_channels=1, num_classes=4))
    assert standard.spec == spec.replace(in_channels=1, num_classes=4)
    lmsearch.save_architecture(standard, None, tmp_path / "c")


def test_an_fc_that_is_not_one_linear_converts_without_spec() -> None:
    net = torchvision_net("resnet50")
    net.fc = nn.Sequential(nn.Dropout(), nn.Linear(2048, 3))
    lm = lmsearch.to_lm(net).eval()
    assert lm.spec is None and k_names(lm) == expected_k_names(net)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(lm(x), net.eval()(x))


@pytest.mark.parametrize("k_init", [0.1, (0, float("nan")), (0, float("inf")), (1, 0), "bogus", (0, 0, 0), (True, 1)])
def test_bad_k_init_is_one_clear_value_error(k_init: object) -> None:
    allowed = r"must be a pair \[low, high\] with low <= high, both finite, or one of zero, paper; got "
    with pytest.raises(ValueError, match="^k_init " + allowed):
        lmsearch.to_lm(torchvision_net("resnet18"), k_init=k_init)
    with pytest.raises(ValueError, match="^lm_k_init " + allowed):
        ArchSpec(scheme="lm", lm_k_init=k_init)


def test_k_init_names_and_defaults_of_each_path(tmp_path: Path) -> None:
    from lmsearch.space import load_space

    assert ArchSpec(scheme="lm", lm_k_init="zero").lm_k_init == (0.0, 0.0)
    assert ArchSpec(scheme="lm").lm_k_init == (-0.1, 0.0)  # lmsearch's own LM nets: the paper's, unchanged
    assert lmsearch.to_lm(torchvision_net("resnet18")).spec.lm_k_init == (0.0, 0.0)
    specs = {}
    for kind, arch in (("base", "base: torchvision:resnet18"), ("own", "depth: 20"), ("paper", "base: "
                       "torchvision:resnet18, k_init: paper")):
        path = tmp_path / f"{kind}.yaml"
        path.write_text(f"name: {kind}\ndataset: {{name: synthetic}}\nbudget: {{epochs: 1}}\n"
                        f"architecture: {{{arch}, scheme: [euler, lm]}}\nsearch: {{sampler: grid}}\n")
        space = load_space(path)
        specs[kind] = {a["scheme"]: space.arch_spec(a, in_channels=3, num_classes=10) for _, a in space.arch_points()}
        assert len(space.grid()) == 2
    assert specs["base"]["lm"].lm_k_init == (0.0, 0.0)  # as to_lm and `lmsearch train --lm`
    assert specs["paper"]["lm"].lm_k_init == (-0.1, 0.0)
    assert specs["own"]["lm"].lm_k_init == (-0.1, 0.0)


def test_structural_fields_equal_to_the_default_are_taken_from_the_base() -> None:
    """As the docstring says: a default value cannot be told from an omitted one; another value is refused."""
    spec = ArchSpec(base="torchvision:resnet18", stem="small", width=16, preact=True)
    assert (spec.stem, spec.width, spec.preact) == ("imagenet", 64, False)
    with pytest.raises(ValueError, match=r"width is set by base torchvision:resnet18 \(64\); got 32"):
        ArchSpec(base="torchvision:resnet18", width=32)


def test_only_a_state_dict_without_any_k_gets_the_current_k() -> None:
    lm = lmsearch.to_lm(torchvision_net("resnet18"), k_init=(0.3, 0.3))
    original = torchvision_net("resnet18").state_dict()
    lm.load_state_dict(original, strict=True)  # the original: k_n kept
    assert lm.get_parameter("layer1.1.k").item() == pytest.approx(0.3)
    import copy

    copy.deepcopy(lm).load_state_dict(original, strict=True)  # the hook survives a copy
    partial = lm.state_dict()
    del partial["layer2.1.k"]
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "layer2.1.k"\.'):
        lm.load_state_dict(partial, strict=True)
    euler = convert_resnet(torchvision_net("resnet18"), scheme="euler")
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "layer1.1.k", "layer2.1.k"'):
        lm.load_state_dict(euler.state_dict(), strict=True)  # a converted model's, without k_n
    wrapped = nn.Sequential(lmsearch.to_lm(torchvision_net("resnet18")))  # under a prefix
    wrapped.load_state_dict({f"0.{k}": v for k, v in original.items()}, strict=True)
