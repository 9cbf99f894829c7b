"""Search-space files: parse and validate a YAML space before anything starts.

A space file names a dataset and its budget, the objectives, and for every
architecture and training parameter either a fixed value, a list of choices
or a range. Errors name the file, the key path, the bad value and what is
allowed; nothing is launched on a bad file. See ``search_spaces/*.yaml``.

Parameter forms::

    scheme: lm                       # fixed
    scheme: [euler, lm, rk2]         # categorical choices
    lr: {low: 0.01, high: 0.3, log: true}      # float range
    depth: {euler: [20, 32], rk2: [26, 50]}    # per-scheme choices (depth only)

Conditional parameters: ``noise_prob`` is sampled only when noise is
stochastic_depth, ``groups``/``group_width`` only when block is resnext and
``lm_k`` only when the scheme is lm.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from lmsearch.arch import ArchSpec

__all__ = ["SearchSpace", "SpaceError", "Objective", "load_space", "DATASETS", "SAMPLERS", "PRUNERS"]

# dataset -> (in_channels, num_classes): what the architectures are checked against
DATASET_SHAPES = {"fashion-mnist": (1, 10), "cifar10": (3, 10), "cifar100": (3, 100), "imagenet": (3, 1000),
                  "synthetic": (3, 10)}
DATASETS = tuple(DATASET_SHAPES)
SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")
PRUNERS = ("none", "pareto", "median", "percentile", "successive_halving", "hyperband")
OBJECTIVE_NAMES = ("val_acc", "val_loss", "params", "flops")
DIRECTIONS = ("maximize", "minimize")
SCHEDULES = ("step", "cosine")

# Architecture fields a space may set; the ArchSpec defaults fill the rest.
ARCH_KEYS = ("scheme", "depth", "width", "block", "groups", "group_width", "preact", "shortcut",
             "noise", "noise_prob", "lm_k", "stages", "stem")
TRAIN_KEYS = ("lr", "weight_decay", "batch_size", "momentum", "nesterov", "label_smoothing",
              "schedule", "warmup_epochs", "seed", "bn_recalibration")
_TRAIN_DEFAULTS: dict[str, Any] = {"lr": 0.1, "weight_decay": 5e-4, "batch_size": 128, "momentum": 0.9,
                                   "nesterov": True, "label_smoothing": 0.0, "schedule": "cosine",
                                   "warmup_epochs": 0, "seed": 0, "bn_recalibration": 0}
_CONDITIONS = {  # parameter -> (field it depends on, values that switch it on)
    "noise_prob": ("noise", ("stochastic_depth",)),
    "groups": ("block", ("resnext",)),
    "group_width": ("block", ("resnext",)),
    "lm_k": ("scheme", ("lm",)),
}
_TOP_KEYS = ("name", "dataset", "budget", "objectives", "max_params", "architecture", "training",
             "search", "resources")


class SpaceError(ValueError):
    """A search-space file is invalid; the message names file, key path and what is allowed."""

    def __init__(self, path: str | Path, key: str, message: str) -> None:
        self.path, self.key = str(path), key
        super().__init__(f"{path}: {key}: {message}")


class Suggester(Protocol):  # the part of optuna.Trial a space uses
    number: int

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int: ...


# --------------------------------------------------------------------------- params
@dataclass(frozen=True)
class Param:
    """One parameter: fixed (``choices`` of one), categorical, or a numeric range."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @property
    def is_fixed(self) -> bool:
        return self.choices is not None and len(self.choices) == 1

    def values(self) -> tuple[Any, ...]:
        """Every value for categorical parameters; the two ends of a range."""
        return self.choices if self.choices is not None else (self.low, self.high)

    def suggest(self, trial: Suggester, name: str | None = None) -> Any:
        name = name or self.name
        if self.is_fixed:
            return self.choices[0]  # type: ignore[index]
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)  # type: ignore[arg-type]
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str

    @property
    def mode(self) -> str:
        """Ray Tune's spelling of the direction."""
        return "max" if self.direction == "maximize" else "min"


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space (build with :func:`load_space`)."""

    path: str
    name: str
    dataset: str
    data_dir: str | None
    subset: int | None
    val_fraction: float
    epochs: int
    objectives: tuple[Objective, ...]
    max_params: int | None
    arch: dict[str, Param]
    depth_by_scheme: dict[str, Param] | None
    train: dict[str, Param]
    sampler: str
    num_samples: int
    seed: int
    pruner: dict[str, Any]
    cpu: float
    gpu: float
    max_failures: int
    max_concurrent: int | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    # ------------------------------------------------------------- sampling
    def suggest(self, trial: Suggester) -> dict[str, Any]:
        """Define-by-run: sample one configuration; returns ``{"arch": {...}, "train": {...}}``."""
        arch: dict[str, Any] = {}
        for key in ARCH_KEYS:
            if key == "depth" and self.depth_by_scheme is not None:
                arch["depth"] = self.depth_by_scheme[arch["scheme"]].suggest(trial, f"depth_{arch['scheme']}")
                continue
            param = self.arch.get(key)
            if param is None or not self._active(key, arch):
                continue
            arch[key] = param.suggest(trial)
        train = {key: self.train[key].suggest(trial) for key in TRAIN_KEYS}
        return {"arch": arch, "train": train}

    @staticmethod
    def _active(key: str, arch: dict[str, Any]) -> bool:
        cond = _CONDITIONS.get(key)
        return cond is None or arch.get(cond[0], ArchSpec.__dataclass_fields__[cond[0]].default) in cond[1]

    def arch_points(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Every combination of the categorical architecture choices, conditions applied.

        Yields ``(optuna_params, arch_fields)``: the first keyed by Optuna parameter
        names (fixed values are not Optuna parameters), the second by ArchSpec
        fields. A range (only noise_prob may be one) is represented by its upper end.
        """

        def walk(i: int, point: dict[str, Any], arch: dict[str, Any]) -> Iterator[tuple[dict, dict]]:
            if i == len(ARCH_KEYS):
                yield point, arch
                return
            key = ARCH_KEYS[i]
            if key == "depth" and self.depth_by_scheme is not None:
                name, param = f"depth_{arch['scheme']}", self.depth_by_scheme[arch["scheme"]]
            else:
                name, param = key, self.arch.get(key)
                if param is None or not self._active(key, arch):
                    yield from walk(i + 1, point, arch)
                    return
            for value in param.choices if param.choices is not None else (param.high,):
                named = point if param.is_fixed else {**point, name: value}
                yield from walk(i + 1, named, {**arch, key: value})

        yield from walk(0, {}, {})

    def grid(self) -> list[dict[str, Any]]:
        """Every point of a ``sampler: grid`` space, keyed by Optuna parameter names."""
        # Training choices (seeds) vary slowest, so a grid cut short still covers
        # every architecture once before it repeats any.
        points = [point for point, _ in self.arch_points()]
        for key, param in self.train.items():
            if not param.is_fixed:
                points = [{**p, key: v} for v in param.choices or () for p in points]
        return points

    def arch_spec(self, arch: dict[str, Any], *, in_channels: int, num_classes: int) -> ArchSpec:
        """The ArchSpec of a sampled architecture for a dataset's shape."""
        return ArchSpec(**arch, in_channels=in_channels, num_classes=num_classes)

    @property
    def metric_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]


# --------------------------------------------------------------------------- parsing
class _Reader:
    """Typed access to the YAML tree that turns every problem into a SpaceError."""

    def __init__(self, path: str | Path) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> SpaceError:
        return SpaceError(self.path, key, message)

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key or "(file)", f"must be a mapping; got {type(value).__name__} {value!r}")
        unknown = [k for k in value if k not in allowed]
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}" if key else str(unknown[0]),
                            f"unknown key; allowed: {', '.join(allowed)}")
        return value

    def number(self, value: Any, key: str, *, integer: bool = False, low: float | None = None,
               high: float | None = None, low_open: bool = False) -> Any:
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or (isinstance(value, float) and math.isnan(value)):
            kind = "an integer" if integer else "a number"
            raise self.fail(key, f"must be {kind}; got {value!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise self.fail(key, f"must be {'>' if low_open else '>='} {low}; got {value!r}")
        if high is not None and value > high:
            raise self.fail(key, f"must be <= {high}; got {value!r}")
        return value

    def choice(self, value: Any, key: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.fail(key, f"{value!r} is not allowed; allowed: {', '.join(allowed)}")
        return value

    def param(self, value: Any, key: str, check: Any) -> Param:
        """Parse a fixed value, a list of choices or a {low, high, log} range; ``check`` validates one value."""
        name = key.rsplit(".", 1)[-1]
        if isinstance(value, dict) and ("low" in value or "high" in value):
            spec = self.mapping(value, key, ("low", "high", "log"))
            if "low" not in spec or "high" not in spec:
                raise self.fail(key, "a range needs both low and high")
            low, high = check(spec["low"], f"{key}.low"), check(spec["high"], f"{key}.high")
            if low > high:
                raise self.fail(key, f"range is upside down: low={low} > high={high}")
            log = spec.get("log", False)
            if not isinstance(log, bool):
                raise self.fail(f"{key}.log", f"must be true or false; got {log!r}")
            if log and low <= 0:
                raise self.fail(f"{key}.low", f"must be > 0 for a log range; got {low}")
            integer = isinstance(low, int) and isinstance(high, int)
            return Param(name, low=low, high=high, log=log, integer=integer)
        if isinstance(value, dict) and "choices" in value:
            value = self.mapping(value, key, ("choices",))["choices"]
        if isinstance(value, list):
            if not value:
                raise self.fail(key, "choices are empty; give at least one value")
            values = tuple(check(v, f"{key}[{i}]") for i, v in enumerate(value))
            if len(set(map(repr, values))) != len(values):
                raise self.fail(key, f"choices repeat a value: {list(values)}")
            return Param(name, choices=values)
        return Param(name, choices=(check(value, key),))


def load_space(path: str | Path, *, name: str | None = None) -> SearchSpace:
    """Read and validate a search-space YAML file.

    Raises:
        SpaceError: naming the file, the key path, the bad value and what is allowed.
        FileNotFoundError: the file does not exist.

    Example:
        >>> space = load_space("search_spaces/fashion_quick.yaml")  # doctest: +SKIP
        >>> space.metric_names
        ['val_acc', 'params']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search-space file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(path, "(file)", f"is not valid YAML: {exc}") from None
    r = _Reader(path)
    top = r.mapping(doc, "", _TOP_KEYS)
    if not top:
        raise r.fail("(file)", "is empty; see search_spaces/fashion_quick.yaml for an example")

    exp_name = name or top.get("name") or path.stem
    if not isinstance(exp_name, str) or not exp_name or "/" in exp_name:
        raise r.fail("name", f"must be a non-empty string without '/'; got {exp_name!r}")

    ds = top.get("dataset", "fashion-mnist")
    ds = {"name": ds} if isinstance(ds, str) else r.mapping(ds, "dataset", ("name", "data_dir", "subset", "val_fraction"))
    dataset = r.choice(ds.get("name", "fashion-mnist"), "dataset.name", DATASETS)
    subset = ds.get("subset")
    if subset is not None:
        r.number(subset, "dataset.subset", integer=True, low=1)
    val_fraction = r.number(ds.get("val_fraction", 0.1), "dataset.val_fraction", low=0, high=0.9, low_open=True)
    data_dir = ds.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise r.fail("dataset.data_dir", f"must be a path string; got {data_dir!r}")

    budget = r.mapping(top.get("budget"), "budget", ("epochs",))
    epochs = r.number(budget.get("epochs", 1), "budget.epochs", integer=True, low=1)

    objectives = _parse_objectives(r, top.get("objectives"))
    max_params = top.get("max_params")
    if max_params is not None:
        r.number(max_params, "max_params", integer=True, low=1)

    arch, depth_by_scheme = _parse_architecture(r, top.get("architecture"))
    train = _parse_training(r, top.get("training"))

    search = r.mapping(top.get("search"), "search", ("sampler", "num_samples", "seed", "pruner", "max_concurrent"))
    sampler = r.choice(search.get("sampler", "tpe"), "search.sampler", SAMPLERS)
    pruner = _parse_pruner(r, search.get("pruner", "none"))
    seed = r.number(search.get("seed", 0), "search.seed", integer=True, low=0)
    max_concurrent = search.get("max_concurrent")
    if max_concurrent is not None:
        r.number(max_concurrent, "search.max_concurrent", integer=True, low=1)

    res = r.mapping(top.get("resources"), "resources", ("cpu", "gpu", "max_failures"))
    cpu = r.number(res.get("cpu", 1), "resources.cpu", low=0, low_open=True)
    gpu = r.number(res.get("gpu", 0), "resources.gpu", low=0)
    max_failures = r.number(res.get("max_failures", 1), "resources.max_failures", integer=True, low=-1)

    space = SearchSpace(
        path=str(path), name=exp_name, dataset=dataset, data_dir=data_dir, subset=subset,
        val_fraction=float(val_fraction), epochs=epochs, objectives=objectives, max_params=max_params,
        arch=arch, depth_by_scheme=depth_by_scheme, train=train, sampler=sampler, num_samples=0,
        seed=seed, pruner=pruner, cpu=float(cpu), gpu=float(gpu), max_failures=max_failures,
        max_concurrent=max_concurrent, raw=doc,
    )
    _check_architectures(r, space)
    if sampler == "grid":
        _check_grid(r, space)
        default_samples = len(space.grid())
    else:
        default_samples = 10
    num_samples = r.number(search.get("num_samples", default_samples), "search.num_samples", integer=True, low=1)
    object.__setattr__(space, "num_samples", num_samples)
    return space


def _parse_objectives(r: _Reader, value: Any) -> tuple[Objective, ...]:
    if value is None:
        return (Objective("val_acc", "maximize"), Objective("params", "minimize"))
    if not isinstance(value, list) or not value:
        raise r.fail("objectives", f"must be a non-empty list of {{name, direction}}; got {value!r}")
    out = []
    for i, item in enumerate(value):
        key = f"objectives[{i}]"
        item = r.mapping(item, key, ("name", "direction"))
        obj_name = r.choice(item.get("name"), f"{key}.name", OBJECTIVE_NAMES)
        default = "maximize" if obj_name == "val_acc" else "minimize"
        out.append(Objective(obj_name, r.choice(item.get("direction", default), f"{key}.direction", DIRECTIONS)))
    names = [o.name for o in out]
    if len(set(names)) != len(names):
        raise r.fail("objectives", f"names repeat: {names}")
    if not any(n in ("val_acc", "val_loss") for n in names):
        raise r.fail("objectives", "need a trained objective (val_acc or val_loss) besides params/flops")
    return tuple(out)


def _arch_checkers(r: _Reader) -> dict[str, Any]:
    from lmsearch.arch import BLOCKS, LM_K_MODES, NOISES, SHORTCUTS, STEMS
    from lmsearch.nn.registry import scheme_names

    def of(allowed: tuple[str, ...]) -> Any:
        return lambda v, k: r.choice(v, k, allowed)

    def integer(low: int) -> Any:
        return lambda v, k: r.number(v, k, integer=True, low=low)

    def boolean(v: Any, k: str) -> bool:
        if not isinstance(v, bool):
            raise r.fail(k, f"must be true or false; got {v!r}")
        return v

    def stages(v: Any, k: str) -> tuple[int, ...]:
        if not isinstance(v, list) or not v:
            raise r.fail(k, f"must be a list of functions per stage, e.g. [3, 3, 3]; got {v!r}")
        return tuple(r.number(n, f"{k}[{i}]", integer=True, low=1) for i, n in enumerate(v))

    return {
        "scheme": of(scheme_names()), "block": of(BLOCKS), "noise": of(NOISES), "shortcut": of(SHORTCUTS),
        "lm_k": of(LM_K_MODES), "stem": of(STEMS), "depth": integer(3), "width": integer(1),
        "groups": integer(1), "group_width": integer(1), "preact": boolean,
        "noise_prob": lambda v, k: r.number(v, k, low=0, high=1, low_open=True), "stages": stages,
    }


def _parse_architecture(r: _Reader, value: Any) -> tuple[dict[str, Param], dict[str, Param] | None]:
    section = r.mapping(value, "architecture", ARCH_KEYS)
    checkers = _arch_checkers(r)
    arch: dict[str, Param] = {}
    depth_by_scheme = None
    for key, raw in section.items():
        path = f"architecture.{key}"
        if key == "depth" and isinstance(raw, dict) and not ({"low", "high", "choices"} & set(raw)):
            continue  # per-scheme depths: parsed once the schemes are known
        if key == "stages" and isinstance(raw, list) and raw and not isinstance(raw[0], list):
            raw = [raw]  # a single layout, not a list of layouts
        param = r.param(raw, path, checkers[key])
        if key in ("scheme", "block", "noise", "width", "depth", "groups", "group_width", "stages") \
                and param.choices is None:
            raise r.fail(path, "must be a fixed value or a list of choices (ranges are for noise_prob and training)")
        arch[key] = param
    arch.setdefault("scheme", Param("scheme", choices=("euler",)))
    raw_depth = section.get("depth")
    if isinstance(raw_depth, dict) and not ({"low", "high", "choices"} & set(raw_depth)):
        schemes = arch["scheme"].choices or ()
        given = r.mapping(raw_depth, "architecture.depth", tuple(schemes))
        missing = [s for s in schemes if s not in given]
        if missing:
            raise r.fail("architecture.depth", f"per-scheme depths miss scheme(s) {', '.join(missing)}")
        depth_by_scheme = {s: r.param(given[s], f"architecture.depth.{s}", checkers["depth"]) for s in schemes}
    elif "depth" not in arch:
        arch["depth"] = Param("depth", choices=(ArchSpec.depth,))
    if "noise" in arch and "stochastic_depth" in (arch["noise"].choices or ()) and "noise_prob" not in arch:
        raise r.fail("architecture.noise_prob", "is required when noise may be stochastic_depth (e.g. 0.5)")
    if "block" in arch and "resnext" in (arch["block"].choices or ()):
        for k in ("groups", "group_width"):
            if k not in arch:
                raise r.fail(f"architecture.{k}", "is required when block may be resnext")
    return arch, depth_by_scheme


def _parse_training(r: _Reader, value: Any) -> dict[str, Param]:
    section = r.mapping(value, "training", TRAIN_KEYS)

    def positive(v: Any, k: str) -> float:
        return r.number(v, k, low=0, low_open=True)

    def non_negative(v: Any, k: str) -> float:
        return r.number(v, k, low=0)

    def boolean(v: Any, k: str) -> bool:
        if not isinstance(v, bool):
            raise r.fail(k, f"must be true or false; got {v!r}")
        return v

    checkers = {
        "lr": positive, "weight_decay": non_negative, "momentum": lambda v, k: r.number(v, k, low=0, high=1),
        "batch_size": lambda v, k: r.number(v, k, integer=True, low=1), "nesterov": boolean,
        "label_smoothing": lambda v, k: r.number(v, k, low=0, high=0.99),
        "schedule": lambda v, k: r.choice(v, k, SCHEDULES),
        "warmup_epochs": lambda v, k: r.number(v, k, integer=True, low=0),
        "seed": lambda v, k: r.number(v, k, integer=True, low=0),
        "bn_recalibration": lambda v, k: r.number(v, k, integer=True, low=0),
    }
    return {key: r.param(section.get(key, _TRAIN_DEFAULTS[key]), f"training.{key}", checkers[key]) for key in TRAIN_KEYS}


def _parse_pruner(r: _Reader, value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"name": value}
    value = r.mapping(value, "search.pruner", ("name", "eta", "min_epochs", "percentile", "warmup_epochs",
                                               "tie_break"))
    out = {"name": r.choice(value.get("name", "none"), "search.pruner.name", PRUNERS)}
    if "eta" in value:
        out["eta"] = r.number(value["eta"], "search.pruner.eta", integer=True, low=2)
    for key in ("min_epochs", "warmup_epochs"):
        if key in value:
            out[key] = r.number(value[key], f"search.pruner.{key}", integer=True, low=1 if key == "min_epochs" else 0)
    if "percentile" in value:
        out["percentile"] = r.number(value["percentile"], "search.pruner.percentile", low=0, high=100)
    if "tie_break" in value:
        out["tie_break"] = r.choice(value["tie_break"], "search.pruner.tie_break", ("crowding", "hypervolume"))
    return out


def _check_architectures(r: _Reader, space: SearchSpace) -> None:
    """Build every categorical combination as an ArchSpec so impossible ones fail now, not mid-search."""
    in_channels, num_classes = DATASET_SHAPES[space.dataset]
    within_budget = space.max_params is None
    for _, arch in space.arch_points():
        try:
            spec = ArchSpec(**arch, in_channels=in_channels, num_classes=num_classes)
        except ValueError as exc:
            field = str(exc).split(" ", 1)[0]  # ArchSpec messages start with the field name
            if field == "depth" and space.depth_by_scheme:
                key = f"architecture.depth.{arch['scheme']}"
            else:
                key = f"architecture.{field if field in ARCH_KEYS else 'depth'}"
            where = ", ".join(f"{k}={arch[k]}" for k in ("scheme", "block", "width", "depth") if k in arch)
            hint = "; give per-scheme depths as {scheme: [depths]}" if field == "depth" and not space.depth_by_scheme else ""
            raise r.fail(key, f"{arch.get(field, '')!r} is impossible with {where}: {exc}{hint}") from None
        if not within_budget and _count_params(spec) <= space.max_params:
            within_budget = True
    if not within_budget:
        raise r.fail("max_params", f"no architecture of the space has <= {space.max_params} parameters")


def _count_params(spec: ArchSpec) -> int:
    from lmsearch.nn.counting import count_params

    return count_params(spec)


def _check_grid(r: _Reader, space: SearchSpace) -> None:
    ranged = [f"architecture.{k}" for k, p in space.arch.items() if p.choices is None]
    ranged += [f"training.{k}" for k, p in space.train.items() if p.choices is None]
    if ranged:
        raise r.fail(ranged[0], "sampler=grid needs fixed values or lists of choices, not ranges")
