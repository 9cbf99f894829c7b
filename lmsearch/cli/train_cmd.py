"""``lmsearch train``: train one network (a zoo name, an ArchSpec JSON or an export) on a dataset."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from lmsearch.arch import LM_K_INITS, TORCHVISION_BASES  # imports no torch
from lmsearch.cli import nonempty
from lmsearch.space import MAX_EPOCHS  # the space files' limit (imports no torch)

HELP = """Train one network on a dataset and report its test accuracy.

MODEL is a zoo name (see `lmsearch models`), an ArchSpec JSON file, the
arch.json of an export, an export directory (arch.json + model.safetensors),
or torchvision:NAME, torchvision's resnet18/34/50/101/152, resnext50_32x4d,
resnext101_32x8d/64x4d or wide_resnet50_2/101_2 (random init) run as a
Euler net, or with --lm as its LM-ResNet (lmsearch.to_lm).
Its in_channels and num_classes are adapted to the dataset (a torchvision
net gets an fc of the dataset's classes and, for other than 3 channels, a
new 7x7/2 conv1 taking them). Every epoch prints
the training loss, the validation loss and accuracy (a seeded part held out
of the training set) and the throughput; the test accuracy comes at the end.

examples:
  lmsearch train lm_resnet20 --epochs 2 --subset 2000
  lmsearch train lm_resnet56 --dataset cifar10 --data-dir ~/data \\
      --schedule step --batch-size 128 --lr 0.1 --weight-decay 1e-4 --no-nesterov --epochs 160  # the paper's recipe
  lmsearch train resnet20 --dataset fashion-mnist --epochs 30 --save out/resnet20
  lmsearch train spec.json --epochs 160 --schedule step --device cuda
  lmsearch train exported/lm56 --epochs 5 --init-weights --lr 0.01
  lmsearch train resnet20 --dataset cifar10 --data-dir ~/data --epochs 160
  lmsearch train torchvision:resnet18 --lm --dataset folder --data-dir DIR --image-size 64"""


# Kept here (not imported from lmsearch.train / lmsearch.data) so building the CLI parser does not import
# torch; tests/test_train_cli.py checks they match.
DATASET_NAMES = ("fashion-mnist", "cifar10", "cifar100", "imagenet", "folder", "synthetic")
SCHEDULE_NAMES = ("step", "cosine", "onecycle", "constant")
DEFAULTS = {"epochs": 10, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
            "label_smoothing": 0.0, "schedule": "step", "warmup_epochs": 0.0}
# What `lmsearch train` uses instead of TrainConfig's defaults: short runs should work without
# tuning. Measured (benchmarks/README.md, "lmsearch train defaults"): LM-ResNet-20, 2 epochs of
# 4,000 Fashion-MNIST images, 74-76% test accuracy with these vs 68-69% with the paper's step
# schedule (lr / 10 at 50% and 75%: 0.001 for the whole second epoch) and batch 128.
CLI_DEFAULTS = {**DEFAULTS, "schedule": "cosine", "batch_size": 64}
PAPER_RECIPE = "--schedule step --batch-size 128 --lr 0.1 --weight-decay 1e-4 --no-nesterov --epochs 160"


def _integer(text: str, low: int, high: int | None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"from {low} to {high}"
        raise argparse.ArgumentTypeError(f"must be {allowed}; got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    return _integer(text, 1, None)


def epoch_count(text: str) -> int:
    """argparse type: a whole number of epochs, 0 to MAX_EPOCHS."""
    return _integer(text, 0, MAX_EPOCHS)


def finite_float(text: str) -> float:
    """argparse type: a finite float (``inf``/``nan`` are refused here; ranges are TrainConfig's to check)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number; got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = argparse.Namespace(**CLI_DEFAULTS)
    parser.add_argument("model", metavar="MODEL|ARCH.json", type=nonempty,
                        help="zoo name (e.g. resnet20, lm_resnet56), ArchSpec JSON, arch.json, export directory or "
                             "torchvision:NAME (e.g. torchvision:resnet50)")
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="fashion-mnist", choices=list(DATASET_NAMES),
                   help="dataset (default fashion-mnist; synthetic is for tests)")
    g.add_argument("--data-dir", metavar="DIR", type=nonempty,
                   help="where the dataset is (default $LMSEARCH_DATA, then /usr/share/datasets/fashion-mnist)")
    g.add_argument("--download", action="store_true", help="cifar10/cifar100: download when missing (needs internet)")
    g.add_argument("--subset", type=int, metavar="N", help="train on N images of the training part (seeded; default: all of it)")
    g.add_argument("--val-fraction", type=finite_float, default=0.1, metavar="F",
                   help="share of the training set held out for validation (default 0.1)")
    g.add_argument("--image-size", type=int, metavar="PX", help="imagenet/folder: side of the square images fed to the net, in pixels "
                        "(default: 224 for imagenet, the images' median side for folder)")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=epoch_count, default=d.epochs, metavar="N",
                   help=f"epochs, 0 to {MAX_EPOCHS} (default {d.epochs})")
    t.add_argument("--batch-size", type=int, default=d.batch_size, metavar="B", help=f"default {d.batch_size}")
    t.add_argument("--lr", type=finite_float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    t.add_argument("--momentum", type=finite_float, default=d.momentum, help=f"default {d.momentum}")
    t.add_argument("--no-nesterov", dest="nesterov", action="store_false", help="plain momentum instead of Nesterov")
    t.add_argument("--weight-decay", type=finite_float, default=d.weight_decay, help=f"default {d.weight_decay}")
    t.add_argument("--label-smoothing", type=finite_float, default=d.label_smoothing, help="default 0")
    t.add_argument("--schedule", choices=SCHEDULE_NAMES, default=d.schedule,
                   help=f"lr schedule (default {d.schedule}: to 0 over the run; the paper's is step: lr / 10 at "
                        f"50%% and 75%% of training, which leaves a 2-epoch run at lr / 10 and below for its "
                        f"second half; the paper's whole recipe: {PAPER_RECIPE})")
    t.add_argument("--warmup-epochs", type=finite_float, default=d.warmup_epochs, metavar="E",
                   help=f"linear warm-up (default {d.warmup_epochs})")
    t.add_argument("--seed", type=int, default=0, help="seeds initialisation, split, order and augmentation (default 0)")
    t.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop / flip")
    t.add_argument("--bn-recalibration", type=int, default=0, metavar="N",
                   help="precise BN: re-estimate batch-norm statistics from N training batches before "
                        "each evaluation (default 0: PyTorch's running averages)")
    t.add_argument("--init-weights", action="store_true", help="start from an export's weights (fine-tune)")
    b = parser.add_argument_group("torchvision base (MODEL torchvision:NAME)")
    b.add_argument("--lm", action="store_true",
                   help="its LM-ResNet: one learnable k_n per block but the first of each stage and those "
                        "with a downsample (default: torchvision's net, a Euler net)")
    b.add_argument("--k-init", choices=list(LM_K_INITS), default="zero",
                   help="k_n init: zero (starts as the Euler net, the default) or paper (U(-0.1, 0))")
    b.add_argument("--per-channel-k", action="store_true", help="one k_n per channel instead of a scalar")
    b.add_argument("--stochastic-depth", type=finite_float, default=0.0, metavar="P",
                   help="drop probability of the last block's increment; block i of N drops with P * i / N, "
                        "so the first drops P / N (default 0: none)")
    r = parser.add_argument_group("running")
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when available)")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on CUDA only; --amp also on CPU, fast on CPUs with AVX512-BF16/AMX)")
    r.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    r.add_argument("--save", metavar="DIR", type=nonempty,
                   help="write arch.json + model.safetensors here after training (needs --epochs >= 1; "
                        "nothing is saved when the run diverges)")


class _UsageError(Exception):
    """A bad argument: printed as ``lmsearch train: error: ...`` with exit status 2."""


def _read_spec(model_arg: str) -> tuple[Any, Path | None]:
    """``(ArchSpec, export dir or None)`` of an ArchSpec JSON file, an arch.json or an export directory."""
    from lmsearch.arch import ArchSpec

    path = Path(model_arg).expanduser()
    if path.is_dir():
        if not (path / "arch.json").is_file():
            raise _UsageError(f"{path} is a directory without arch.json (an export holds arch.json + "
                              "model.safetensors)")
        path = path / "arch.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _UsageError(f"{path}: cannot read an architecture from it ({exc})") from None
    if isinstance(doc, dict) and "format" in doc:
        from lmsearch.archfile import read_arch_json

        try:
            doc = read_arch_json(path)
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
        export_dir = path.parent if (path.parent / doc.get("weights", "model.safetensors")).is_file() else None
        doc = doc["spec"]
    else:
        export_dir = None
    try:
        return ArchSpec.from_dict(doc), export_dir
    except (TypeError, ValueError) as exc:
        raise _UsageError(f"{path}: not a valid ArchSpec: {exc}") from None


def _zoo_spec(name: str, in_channels: int, num_classes: int) -> Any:
    from lmsearch.nn.zoo import create_model, list_models

    names = list(list_models())
    if name not in names:
        raise _UsageError(f"{name!r} is neither a file nor a zoo model; zoo models: {', '.join(names)}")
    model = create_model(name, in_channels=in_channels, num_classes=num_classes)
    spec = getattr(model, "spec", None)
    if spec is None:
        raise _UsageError(f"zoo model {name!r} carries no ArchSpec (.spec); cannot train it here")
    return spec


def _base_spec(args: argparse.Namespace, in_channels: int, num_classes: int) -> Any:
    """The ArchSpec of ``torchvision:NAME`` with the --lm options."""
    from lmsearch.arch import ArchSpec

    if args.model not in TORCHVISION_BASES:
        raise _UsageError(f"{args.model!r} is not a torchvision base lmsearch converts; one of "
                          f"{', '.join(TORCHVISION_BASES)}")
    p = args.stochastic_depth
    if not 0 <= p < 1:
        raise _UsageError(f"--stochastic-depth must be in [0, 1); got {p}")
    if not args.lm and (args.per_channel_k or args.k_init != "zero"):
        raise _UsageError("--k-init and --per-channel-k set the k_n of the LM steps: add --lm")
    k = {"lm_k": "channel" if args.per_channel_k else "scalar", "lm_k_init": LM_K_INITS[args.k_init]} if args.lm else {}
    return ArchSpec(base=args.model, scheme="lm" if args.lm else "euler", noise="stochastic_depth" if p else "none",
                    noise_prob=p, in_channels=in_channels, num_classes=num_classes, **k)


def _model(args: argparse.Namespace, in_channels: int, num_classes: int) -> tuple[Any, Any, str]:
    """``(model, spec, description)``: the network to train, adapted to the dataset's channels and classes."""
    import torch

    from lmsearch.nn.network import build_model

    base_options = args.lm or args.per_channel_k or args.k_init != "zero" or args.stochastic_depth != 0
    if base_options and not args.model.startswith("torchvision:"):
        raise _UsageError("--lm, --k-init, --per-channel-k and --stochastic-depth are for MODEL torchvision:NAME")
    looks_like_file = args.model.endswith(".json") or "/" in args.model or Path(args.model).exists()
    if args.model.startswith("torchvision:"):
        spec, export_dir, source = _base_spec(args, in_channels, num_classes), None, args.model
    elif looks_like_file:
        if not Path(args.model).expanduser().exists():
            raise _UsageError(f"{args.model}: no such file or directory")
        spec, export_dir = _read_spec(args.model)
        source = str(args.model)
    else:
        spec, export_dir = _zoo_spec(args.model, in_channels, num_classes), None
        source = f"zoo:{args.model}"
    adapted = spec.replace(in_channels=in_channels, num_classes=num_classes)
    if adapted != spec:
        print(f"note: adapted {source} to the dataset: in_channels {spec.in_channels} -> {in_channels}, "
              f"num_classes {spec.num_classes} -> {num_classes}", file=sys.stderr)
    if args.init_weights:
        if export_dir is None:
            raise _UsageError("--init-weights needs an export directory (arch.json + model.safetensors) as MODEL")
        if adapted != spec:
            raise _UsageError("--init-weights: the export's in_channels/num_classes do not fit the dataset")
        from lmsearch.archfile import load_architecture

        try:
            model = load_architecture(export_dir)
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
    else:
        torch.manual_seed(args.seed)
        try:
            model = build_model(adapted)
        except (ValueError, RuntimeError, MemoryError) as exc:  # e.g. a width that needs terabytes
            raise _UsageError(f"{source}: cannot build the network (width {adapted.width}, depth {adapted.depth}): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return model, adapted, source


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, pattern)


def _epoch_line(m: dict[str, Any], epochs: int) -> str:
    acc = "-" if m["val_acc"] is None or math.isnan(m["val_acc"]) else f"{100 * m['val_acc']:.2f}%"
    width = len(str(epochs))
    return (f"epoch {m['epoch']:>{width}}/{epochs}  train_loss {m['train_loss']:.4f}  "
            f"val_loss {_fmt(m['val_loss'], '.4f')}  val_acc {acc:>7}  lr {m['lr']:.4g}  "
            f"{m['images_per_s']:,.0f} img/s  {m['seconds']:.1f} s")


def _train(args: argparse.Namespace) -> int:
    import torch

    from lmsearch.data import load_dataset
    from lmsearch.train import TrainConfig, Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    options = {"image_size": args.image_size} if args.image_size is not None else {}
    if options and args.dataset not in ("imagenet", "folder"):
        raise _UsageError("--image-size is only for --dataset imagenet or folder")
    try:
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                             nesterov=args.nesterov, weight_decay=args.weight_decay,
                             label_smoothing=args.label_smoothing, schedule=args.schedule,
                             warmup_epochs=args.warmup_epochs, seed=args.seed, device=args.device,
                             compile=args.compile, amp=args.amp, augment=args.augment, progress=args.progress,
                             bn_recalibration=args.bn_recalibration)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    if args.save:
        from lmsearch.archfile import check_output_dir

        if config.epochs == 0:
            raise _UsageError("--save with --epochs 0 would save untrained weights; train at least one epoch, "
                              "or drop --save to only evaluate")
        try:
            check_output_dir(args.save)
        except ValueError as exc:
            raise _UsageError(f"--save {args.save}: {exc}") from None
    try:
        data = load_dataset(args.dataset, args.data_dir, val_fraction=args.val_fraction, seed=args.seed,
                            subset=args.subset, download=args.download, **options)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    info = data.info
    model, spec, source = _model(args, info.in_channels, info.num_classes)
    params = sum(p.numel() for p in model.parameters())
    trainer = Trainer(model, data, config)
    print(f"training {source} ({spec.scheme}, depth {spec.depth}, width {spec.width}, {params:,} parameters) on "
          f"{info.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images, "
          f"{config.epochs} epochs, batch {config.batch_size}, lr {config.lr} ({config.schedule}), "
          f"device {trainer.device}", flush=True)
    result = trainer.fit(callback=lambda m: print(_epoch_line(m, config.epochs), flush=True), test=True)
    if result.status == "diverged":
        print(f"lmsearch train: {result.message}", file=sys.stderr)
        if args.save:
            print(f"lmsearch train: nothing saved to {args.save} (the run diverged)", file=sys.stderr)
        return 1
    print(f"test accuracy {100 * result.test_acc:.2f}% ({len(data.test)} images), test loss "
          f"{result.test_loss:.4f}; {result.epochs} epoch{'s' * (result.epochs != 1)} in {result.seconds:.1f} s", flush=True)
    if args.save:
        from lmsearch.archfile import save_architecture

        last = result.history[-1] if result.history else {}
        metadata = {
            "metrics": {"test_acc": result.test_acc, "test_loss": result.test_loss, "val_acc": last.get("val_acc"),
                        "val_loss": last.get("val_loss"), "train_loss": last.get("train_loss"), "params": params},
            "provenance": {"command": "lmsearch train", "source": source, "dataset": info.name,
                           "subset": args.subset, "val_fraction": args.val_fraction, "epochs": result.epochs,
                           "train_config": {k: v for k, v in result.config.items() if k != "progress"},
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S")},
        }
        try:
            out = save_architecture(model.cpu(), spec, args.save, metadata=metadata)
        except ValueError as exc:  # e.g. non-finite weights the trainer did not flag
            print(f"lmsearch train: {exc}", file=sys.stderr)
            return 1
        print(f"saved {out / 'arch.json'} and {out / 'model.safetensors'}")
    return 0


def run(args: argparse.Namespace) -> int:
    from lmsearch.data import DatasetNotFoundError

    try:
        return _train(args)
    except _UsageError as exc:
        print(f"lmsearch train: error: {exc}", file=sys.stderr)
        return 2
    except DatasetNotFoundError as exc:
        print(f"lmsearch train: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if "CUDA is not available" in str(exc):
            print(f"lmsearch train: error: {exc}", file=sys.stderr)
            return 2
        raise
