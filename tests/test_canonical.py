"""An lm net without an LM step (one step per stage) is the euler net: one architecture, spelt one way."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import lmsearch
from lmsearch import ArchSpec, build_model
from lmsearch.searcher import StudySearcher, scheme_startup
from lmsearch.space import SpaceError, load_space


@pytest.mark.parametrize("depth, block, steps", [(8, "basic", 0), (14, "basic", 3), (20, "basic", 6),
                                                 (11, "bottleneck", 0), (20, "bottleneck", 3)])
def test_lm_steps_are_every_step_but_a_stages_first(depth: int, block: str, steps: int) -> None:
    spec = ArchSpec(scheme="lm", depth=depth, block=block)
    assert spec.lm_steps == steps
    assert (spec.canonical().scheme == "euler") == (steps == 0)
    assert ArchSpec(scheme="euler", depth=depth, block=block).lm_steps == 0


def test_lm_without_lm_step_is_the_euler_net_bit_for_bit(tmp_path: Path) -> None:
    lm = ArchSpec(scheme="lm", depth=8, width=4, in_channels=1, lm_k="channel", lm_k_init=(-0.5, -0.2))
    euler = lm.canonical()
    assert euler == ArchSpec(scheme="euler", depth=8, width=4, in_channels=1)
    torch.manual_seed(0)
    a = build_model(lm)
    torch.manual_seed(0)
    b = build_model(euler)
    assert not [n for n, _ in a.named_parameters() if n.endswith(".k")]  # no k at all
    assert list(a.state_dict()) == list(b.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(a.eval()(x), b.eval()(x))
    # an lm-8 model saves under its canonical spelling and comes back as the euler net
    lmsearch.save_architecture(a, euler, tmp_path / "e")
    back = lmsearch.load_architecture(tmp_path / "e").eval()
    assert back.spec == euler and torch.equal(back(x), a(x))
    with pytest.raises(ValueError, match="built from"):  # a different net is still refused
        lmsearch.save_architecture(a, ArchSpec(scheme="lm", depth=14, width=4, in_channels=1), tmp_path / "f")


def _space(tmp_path: Path, architecture: str, search: str = "{sampler: grid}") -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(f"""
        name: s
        dataset: {{name: synthetic, subset: 64}}
        architecture: {architecture}
        search: {search}
        """))
    return path


def test_space_leaves_lm_depths_without_lm_step_out_and_says_so(tmp_path: Path) -> None:
    space = load_space(_space(tmp_path, "{scheme: [euler, lm], depth: [8, 14], width: 4}"))
    assert [(a["scheme"], a["depth"]) for _, a in space.arch_points()] == [("euler", 8), ("euler", 14), ("lm", 14)]
    assert space.num_samples == 3  # the grid has no lm-8 point
    assert space.notes == ("architecture.depth: lm at depth 8 left out: one step per stage means no LM step, "
                           "so it is the euler net of that depth (in the space as euler)",)
    per_scheme = load_space(_space(tmp_path, "{scheme: [euler, lm], depth: {euler: [8], lm: [8, 20]}}"))
    assert per_scheme.depth_by_scheme["lm"].choices == (20,)
    assert per_scheme.notes[0].startswith("architecture.depth.lm: lm at depth 8 left out")
    plain = load_space(_space(tmp_path, "{scheme: [euler, lm], depth: [14, 20]}"))
    assert plain.notes == () and plain.depth_by_scheme is None  # nothing to take out: the space is as written


def test_space_of_lm_nets_without_lm_step_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"architecture\.depth\.lm: .*depth 8 has one step per stage, so no LM step"):
        load_space(_space(tmp_path, "{scheme: [euler, lm], depth: {euler: [8], lm: [8]}}"))


def test_sampled_search_starts_with_one_trial_per_scheme(tmp_path: Path) -> None:
    path = _space(tmp_path, "{scheme: [rev, euler, lm], depth: {rev: [14], euler: [8, 14], lm: [14, 20]}, "
                            "width: [4, 8]}", "{sampler: tpe, num_samples: 6, seed: 3}")
    space = load_space(path)
    assert scheme_startup(space) == [{"scheme": "rev"}, {"scheme": "euler"}, {"scheme": "lm"}]
    searcher = StudySearcher(space, tmp_path, in_channels=1, num_classes=10, fresh=True)
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [c["spec"]["scheme"] for c in configs] == ["rev", "euler", "lm"]
    assert {c["arch"]["width"] for c in configs} <= {4, 8}  # the rest is the sampler's
    one = load_space(_space(tmp_path, "{scheme: lm, depth: [14, 20]}", "{sampler: random, num_samples: 2}"))
    assert scheme_startup(one) == []


@pytest.mark.parametrize("scheme,depth", [("euler", 20), ("rk2", 14), ("poly", 14), ("rev", 14), ("lm", 8)])
def test_a_net_without_lm_steps_has_one_spelling_whatever_its_k_fields(scheme: str, depth: int) -> None:
    """k fields of a net with no k_n change nothing it builds, so they do not make it another architecture."""
    odd = ArchSpec(scheme=scheme, depth=depth, width=4, lm_k="channel", lm_k_init="zero")
    plain = ArchSpec(scheme="euler" if scheme == "lm" else scheme, depth=depth, width=4)
    assert odd.canonical() == plain and plain.canonical() is plain
    torch.manual_seed(0)
    a = build_model(odd)
    torch.manual_seed(0)
    b = build_model(plain)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_an_lm_net_with_lm_steps_keeps_its_k_fields() -> None:
    spec = ArchSpec(scheme="lm", depth=14, width=4, lm_k="channel", lm_k_init="zero")
    assert spec.canonical() is spec


def test_a_grid_trains_an_lm_layout_without_lm_step_once_as_its_euler_twin(tmp_path: Path) -> None:
    # Depth 10 has layouts with LM steps ((2, 2)) and without ((1, 1, 1, 1)): the depth stays,
    # and the grid drops lm (1, 1, 1, 1), the same net as euler (1, 1, 1, 1), with a note.
    space = load_space(_space(tmp_path, "{scheme: [euler, lm], stages: [[1, 1, 1, 1], [2, 2]], depth: 10, width: 4}"))
    assert space.grid() == [{"scheme": "euler", "stages": (1, 1, 1, 1)}, {"scheme": "euler", "stages": (2, 2)},
                            {"scheme": "lm", "stages": (2, 2)}]
    assert space.num_samples == 3
    assert space.notes == ("architecture: 1 grid point(s) left out: each builds the same network as another point "
                           "(a layout without an LM step has no k_n: as lm it is the euler net)",)
    only_lm = load_space(_space(tmp_path, "{scheme: lm, stages: [[1, 1, 1, 1], [2, 2]], depth: 10, width: 4}"))
    assert only_lm.num_samples == 2 and only_lm.notes == ()  # no twin: trained once, as the euler net
    # listed lm first, the point kept is still the one spelt as what it builds (euler)
    lm_first = load_space(_space(tmp_path, "{scheme: [lm, euler], stages: [[1, 1, 1, 1], [2, 2]], depth: 10, "
                                           "width: 4}"))
    assert lm_first.grid() == [{"scheme": "lm", "stages": (2, 2)}, {"scheme": "euler", "stages": (1, 1, 1, 1)},
                               {"scheme": "euler", "stages": (2, 2)}]
    # two k settings of an lm layout without an LM step: one network, without any euler in the space
    k_twins = load_space(_space(tmp_path, "{scheme: lm, stages: [[1, 1, 1, 1], [2, 2]], depth: 10, width: 4, "
                                          "lm_k: [scalar, channel]}"))
    assert k_twins.num_samples == 3 and len(k_twins.notes) == 1
