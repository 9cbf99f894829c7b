"""Search-space files: parse and validate a YAML space before anything starts.

A space file names a dataset and its budget, the objectives, and for every
architecture and training parameter either a fixed value, a list of choices
or a range. Errors name the file, the key path, the bad value (its echo
capped at ~200 characters) and what is allowed, on one line; nothing is
launched on a bad file. See ``search_spaces/*.yaml``.

Parameter forms::

    scheme: lm                       # fixed
    scheme: [euler, lm, rk2]         # categorical choices
    lr: {low: 0.01, high: 0.3, log: true}      # float range
    depth: {euler: [20, 32], rk2: [26, 50]}    # per-scheme choices (depth only)

Conditional parameters: ``noise_prob`` is sampled only when noise is
stochastic_depth, ``groups``/``group_width`` only when block is resnext and
``lm_k`` and ``k_init`` (``zero`` or ``paper``: k_n starting at 0 or drawn from
U(-0.1, 0)) only when the scheme is lm. Without ``k_init`` an lm net of
lmsearch's own starts from ``paper`` (ArchSpec's default, as always), an lm net
on a torchvision ``base`` from ``zero`` (as :func:`lmsearch.to_lm` and
``lmsearch train torchvision:NAME --lm``: it starts as the original network).

A torchvision network as the base (:func:`lmsearch.to_lm`)::

    architecture: {base: torchvision:resnet18, scheme: [euler, lm], k_init: [zero, paper],
                   noise: [none, stochastic_depth], noise_prob: 0.2}

searches scheme x k-init x stochastic depth (and ``lm_k``) on that one base;
the base sets depth, width, stages, block, groups, group_width, preact,
shortcut and stem, so the file gives none of them.

Your own images: ``dataset: {name: folder, data_dir: DIR, image_size: 64}``
with ``DIR/train/<class>/<image>`` and ``DIR/val/<class>/<image>`` (or
``test/``), where ``val/`` is the test split; or ``DIR/train/<class>/`` or
``DIR/<class>/`` alone, where ``test_fraction`` (default 0.1) of the images
is held out as the test split. As for every dataset, the validation split is
``val_fraction`` of the training images held out with the search seed.

Every value a parameter can take is checked, not just the ones written: both
ends of a range, every choice, and every architecture the choices combine
to, whose arithmetic lower bound of parameters (:meth:`ArchSpec.min_params`) must
stay below :data:`MAX_ARCH_PARAMS`.
"""

from __future__ import annotations

import math
import os
import re
import reprlib
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import yaml

from lmsearch.arch import MAX_ARCH_PARAMS, ArchSpec

__all__ = ["SearchSpace", "SpaceError", "Objective", "load_space", "DATASETS", "SAMPLERS", "PRUNERS",
           "MAX_WIDTH", "MAX_DEPTH", "MAX_ARCH_PARAMS", "parse_duration"]

# dataset -> (in_channels, num_classes): what the architectures are checked against.
# A folder's classes are its class folders, counted when the space is loaded.
DATASET_SHAPES: dict[str, tuple[int, int | None]] = {
    "fashion-mnist": (1, 10), "cifar10": (3, 10), "cifar100": (3, 100), "imagenet": (3, 1000),
    "folder": (3, None), "synthetic": (3, 10)}
DATASETS = tuple(DATASET_SHAPES)
IMAGE_FOLDERS = ("folder", "imagenet")  # read from <data_dir>/train and <data_dir>/val (or test)
# training images of the fixed datasets, to check dataset.subset against
TRAIN_SIZES = {"fashion-mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000, "synthetic": 5_000}
SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")
PRUNERS = ("none", "pareto", "median", "percentile", "successive_halving", "hyperband")
OBJECTIVE_NAMES = ("val_acc", "val_loss", "params", "flops")
DIRECTIONS = ("maximize", "minimize")
SCHEDULES = ("step", "cosine")

# Limits. Integers end up in trials.csv, read back as int64; Optuna's samplers
# take numpy seeds (< 2^32); Ray cannot schedule less than 0.0001 of a resource.
MAX_INT = 2**63 - 1
MAX_SEARCH_SEED = 2**32 - 1
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 2**20
MAX_SAMPLES = 1_000_000
MAX_WIDTH = 1024  # channels of the first stage (the paper: 16; WRN-28-10: 160)
MAX_DEPTH = 2000  # weighted layers (ResNet-1202 and the 1001-layer pre-activation net fit)
MAX_GROUPS = 1024
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 2048
RAY_MIN_RESOURCE = 1e-4
MAX_CPU, MAX_GPU = 4096, 1024
MAX_NAME = 100
MAX_FILE_BYTES = 1_000_000
MAX_NESTING = 20  # a space file nests about 4 deep; deeper input would exhaust Python's stack
MAX_NODES = 20_000  # values after expanding aliases: stops "billion laughs" alias bombs
MAX_CHOICES = 1_000
MAX_ARCH_POINTS = 10_000
MAX_GRID_POINTS = 100_000
ECHO_CHARS = 200
MAX_MESSAGE = 1_000

# Architecture fields a space may set; the ArchSpec defaults fill the rest.
ARCH_KEYS = ("scheme", "depth", "width", "block", "groups", "group_width", "preact", "shortcut",
             "noise", "noise_prob", "lm_k", "stages", "stem", "base", "k_init")
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
    "k_init": ("scheme", ("lm",)),
}
_TOP_KEYS = ("name", "dataset", "budget", "objectives", "max_params", "architecture", "training",
             "search", "resources")
_DATASET_KEYS = ("name", "data_dir", "subset", "val_fraction", "image_size", "test_fraction")
_TEST_DIRS = ("val", "test")

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, ECHO_CHARS, ECHO_CHARS, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 10


def _echo(value: Any, limit: int = ECHO_CHARS) -> str:
    """A repr of a user's value that stays short however large or deeply shared the value is."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_name(key: Any) -> str:
    """A mapping key as it appears in a key path."""
    if isinstance(key, str) and key and key.isprintable() and len(key) <= 60:
        return key
    return _echo(key, 60)


def _join(path: str, key: Any) -> str:
    return f"{path}.{_key_name(key)}" if path else _key_name(key)


class SpaceError(ValueError):
    """A search-space file is invalid; the message names file, key path and what is allowed."""

    def __init__(self, path: str | Path, key: str, message: str) -> None:
        self.path, self.key = str(path), key
        super().__init__(_one_line(f"{path}: {key}: {message}"))


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
    """A validated search space (build with :func:`load_space`).

    ``data_root`` is ``data_dir`` made absolute (``~`` expanded) and checked;
    ``image_size`` (folder, imagenet) and ``test_fraction`` (folder) are None
    unless the file sets them, so load_dataset's defaults apply. Load the data
    with ``lmsearch.data.load_dataset(**space.dataset_kwargs())``.
    """

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
    time_budget: float | None  # seconds from a sitting's first trial after which no trial is drawn
    data_root: str | None = None
    image_size: int | None = None
    test_fraction: float | None = None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    notes: tuple[str, ...] = field(compare=False, default=())

    def dataset_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`lmsearch.data.load_dataset` for this space's data."""
        kwargs: dict[str, Any] = {"name": self.dataset, "root": self.data_root, "val_fraction": self.val_fraction,
                                  "seed": self.seed, "subset": self.subset}
        for key in ("image_size", "test_fraction"):  # load_dataset refuses them for other datasets
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        return kwargs

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
        """Every point of a ``sampler: grid`` space, keyed by Optuna parameter names.

        Points that build one network (an lm layout without an LM step is the euler net of
        that layout, whatever its k settings; see :meth:`ArchSpec.canonical`) are one point:
        the one spelt canonically when there is one, else the first listed.
        """
        # Training choices (seeds) vary slowest, so a grid cut short still covers
        # every architecture once before it repeats any.
        listed = [(point, ArchSpec(**_spec_fields(arch))) for point, arch in self.arch_points()]
        keep: dict[ArchSpec, int] = {}
        for i, (_, spec) in enumerate(listed):
            net = spec.canonical()
            if net not in keep or (spec == net and listed[keep[net]][1] != net):
                keep[net] = i
        chosen = set(keep.values())
        points = [point for i, (point, _) in enumerate(listed) if i in chosen]
        for key, param in self.train.items():
            if not param.is_fixed:
                points = [{**p, key: v} for v in param.choices or () for p in points]
        return points

    def arch_spec(self, arch: dict[str, Any], *, in_channels: int, num_classes: int) -> ArchSpec:
        """The ArchSpec of a sampled architecture for a dataset's shape (a ``k_init`` name becomes ``lm_k_init``)."""
        return ArchSpec(**_spec_fields(arch), in_channels=in_channels, num_classes=num_classes)

    @property
    def metric_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]


def _spec_fields(arch: dict[str, Any]) -> dict[str, Any]:
    """ArchSpec fields of a space's architecture values: ``k_init`` (a name) becomes the ``lm_k_init`` pair."""
    if "k_init" not in arch:
        return arch
    from lmsearch.arch import lm_k_init_range

    fields = {k: v for k, v in arch.items() if k != "k_init"}
    return {**fields, "lm_k_init": lm_k_init_range(arch["k_init"])}


# --------------------------------------------------------------------------- reading the file
class _FileProblem(Exception):
    """Raised inside the YAML loader, which does not know the file's path; becomes a SpaceError."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


class _SpaceLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing duplicate keys, deep nesting and alias bombs.

    It also reads YAML 1.2 floats without a dot (``1e-3``), which YAML 1.1
    would leave as strings.
    """

    _nesting = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # PyYAML composes recursively: refuse deep input before it exhausts the stack
        self._nesting += 1
        try:
            if self._nesting > MAX_NESTING:
                line = self.peek_event().start_mark.line + 1
                raise _FileProblem("(file)", f"nests deeper than {MAX_NESTING} levels (line {line}); "
                                             f"a space file needs about 4")
            return super().compose_node(parent, index)
        finally:
            self._nesting -= 1

    def construct_document(self, node: Any) -> Any:
        self._check_tree(node)
        return super().construct_document(node)

    def _check_tree(self, root: yaml.Node) -> None:
        """Refuse repeated keys, aliases that contain themselves, and documents too large once aliases expand."""
        sizes: dict[int, int] = {}  # node -> values under it with aliases expanded; each node walked once
        open_nodes: set[int] = set()

        def walk(node: yaml.Node, path: str) -> int:
            if id(node) in sizes:
                return sizes[id(node)]
            if id(node) in open_nodes:
                raise _FileProblem(path or "(file)", "contains itself through an alias (*name inside &name)")
            open_nodes.add(id(node))
            size = 1
            if isinstance(node, yaml.MappingNode):
                lines: dict[Any, int] = {}
                for key_node, value_node in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        size += walk(value_node, path)
                        continue
                    key = self.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                    sub, line = _join(path, key), key_node.start_mark.line + 1
                    if isinstance(key_node, yaml.ScalarNode) and key in lines:
                        raise _FileProblem(sub, f"is given twice (lines {lines[key]} and {line}); "
                                                f"a key may appear once per mapping: keep one")
                    lines[key] = line
                    size += walk(key_node, sub) + walk(value_node, sub)
            elif isinstance(node, yaml.SequenceNode):
                for i, item in enumerate(node.value):
                    size += walk(item, f"{path}[{i}]")
            open_nodes.discard(id(node))
            if size > MAX_NODES:
                raise _FileProblem(path or "(file)", f"expands to more than {MAX_NODES} values once its aliases "
                                                     f"are expanded; a space file has a few hundred")
            sizes[id(node)] = size
            return size

        walk(root, "")


_SpaceLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line saying where and what a YAML syntax error is."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character {exc.character!r} at position {exc.position} is not allowed in YAML text"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        context = f" ({exc.context})" if exc.context else ""
        return f"{where}{exc.problem or 'syntax error'}{context}"
    return " ".join(str(exc).split())


def _read_yaml(path: Path) -> Any:
    """The YAML document of a space file; every way a file can be unreadable becomes a SpaceError."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"search-space file {path} does not exist") from None
    except (OSError, ValueError) as exc:  # too long a name, no permission on a parent folder, ...
        raise SpaceError(path, "(file)", f"cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(mode):
        inside = sorted(p.name for p in path.glob("*.yaml"))[:1]
        hint = f", e.g. {path / inside[0]}" if inside else ""
        raise SpaceError(path, "(file)", f"is a directory, not a search-space file; give a YAML file{hint}")
    if not stat.S_ISREG(mode):
        raise SpaceError(path, "(file)", "is not a regular file (a pipe or a device?); give a YAML file")
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SpaceError(path, "(file)", f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise SpaceError(path, "(file)", f"is larger than {MAX_FILE_BYTES} bytes; a space file is a short YAML text")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpaceError(path, "(file)", "is UTF-16 text; save it as UTF-8")
    nul = data.find(b"\0")
    if nul >= 0:
        raise SpaceError(path, "(file)", f"is a binary file (NUL byte at offset {nul}), not YAML text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpaceError(path, "(file)", f"is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                                         f"save it as UTF-8") from None
    loader = _SpaceLoader(text)
    try:
        return loader.get_single_data()
    except _FileProblem as exc:
        raise SpaceError(path, exc.key, exc.message) from None
    except yaml.YAMLError as exc:
        raise SpaceError(path, "(file)", f"is not valid YAML: {_yaml_problem(exc)}") from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- parsing
def _num(x: float) -> str:
    """A bound as the messages print it."""
    if x == MAX_INT:
        return "2^63 - 1"
    if x == MAX_SEARCH_SEED:
        return "2^32 - 1"
    return f"{x:g}" if isinstance(x, float) else str(x)


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
            raise self.fail(key or "(file)", f"must be a mapping; got {type(value).__name__} {_echo(value)}")
        unknown = [k for k in value if k not in allowed]
        if unknown:
            raise self.fail(_join(key, unknown[0]), f"unknown key; allowed: {', '.join(allowed)}")
        return value

    def number(self, value: Any, key: str, *, integer: bool = False, low: float | None = None,
               high: float | None = None, low_open: bool = False, high_open: bool = False) -> Any:
        """``value`` checked to be a finite number (or a true integer) between ``low`` and ``high``."""
        if integer:
            high = MAX_INT if high is None else min(high, MAX_INT)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be {'an integer' if integer else 'a number'}; got {_echo(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(key, f"must be a finite number; got {_echo(value)}")
        if integer and isinstance(value, float):
            hint = f" (write {int(value)})" if value.is_integer() and abs(value) <= MAX_INT else ""
            raise self.fail(key, f"must be an integer, not a float; got {_echo(value)}{hint}")
        above = f"{'>' if low_open else '>='} {_num(low)}" if low is not None else ""
        below = f"{'<' if high_open else '<='} {_num(high)}" if high is not None else ""
        allowed = " and ".join(b for b in (above, below) if b)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise self.fail(key, f"must be {allowed}; got {_echo(value)}")
        return value

    def choice(self, value: Any, key: str, allowed: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise self.fail(key, f"{_echo(value)} is not allowed; allowed: {', '.join(allowed)}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false; got {_echo(value)}")
        return value

    def param(self, value: Any, key: str, check: Any, kind: str | None = None) -> Param:
        """Parse a fixed value, a list of choices or a {low, high, log} range; ``check`` validates one value.

        ``kind`` is ``"int"`` or ``"float"`` for numeric parameters (which may be
        ranges), ``None`` for the others. Checking both ends of a range checks every
        value in it, since each check is an interval.
        """
        name = key.rsplit(".", 1)[-1]
        if isinstance(value, dict) and ("low" in value or "high" in value):
            spec = self.mapping(value, key, ("low", "high", "log"))
            if kind is None:
                raise self.fail(key, "a range {low, high} is not allowed here; give a value or a list of choices")
            if "low" not in spec or "high" not in spec:
                raise self.fail(key, "a range needs both low and high")
            low, high = check(spec["low"], f"{key}.low"), check(spec["high"], f"{key}.high")
            if low > high:
                raise self.fail(key, f"range is upside down: low={_echo(low)} > high={_echo(high)}")
            log = self.boolean(spec.get("log", False), f"{key}.log")
            if log and low <= 0:
                raise self.fail(f"{key}.low", f"must be > 0 for a log range; got {_echo(low)}")
            if kind == "float":
                low, high = float(low), float(high)
            return Param(name, low=low, high=high, log=log, integer=kind == "int")
        if isinstance(value, dict) and "choices" in value:
            value = self.mapping(value, key, ("choices",))["choices"]
        if isinstance(value, list):
            if not value:
                raise self.fail(key, "choices are empty; give at least one value")
            if len(value) > MAX_CHOICES:
                raise self.fail(key, f"has {len(value)} choices; at most {MAX_CHOICES} are allowed")
            values = tuple(check(v, f"{key}[{i}]") for i, v in enumerate(value))
            seen: set[str] = set()
            for i, v in enumerate(values):
                if repr(v) in seen:
                    raise self.fail(f"{key}[{i}]", f"repeats the choice {_echo(v)}; give each value once")
                seen.add(repr(v))
            return Param(name, choices=values)
        return Param(name, choices=(check(value, key),))


def load_space(path: str | Path, *, name: str | None = None, check_data_dir: bool = True,
               saved: bool = False) -> SearchSpace:
    """Read and validate a search-space YAML file.

    Args:
        path: the YAML file.
        name: replaces the file's ``name`` (the experiment folder's name).
        check_data_dir: check that ``dataset.data_dir`` exists (and, for an image
            folder, holds ``train/`` and ``val/`` class folders). Turn off only to
            read a space whose data lives on another machine.
        saved: the file is the copy an earlier search saved in its experiment folder: an
            option that a newer check refuses (a pruner option its pruner never read) is
            left out with a note, so that the experiment still resumes.

    Raises:
        SpaceError: naming the file, the key path, the bad value and what is allowed.
        FileNotFoundError: the file does not exist.

    Example:
        >>> space = load_space("search_spaces/fashion_quick.yaml")
        >>> space.metric_names
        ['val_acc', 'params']
    """
    path = Path(path)
    doc = _read_yaml(path)
    r = _Reader(path)
    top = r.mapping(doc, "", _TOP_KEYS)
    if not top:
        raise r.fail("(file)", "is empty; see search_spaces/fashion_quick.yaml for an example")

    exp_name = _parse_name(r, name, top.get("name"), path)
    data, num_classes = _parse_dataset(r, top.get("dataset", "fashion-mnist"), check_data_dir)

    budget = r.mapping(top.get("budget"), "budget", ("epochs",))
    epochs = r.number(budget.get("epochs", 1), "budget.epochs", integer=True, low=1, high=MAX_EPOCHS)

    objectives = _parse_objectives(r, top.get("objectives"))
    max_params = top.get("max_params")
    if max_params is not None:
        r.number(max_params, "max_params", integer=True, low=1)

    arch, depth_by_scheme = _parse_architecture(r, top.get("architecture"))
    train = _parse_training(r, top.get("training"))
    warmup = max(train["warmup_epochs"].values())
    if warmup > epochs:
        raise r.fail("training.warmup_epochs", f"{_echo(warmup)} is longer than budget.epochs ({epochs}): the "
                                               f"rate would never reach lr; use at most {epochs}")

    search = r.mapping(top.get("search"), "search", ("sampler", "num_samples", "seed", "pruner", "max_concurrent",
                                                     "time_budget"))
    sampler = r.choice(search.get("sampler", "tpe"), "search.sampler", SAMPLERS)
    pruner, pruner_notes = _parse_pruner(r, search.get("pruner", "none"), saved)
    late = late_pruner(pruner, epochs)
    if late is not None and late[0] in pruner:  # a default is told by the run, which knows the final pruner
        key, message = late
        if not saved:
            fix = f"give at most {epochs - 1}" if epochs > 1 else "a pruner needs budget.epochs >= 2"
            raise r.fail(f"search.pruner.{key}", f"{message}; {fix}, or pruner: none")
        # a copy an earlier search saved (and ran with) resumes as it was
        pruner_notes = (*pruner_notes, f"search.pruner.{key}: {message}")
    seed = r.number(search.get("seed", 0), "search.seed", integer=True, low=0, high=MAX_SEARCH_SEED)
    max_concurrent = search.get("max_concurrent")
    if max_concurrent is not None:
        r.number(max_concurrent, "search.max_concurrent", integer=True, low=1, high=MAX_SAMPLES)
    time_budget = None
    if search.get("time_budget") is not None:
        try:
            time_budget = parse_duration(search["time_budget"])
        except ValueError as exc:
            raise r.fail("search.time_budget", str(exc)) from None

    res = r.mapping(top.get("resources"), "resources", ("cpu", "gpu", "max_failures"))
    cpu = r.number(res.get("cpu", 1), "resources.cpu", low=0, low_open=True, high=MAX_CPU)
    gpu = r.number(res.get("gpu", 0), "resources.gpu", low=0, high=MAX_GPU)
    for key, amount in (("cpu", cpu), ("gpu", gpu)):
        if 0 < amount < RAY_MIN_RESOURCE:
            raise r.fail(f"resources.{key}", f"must be 0 or >= {RAY_MIN_RESOURCE:g} (Ray's smallest unit of a "
                                             f"resource); got {_echo(amount)}")
    max_failures = r.number(res.get("max_failures", 1), "resources.max_failures", integer=True, low=-1, high=1000)

    space = SearchSpace(
        path=str(path), name=exp_name, **data, epochs=epochs, objectives=objectives, max_params=max_params,
        arch=arch, depth_by_scheme=depth_by_scheme, train=train, sampler=sampler, num_samples=0,
        seed=seed, pruner=pruner, cpu=float(cpu), gpu=float(gpu), max_failures=max_failures,
        max_concurrent=max_concurrent, time_budget=time_budget, raw=doc, notes=pruner_notes,
    )
    n_archs = _check_architectures(r, space, num_classes)
    space, n_archs = _without_lm_duplicates(r, space, num_classes, n_archs)
    if sampler == "grid":
        listed = _check_grid(r, space, n_archs)
        default_samples = len(space.grid())
        twins = listed - default_samples
        if twins:
            space = replace(space, notes=(*space.notes, f"architecture: {twins} grid point(s) left out: each builds "
                                                        f"the same network as another point (a layout without an LM "
                                                        f"step has no k_n: as lm it is the euler net)"))
    else:
        default_samples = 10
    num_samples = r.number(search.get("num_samples", default_samples), "search.num_samples", integer=True, low=1,
                           high=MAX_SAMPLES)
    object.__setattr__(space, "num_samples", num_samples)
    return space


def _parse_name(r: _Reader, given: str | None, in_file: Any, path: Path) -> str:
    """The experiment name: one safe folder name, since the experiment folder is ``results/<name>``."""
    if given is not None:
        value, source = given, " (given with --name)"
    elif in_file is not None:
        value, source = in_file, ""
    else:
        value, source = path.stem, " (taken from the file name; set name: in the file)"
    allowed = (f"a folder name of 1 to {MAX_NAME} printable characters, without '/' or '\\', "
               f"not '.' or '..', no leading or trailing spaces")
    if (not isinstance(value, str) or not value or len(value) > MAX_NAME or value in (".", "..")
            or "/" in value or "\\" in value or not value.isprintable() or value != value.strip()):
        raise r.fail("name", f"must be {allowed}; got {_echo(value)}{source}")
    return value


def _parse_dataset(r: _Reader, value: Any, check_data_dir: bool) -> tuple[dict[str, Any], int]:
    """The SearchSpace fields of the dataset section, and the number of classes to check architectures with."""
    ds = {"name": value} if isinstance(value, str) else r.mapping(value, "dataset", _DATASET_KEYS)
    dataset = r.choice(ds.get("name", "fashion-mnist"), "dataset.name", DATASETS)
    val_fraction = r.number(ds.get("val_fraction", 0.1), "dataset.val_fraction", low=0, high=0.9, low_open=True)
    subset = ds.get("subset")
    if subset is not None:
        r.number(subset, "dataset.subset", integer=True, low=1)
        total = TRAIN_SIZES.get(dataset)
        if total is not None and subset > total - round(total * val_fraction):
            left = total - round(total * val_fraction)
            raise r.fail("dataset.subset", f"must be <= {left} ({dataset} has {total} training images, "
                                           f"{total - left} of them held out by val_fraction); got {subset}")
    image_size, test_fraction = ds.get("image_size"), ds.get("test_fraction")
    if image_size is not None:
        if dataset not in IMAGE_FOLDERS:
            raise r.fail("dataset.image_size", f"is only for the {' and '.join(IMAGE_FOLDERS)} datasets "
                                               f"({dataset} images have a fixed size); got {_echo(image_size)}")
        r.number(image_size, "dataset.image_size", integer=True, low=MIN_IMAGE_SIZE, high=MAX_IMAGE_SIZE)
    if test_fraction is not None:
        if dataset != "folder":
            raise r.fail("dataset.test_fraction", f"is only for dataset folder without a val/ or test/ folder "
                                                  f"({dataset} has its own test split); got {_echo(test_fraction)}")
        test_fraction = float(r.number(test_fraction, "dataset.test_fraction", low=0, high=0.5, low_open=True))
    fields = {"dataset": dataset, "data_dir": None, "data_root": None, "subset": subset,
              "val_fraction": float(val_fraction), "image_size": image_size, "test_fraction": test_fraction}
    num_classes = DATASET_SHAPES[dataset][1] or 10

    data_dir = ds.get("data_dir")
    if data_dir is None:
        if dataset == "folder":
            raise r.fail("dataset.data_dir", "is required for dataset folder: the folder of your images, "
                                             "<data_dir>/<class>/<image> or <data_dir>/train/<class>/<image>")
        return fields, num_classes
    if not isinstance(data_dir, str) or not data_dir.strip() or not data_dir.isprintable():
        raise r.fail("dataset.data_dir", f"must be a folder path; got {_echo(data_dir)}")
    root = Path(data_dir).expanduser().absolute()
    fields.update(data_dir=data_dir, data_root=str(root))
    if not check_data_dir:
        return fields, num_classes
    if not root.exists():
        raise r.fail("dataset.data_dir", f"{_echo(data_dir)} does not exist ({root}); it must be an existing "
                                         f"folder holding the {dataset} data")
    if not root.is_dir():
        raise r.fail("dataset.data_dir", f"{_echo(data_dir)} is not a directory ({root}); it must be the "
                                         f"folder holding the {dataset} data")
    if dataset in IMAGE_FOLDERS:
        num_classes = _image_folder_classes(r, dataset, root, test_fraction is not None)
    return fields, num_classes


def _image_folder_classes(r: _Reader, dataset: str, root: Path, test_fraction_given: bool) -> int:
    """Number of classes of an image folder, after checking the layout ``lmsearch.data`` reads.

    ``imagenet``: ``train/`` and ``val/`` (or ``test/``) in ``root`` or ``root/imagenet``.
    ``folder``: the same, or ``train/`` alone, or the class folders directly in
    ``root``; without ``val/`` the test split is ``test_fraction`` of the images.
    """
    from lmsearch.data.folder import IMAGE_EXTENSIONS

    def test_dir(folder: Path) -> Path | None:
        return next((folder / d for d in _TEST_DIRS if (folder / d).is_dir()), None)

    key = "dataset.data_dir"
    if dataset == "imagenet":
        found = [f for f in (root, root / dataset) if (f / "train").is_dir() and test_dir(f) is not None]
        if not found:
            raise r.fail(key, f"{root} has no train/ and val/ (or test/) folders; imagenet expects "
                              f"{root}/train/<class>/<image> and {root}/val/<class>/<image>")
        train, test = found[0] / "train", test_dir(found[0])
    elif (root / "train").is_dir():
        train, test = root / "train", test_dir(root)
    else:
        train, test = root, None
    if test is not None and test_fraction_given:
        raise r.fail("dataset.test_fraction", f"is only for a folder without a test split, but {test} is one; "
                                              f"remove test_fraction or that folder")
    try:
        classes = _class_names(train)
        if not classes:
            raise r.fail(key, f"{train} holds no class folders; expected {train}/<class>/<image>")
        empty = next((c for c in classes if not _holds_image(train / c, IMAGE_EXTENSIONS)), None)
        if empty is not None:
            raise r.fail(key, f"the class folder {train / empty} holds no image ({', '.join(IMAGE_EXTENSIONS)}); "
                              f"every class needs at least one")
        tested = _class_names(test) if test is not None else classes
    except OSError as exc:
        raise r.fail(key, f"{root} cannot be read: {exc.strerror or exc}") from None
    if tested != classes:
        odd = sorted(set(classes) ^ set(tested))
        raise r.fail(key, f"the class folders of {train} ({len(classes)}) and {test} ({len(tested)}) differ, "
                          f"e.g. {_echo(odd[0])}; both need the same classes")
    return len(classes)


def _class_names(folder: Path) -> list[str]:
    """The class folders in ``folder``; hidden ones (``.ipynb_checkpoints``) are not classes."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _holds_image(folder: Path, extensions: tuple[str, ...]) -> bool:
    """Whether ``folder`` or a folder in it holds a (non-hidden) image; stops at the first."""
    for _, _, files in os.walk(folder, followlinks=True):
        if any(not f.startswith(".") and f.lower().endswith(extensions) for f in files):
            return True
    return False


def _parse_objectives(r: _Reader, value: Any) -> tuple[Objective, ...]:
    if value is None:
        return (Objective("val_acc", "maximize"), Objective("params", "minimize"))
    if not isinstance(value, list) or not value:
        raise r.fail("objectives", f"must be a non-empty list of {{name, direction}}; got {_echo(value)}")
    if len(value) > len(OBJECTIVE_NAMES):
        raise r.fail("objectives", f"has {len(value)} entries; at most {len(OBJECTIVE_NAMES)}: "
                                   f"{', '.join(OBJECTIVE_NAMES)}")
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
    from lmsearch.arch import BLOCKS, LM_K_INITS, LM_K_MODES, NOISES, SHORTCUTS, STEMS, TORCHVISION_BASES
    from lmsearch.nn.registry import scheme_names

    def of(allowed: tuple[str, ...]) -> Any:
        return lambda v, k: r.choice(v, k, allowed)

    def integer(low: int, high: int) -> Any:
        return lambda v, k: r.number(v, k, integer=True, low=low, high=high)

    def stages(v: Any, k: str) -> tuple[int, ...]:
        if not isinstance(v, list) or not v:
            raise r.fail(k, f"must be a list of functions per stage, e.g. [3, 3, 3]; got {_echo(v)}")
        if len(v) > MAX_DEPTH:
            raise r.fail(k, f"has {len(v)} stages; at most {MAX_DEPTH} layers are allowed")
        return tuple(r.number(n, f"{k}[{i}]", integer=True, low=1, high=MAX_DEPTH) for i, n in enumerate(v))

    return {
        "scheme": of(scheme_names()), "block": of(BLOCKS), "noise": of(NOISES), "shortcut": of(SHORTCUTS),
        "lm_k": of(LM_K_MODES), "stem": of(STEMS), "depth": integer(3, MAX_DEPTH), "width": integer(1, MAX_WIDTH),
        "groups": integer(1, MAX_GROUPS), "group_width": integer(1, MAX_GROUPS), "preact": r.boolean,
        "noise_prob": lambda v, k: r.number(v, k, low=0, high=1, low_open=True, high_open=True), "stages": stages,
        "base": of(tuple(TORCHVISION_BASES)), "k_init": of(tuple(LM_K_INITS)),
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
        if key != "noise_prob" and isinstance(raw, dict) and {"low", "high"} & set(raw):
            raise r.fail(path, "must be a fixed value or a list of choices (ranges are for noise_prob and training)")
        if key == "stages" and isinstance(raw, list) and raw and not isinstance(raw[0], list):
            raw = [raw]  # a single layout, not a list of layouts
        param = r.param(raw, path, checkers[key], "float" if key == "noise_prob" else None)
        arch[key] = param
    arch.setdefault("scheme", Param("scheme", choices=("euler",)))
    if "base" in arch:
        arch = _base_architecture(r, arch, section)
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


def _base_architecture(r: _Reader, arch: dict[str, Param], section: dict[str, Any]) -> dict[str, Param]:
    """The parameters of a space on a torchvision base: one base, which fixes the structure (and the depth)."""
    from lmsearch.arch import BASE_FIELDS, BASE_NOISES, BASE_SCHEMES, TORCHVISION_BASES

    base = arch["base"].choices or ()
    if len(base) != 1:
        raise r.fail("architecture.base", f"give one base, not a list of {len(base)}; search one base per space")
    given = [k for k in BASE_FIELDS if k in section]
    if given:
        raise r.fail(f"architecture.{given[0]}", f"is set by the base {base[0]}; remove it (a base fixes "
                                                 f"{', '.join(BASE_FIELDS)})")
    for key, allowed in (("scheme", BASE_SCHEMES), ("noise", BASE_NOISES)):
        for i, value in enumerate(arch[key].choices or () if key in arch else ()):
            if value not in allowed:
                at = f"architecture.{key}" if arch[key].is_fixed else f"architecture.{key}[{i}]"
                raise r.fail(at, f"{_echo(value)} is not allowed with a base; allowed: {', '.join(allowed)}")
    depth = TORCHVISION_BASES[base[0]]["depth"]
    k_init = {} if "k_init" in arch else {"k_init": Param("k_init", choices=("zero",))}  # as to_lm and the CLI
    return {**arch, "depth": Param("depth", choices=(depth,)), **k_init}


def _parse_training(r: _Reader, value: Any) -> dict[str, Param]:
    section = r.mapping(value, "training", TRAIN_KEYS)

    def number(**bounds: Any) -> Any:
        return lambda v, k: r.number(v, k, **bounds)

    checkers: dict[str, tuple[Any, str | None]] = {  # key -> (check of one value, kind)
        "lr": (number(low=0, low_open=True), "float"),
        "weight_decay": (number(low=0), "float"),
        "momentum": (number(low=0, high=1, high_open=True), "float"),
        "label_smoothing": (number(low=0, high=0.99), "float"),
        "batch_size": (number(integer=True, low=1, high=MAX_BATCH_SIZE), "int"),
        "warmup_epochs": (number(integer=True, low=0, high=MAX_EPOCHS), "int"),
        "seed": (number(integer=True, low=0, high=MAX_INT), "int"),
        "bn_recalibration": (number(integer=True, low=0, high=1_000_000), "int"),
        "nesterov": (r.boolean, None),
        "schedule": (lambda v, k: r.choice(v, k, SCHEDULES), None),
    }
    return {key: r.param(section.get(key, _TRAIN_DEFAULTS[key]), f"training.{key}", *checkers[key])
            for key in TRAIN_KEYS}


#: The options each pruner reads (lmsearch.pruning.make_pruner).
#: the defaults of the options that place a pruner's first decision (read by lmsearch.pruning.make_pruner)
FIRST_DECISION_DEFAULTS = {"min_epochs": 1, "warmup_epochs": 0}
PRUNER_OPTIONS = {
    "pareto": ("eta", "min_epochs", "tie_break", "reach", "protect_schemes"),
    "successive_halving": ("eta", "min_epochs"),
    "hyperband": ("eta", "min_epochs"),
    "median": ("warmup_epochs",),
    "percentile": ("percentile", "warmup_epochs"),
    "none": (),
}


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
MAX_TIME_BUDGET = 366 * 24 * 3600


def parse_duration(value: Any) -> float:
    """Seconds of a time budget: a number of seconds, or a number with the unit s, m or h ("90s", "20m",
    "1.5h"); ``ValueError`` for anything else.

    Example:
        >>> parse_duration("20m"), parse_duration(90), parse_duration("1.5h")
        (1200.0, 90.0, 5400.0)
    """
    text = str(value).strip().lower()
    unit = _DURATION_UNITS.get(text[-1:], None) if text else None
    number = text[:-1] if unit else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or not 0 < seconds <= MAX_TIME_BUDGET:
        raise ValueError(f"must be a duration above 0 and at most 366 days: seconds (e.g. 600) or a number with "
                         f"the unit s, m or h (e.g. 90s, 20m, 1.5h); got {value!r}")
    return seconds


def late_pruner(pruner: dict[str, Any], epochs: int) -> tuple[str, str] | None:
    """``(option, why)`` when ``pruner``'s first decision (``min_epochs`` or ``warmup_epochs``, given or
    its default) falls at or after the last of ``epochs``, so that it would never stop a trial; else None."""
    for key, default in FIRST_DECISION_DEFAULTS.items():
        if key not in PRUNER_OPTIONS[pruner["name"]]:
            continue
        value = pruner.get(key, default)
        first = max(value, 1)  # the epoch of the pruner's first decision (epochs count from 1)
        if first >= epochs:
            return key, (f"{value} puts the pruner's first decision at epoch {first}, and budget.epochs is {epochs}: "
                         f"it would never stop a trial")
    return None


def _parse_pruner(r: _Reader, value: Any, saved: bool = False) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``search.pruner`` as a dict of the options its pruner reads, and notes.

    An option of another pruner would be silently ignored, so it is refused; in a copy
    saved by an earlier search (``saved``, which no check refused then) it is dropped
    with a note instead, so that the experiment still resumes.
    """
    if isinstance(value, str):
        value = {"name": value}
    value = dict(r.mapping(value, "search.pruner", ("name", "eta", "min_epochs", "percentile", "warmup_epochs",
                                                    "tie_break", "reach", "protect_schemes")))
    out = {"name": r.choice(value.get("name", "none"), "search.pruner.name", PRUNERS)}
    own, notes = PRUNER_OPTIONS[out["name"]], []
    for key in [k for k in value if k != "name" and k not in own]:
        has = ", ".join(own) or "no options"
        message = f"not an option of the {out['name']} pruner (it has {has})"
        if not saved:
            raise r.fail(f"search.pruner.{key}", message)
        notes.append(f"search.pruner.{key}: {message}; left out")
        del value[key]
    if "eta" in value:
        out["eta"] = r.number(value["eta"], "search.pruner.eta", integer=True, low=2, high=1000)
    for key in ("min_epochs", "warmup_epochs"):
        if key in value:
            out[key] = r.number(value[key], f"search.pruner.{key}", integer=True,
                                low=1 if key == "min_epochs" else 0, high=MAX_EPOCHS)
    if "percentile" in value:
        out["percentile"] = r.number(value["percentile"], "search.pruner.percentile", low=0, high=100)
    if "tie_break" in value:
        out["tie_break"] = r.choice(value["tie_break"], "search.pruner.tie_break",
                                    ("fixed_hypervolume", "crowding", "hypervolume"))
    for key in ("reach", "protect_schemes"):
        if key in value:
            out[key] = r.boolean(value[key], f"search.pruner.{key}")
    return out, tuple(notes)


def _count_arch_points(space: SearchSpace) -> int:
    """An upper bound of the architectures the choices combine to (conditions ignored), without listing them."""
    def n(key: str) -> int:
        param = space.arch.get(key)
        return len(param.choices) if param is not None and param.choices is not None else 1

    rest = math.prod(n(k) for k in ARCH_KEYS if k not in ("scheme", "depth"))
    if space.depth_by_scheme is not None:
        return rest * sum(len(p.choices or ()) for p in space.depth_by_scheme.values())
    return rest * n("scheme") * n("depth")


def _check_architectures(r: _Reader, space: SearchSpace, num_classes: int) -> int:
    """Build every categorical combination as an ArchSpec so impossible ones fail now, not mid-search.

    Returns the number of combinations.
    """
    bound = _count_arch_points(space)
    if bound > MAX_ARCH_POINTS:
        raise r.fail("architecture", f"its choices combine to up to {bound} architectures; at most "
                                     f"{MAX_ARCH_POINTS} are allowed: give fewer choices")
    in_channels = DATASET_SHAPES[space.dataset][0]
    within_budget = space.max_params is None
    count = 0
    for _, arch in space.arch_points():
        count += 1
        where = ", ".join(f"{k}={arch[k]}" for k in ("scheme", "block", "width", "depth") if k in arch)
        try:
            spec = ArchSpec(**_spec_fields(arch), in_channels=in_channels, num_classes=num_classes)
        except ValueError as exc:
            field_name = str(exc).split(" ", 1)[0]  # ArchSpec messages start with the field name
            if field_name == "depth" and space.depth_by_scheme:
                key = f"architecture.depth.{arch['scheme']}"
            else:
                key = f"architecture.{field_name if field_name in ARCH_KEYS else 'depth'}"
            hint = ("; give per-scheme depths as {scheme: [depths]}"
                    if field_name == "depth" and not space.depth_by_scheme else "")
            raise r.fail(key, f"{_echo(arch.get(field_name, ''))} is impossible with {where}: {exc}{hint}") from None
        at_least = spec.min_params()
        if at_least > MAX_ARCH_PARAMS:
            key = "architecture.stages" if "stages" in arch and len(spec.stage_functions) > 4 else "architecture.width"
            raise r.fail(key, f"{where} has at least {at_least:.3g} parameters; at most {MAX_ARCH_PARAMS:.0e} per "
                              f"architecture are allowed: choose a smaller width or depth")
        if not within_budget and at_least <= space.max_params and _count_params(spec) <= space.max_params:
            within_budget = True
    if not within_budget:
        raise r.fail("max_params", f"no architecture of the space has <= {space.max_params} parameters")
    return count


def _without_lm_duplicates(r: _Reader, space: SearchSpace, num_classes: int,
                           n_archs: int) -> tuple[SearchSpace, int]:
    """Take out lm depths that give no LM step (one step per stage): those nets are the euler nets.

    They would cost trials for networks the space already has (or, without euler in it,
    would be reported as LM nets with no k). The space gets per-scheme depths and a note.
    Returns the space and its architecture count.
    """
    schemes = space.arch["scheme"].choices or ()
    if "lm" not in schemes:
        return space, n_archs
    in_channels = DATASET_SHAPES[space.dataset][0]
    has_step: dict[int, bool] = {}
    for _, arch in space.arch_points():
        if arch["scheme"] == "lm":
            steps = ArchSpec(**_spec_fields(arch), in_channels=in_channels, num_classes=num_classes).lm_steps
            has_step[arch["depth"]] = has_step.get(arch["depth"], False) or steps > 0
    dropped = sorted(d for d, ok in has_step.items() if not ok)
    if not dropped:
        return space, n_archs
    by_scheme = dict(space.depth_by_scheme or {s: space.arch["depth"] for s in schemes})
    kept = tuple(d for d in by_scheme["lm"].choices or () if d not in dropped)
    where = "architecture.depth.lm" if space.depth_by_scheme else "architecture.depth"
    listed = ", ".join(map(str, dropped))
    if not kept:
        raise r.fail(where, f"lm at depth {listed} has one step per stage, so no LM step (a stage's first step is "
                            f"an Euler step): it is the euler net of that depth; give lm a depth with two or more "
                            f"steps per stage (e.g. 14 or 20 for basic blocks) or leave lm out")
    by_scheme["lm"] = replace(by_scheme["lm"], choices=kept)
    arch = {k: v for k, v in space.arch.items() if k != "depth"}
    note = (f"{where}: lm at depth {listed} left out: one step per stage means no LM step, so it is the euler "
            f"net of that depth" + (" (in the space as euler)" if "euler" in schemes else ""))
    space = replace(space, arch=arch, depth_by_scheme=by_scheme, notes=(*space.notes, note))
    return space, sum(1 for _ in space.arch_points())


def _count_params(spec: ArchSpec) -> int:
    from lmsearch.nn.counting import count_params

    return count_params(spec)


def _check_grid(r: _Reader, space: SearchSpace, n_archs: int) -> int:
    """Refuse ranges and oversized grids; returns the number of points as listed (twins included)."""
    ranged = [f"architecture.{k}" for k, p in space.arch.items() if p.choices is None]
    ranged += [f"training.{k}" for k, p in space.train.items() if p.choices is None]
    if ranged:
        raise r.fail(ranged[0], "sampler=grid needs fixed values or lists of choices, not ranges")
    size = n_archs * math.prod(len(p.choices or ()) for p in space.train.values())
    if size > MAX_GRID_POINTS:
        raise r.fail("search.sampler", f"the grid has {size} points; at most {MAX_GRID_POINTS} are allowed: "
                                       f"give fewer choices or use a sampler such as tpe")
    return size
