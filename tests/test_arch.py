"""ArchSpec: JSON round trip, derived structure, and every invalid spec rejected with its message."""

from __future__ import annotations

import json
import re

import pytest

from lmsearch.arch import ArchSpec

ROUND_TRIP = [
    ArchSpec(),
    ArchSpec(scheme="lm", depth=56, width=16, lm_k="channel", lm_k_init=(-0.2, 0.1), in_channels=1),
    ArchSpec(scheme="rev", depth=26, width=8, noise="stochastic_depth", noise_prob=0.25),
    ArchSpec(scheme="rk2", depth=26, noise="shake_shake", preact=False, shortcut="pad"),
    ArchSpec(scheme="lm", depth=50, width=64, stages=(3, 4, 6, 3), block="bottleneck", stem="imagenet",
             preact=False, num_classes=1000),
    ArchSpec(scheme="poly", depth=29, width=64, block="resnext", groups=8, group_width=64, num_classes=100),
]


@pytest.mark.parametrize("spec", ROUND_TRIP, ids=lambda s: f"{s.scheme}-{s.depth}-{s.block}")
def test_json_round_trip(spec: ArchSpec) -> None:
    text = spec.to_json()
    assert isinstance(json.loads(text), dict)  # plain JSON, no custom types
    again = ArchSpec.from_json(text)
    assert again == spec
    assert again.stage_functions == spec.stage_functions
    assert hash(again) == hash(spec)
    assert ArchSpec.from_dict(json.loads(text)).to_dict() == spec.to_dict()


def test_lists_from_json_become_tuples() -> None:
    spec = ArchSpec.from_dict({"stages": [3, 4, 6, 3], "depth": 34, "lm_k_init": [-0.1, 0.0]})
    assert spec.stages == (3, 4, 6, 3) and spec.lm_k_init == (-0.1, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "functions", "steps", "channels"),
    [
        ({"depth": 20}, (3, 3, 3), (3, 3, 3), (16, 32, 64)),
        ({"depth": 110, "scheme": "rev"}, (18, 18, 18), (9, 9, 9), (16, 32, 64)),
        ({"depth": 26, "scheme": "rk4"}, (4, 4, 4), (1, 1, 1), (16, 32, 64)),
        ({"depth": 29, "block": "resnext", "groups": 8, "group_width": 64, "width": 64}, (3, 3, 3), (3, 3, 3),
         (256, 512, 1024)),
        ({"depth": 50, "stem": "imagenet", "block": "bottleneck", "width": 64}, (4, 4, 4, 4), (4, 4, 4, 4),
         (256, 512, 1024, 2048)),
    ],
)
def test_derived_structure(kwargs: dict, functions: tuple, steps: tuple, channels: tuple) -> None:
    spec = ArchSpec(**kwargs)
    assert spec.stage_functions == functions
    assert spec.steps_per_stage == steps
    assert spec.stage_channels == channels


INVALID = [
    ({"scheme": "midpoint"}, "scheme must be one of euler, lm, rk2, rk4, poly, rev; got 'midpoint'"),
    ({"depth": 21}, "depth must be 6n+2 for block=basic, scheme=euler, 3 stages: 8, 14, 20, 26, ...; got 21"),
    ({"scheme": "rk2", "depth": 20}, "depth must be 12n+2 for block=basic, scheme=rk2"),
    ({"scheme": "rk4", "depth": 20}, "depth must be 24n+2 for block=basic, scheme=rk4"),
    ({"block": "bottleneck", "depth": 20, "stem": "imagenet"}, "depth must be 12n+2 for block=bottleneck"),
    ({"scheme": "rk2", "depth": 20, "stages": (3, 3, 3)}, "stages must hold a multiple of 2 functions each for scheme=rk2"),
    ({"scheme": "rev", "depth": 26, "width": 15}, "width must be even for scheme=rev"),
    ({"depth": 20, "stages": (3, 3)}, "depth must be 14 for stages=[3, 3] with block=basic"),
    ({"depth": 8, "stages": (0, 3)}, "stages must be a non-empty list of integers >= 1"),
    ({"depth": 8, "stages": ()}, "stages must be a non-empty list of integers >= 1"),
    ({"depth": 2}, "depth must be an integer >= 3; got 2"),
    ({"depth": True}, "depth must be an integer >= 3; got True"),
    ({"width": 0}, "width must be an integer >= 1; got 0"),
    ({"width": 16.0}, "width must be an integer >= 1; got 16.0"),
    ({"in_channels": 0}, "in_channels must be an integer >= 1"),
    ({"num_classes": 0}, "num_classes must be an integer >= 1"),
    ({"block": "dense"}, "block must be one of basic, bottleneck, resnext; got 'dense'"),
    ({"noise": "dropout"}, "noise must be one of none, stochastic_depth, shake_shake; got 'dropout'"),
    ({"stem": "tiny"}, "stem must be one of small, imagenet; got 'tiny'"),
    ({"shortcut": "identity"}, "shortcut must be one of conv, pad, preact_conv; got 'identity'"),
    ({"shortcut": "preact_conv", "preact": False}, "shortcut=preact_conv (BN-ReLU-conv) is only for pre-activation nets"),
    ({"lm_k": "vector"}, "lm_k must be one of scalar, channel; got 'vector'"),
    ({"preact": "yes"}, "preact must be true or false; got 'yes'"),
    ({"groups": 2}, "groups/group_width are only for block=resnext"),
    ({"block": "resnext", "depth": 29}, "group_width must be >= 1 for block=resnext; got 0"),
    ({"block": "bottleneck", "depth": 29, "shortcut": "pad"}, "shortcut=pad is only for block=basic; got block=bottleneck"),
    ({"noise_prob": 0.1}, "noise_prob must be 0 unless noise=stochastic_depth; got 0.1 with noise=none"),
    ({"noise": "shake_shake", "noise_prob": 0.1}, "noise_prob must be 0 unless noise=stochastic_depth"),
    ({"noise": "stochastic_depth"}, re.escape("noise_prob must be in (0, 1) for noise=stochastic_depth; got 0.0")),
    ({"noise": "stochastic_depth", "noise_prob": 1.0}, re.escape("noise_prob must be in (0, 1)")),
    ({"noise": "stochastic_depth", "noise_prob": "0.5"}, "noise_prob must be a number"),
    ({"lm_k_init": (0.0, -0.1)}, "lm_k_init must be a pair \\[low, high\\] with low <= high"),
    ({"lm_k_init": (0.0,)}, "lm_k_init must be a pair"),
]


@pytest.mark.parametrize(("kwargs", "message"), INVALID, ids=[m[:40] for _, m in INVALID])
def test_invalid_spec_rejected_with_its_message(kwargs: dict, message: str) -> None:
    pattern = message if "\\" in message else re.escape(message)
    with pytest.raises(ValueError, match=pattern):
        ArchSpec(**kwargs)


def test_from_dict_rejects_unknown_fields_and_non_mappings() -> None:
    with pytest.raises(ValueError, match="unknown ArchSpec field\\(s\\) colour, depht; allowed: "):
        ArchSpec.from_dict({"depht": 20, "colour": "red"})
    with pytest.raises(ValueError, match="an architecture must be a mapping of fields; got list"):
        ArchSpec.from_dict([1, 2])


def test_replace_validates() -> None:
    spec = ArchSpec(scheme="lm", depth=20)
    assert spec.replace(depth=56).stage_functions == (9, 9, 9)
    with pytest.raises(ValueError, match="depth must be 12n\\+2 for block=basic, scheme=rev"):
        spec.replace(scheme="rev")


@pytest.mark.parametrize("spec", [
    *[ArchSpec(base=name) for name in ("torchvision:resnet18", "torchvision:resnet50", "torchvision:resnext50_32x4d",
                                       "torchvision:wide_resnet50_2")],
    *[ArchSpec(scheme=scheme, depth=depth, width=width)
      for scheme, depth in (("euler", 20), ("lm", 32), ("rk2", 26), ("poly", 14), ("rev", 26)) for width in (4, 16)],
    *[ArchSpec(scheme=scheme, depth=29, width=8, block="bottleneck") for scheme in ("euler", "lm")],
    ArchSpec(block="resnext", depth=29, groups=4, group_width=4),
], ids=str)
def test_min_params_is_a_lower_bound_of_the_count(spec: ArchSpec) -> None:
    """What build_model's size guard relies on: it never refuses a net that is small enough."""
    from lmsearch.nn.counting import count_params

    assert 0 < spec.min_params() <= count_params(spec)
