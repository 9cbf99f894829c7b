"""Search-space files: parsing, conditional sampling, grids, and one test per kind of bad file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

from lmsearch.arch import ArchSpec
from lmsearch.space import SpaceError, load_space

REPO = Path(__file__).resolve().parent.parent

GOOD = """
name: unit
dataset: {name: fashion-mnist, subset: 500}
budget: {epochs: 2}
architecture:
  scheme: [euler, lm, rk2]
  depth: {euler: [8, 14], lm: [14, 20], rk2: [14, 26]}
  width: [4, 8]
  noise: [none, stochastic_depth]
  noise_prob: {low: 0.1, high: 0.5}
training:
  lr: {low: 0.01, high: 0.2, log: true}
  batch_size: [32, 64]
search: {sampler: tpe, num_samples: 5, seed: 3}
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_space_parses_with_defaults(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    assert space.name == "unit" and space.dataset == "fashion-mnist" and space.subset == 500
    assert space.epochs == 2 and space.num_samples == 5 and space.seed == 3
    assert space.metric_names == ["val_acc", "params"] and space.modes == ["max", "min"]
    assert space.train["lr"].log and space.train["lr"].low == 0.01
    assert space.train["seed"].choices == (0,)  # default training value, fixed
    assert space.cpu == 1.0 and space.gpu == 0.0


def test_suggest_respects_conditions_and_builds_valid_specs(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen_noise = set()
    for _ in range(40):
        trial = study.ask()
        config = space.suggest(trial)
        arch = config["arch"]
        spec = space.arch_spec(arch, in_channels=1, num_classes=10)
        assert isinstance(spec, ArchSpec)
        # depth comes from the scheme's own list, under a per-scheme Optuna name
        assert f"depth_{arch['scheme']}" in trial.params
        assert ("noise_prob" in trial.params) == (arch["noise"] == "stochastic_depth")
        seen_noise.add(arch["noise"])
        study.tell(trial, [0.5, 1.0])
    assert seen_noise == {"none", "stochastic_depth"}


def test_grid_enumerates_every_combination(tmp_path: Path) -> None:
    path = write(tmp_path, """
        architecture:
          scheme: [euler, lm]
          depth: [14, 20, 26]
          width: 4
        training:
          seed: [1, 2]
        search: {sampler: grid}
    """)
    space = load_space(path)
    grid = space.grid()
    assert len(grid) == 2 * 3 * 2 == space.num_samples  # num_samples defaults to the grid size
    assert {(p["scheme"], p["depth"], p["seed"]) for p in grid} == {
        (s, d, seed) for s in ("euler", "lm") for d in (14, 20, 26) for seed in (1, 2)}
    assert all("width" not in p for p in grid)  # fixed values are not Optuna parameters
    # seeds vary slowest: the first six points are every architecture with seed 1
    assert [p["seed"] for p in grid] == [1] * 6 + [2] * 6


@pytest.mark.parametrize(
    "text, key, fragment",
    [
        ("architecture: {scheme: lm, colour: red}", "architecture.colour", "unknown key; allowed: scheme"),
        ("budget: {epochs: two}", "budget.epochs", "must be an integer; got 'two'"),
        ("budget: {epochs: 0}", "budget.epochs", "must be >= 1"),
        ("architecture: {scheme: []}", "architecture.scheme", "choices are empty"),
        ("training: {lr: {low: 0.5, high: 0.1}}", "training.lr", "range is upside down: low=0.5 > high=0.1"),
        ("architecture: {depth: [20, 21]}", "architecture.depth", "21 is impossible with scheme=euler"),
        ("architecture: {scheme: rk2, depth: [20]}", "architecture.depth", "depth must be 12n+2"),
        ("dataset: mnist-digits", "dataset.name", "'mnist-digits' is not allowed; allowed: fashion-mnist"),
        ("architecture: {scheme: [euler, heun]}", "architecture.scheme[1]", "'heun' is not allowed"),
        ("search: {sampler: annealing}", "search.sampler", "allowed: tpe, nsga2, gp, random, grid"),
        ("search: {pruner: magic}", "search.pruner.name", "allowed: none, pareto"),
        ("objectives: [{name: accuracy}]", "objectives[0].name", "allowed: val_acc"),
        ("architecture: {noise: stochastic_depth}", "architecture.noise_prob", "is required"),
        ("max_params: 10", "max_params", "no architecture of the space has <= 10 parameters"),
        ("training: {lr: {low: 0.0, high: 0.1, log: true}}", "training.lr.low", "must be > 0"),
        ("resources: {gpu: -1}", "resources.gpu", "must be >= 0"),
        ("training: {lr: {low: 0.01, high: 0.1}}\nsearch: {sampler: grid}", "training.lr", "sampler=grid"),
        ("architecture: {scheme: rev, width: [3, 4], depth: 26}", "architecture.width", "width must be even"),
        ("just a string", "(file)", "must be a mapping"),
    ],
)
def test_bad_space_names_file_key_and_allowed(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and fragment in message
    if key != "(file)":
        assert info.value.key == key
    else:
        assert "mapping" in message


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(write(tmp_path, "architecture: [unclosed"))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "search_spaces").glob("*.yaml")))
def test_shipped_spaces_validate(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()  # the CIFAR spaces' data_dir ~/data must exist
    monkeypatch.setenv("HOME", str(tmp_path))
    space = load_space(REPO / "search_spaces" / name)
    assert space.num_samples >= 1
