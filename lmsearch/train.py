"""The trainer: SGD on a :class:`~lmsearch.data.DatasetSplits`, fast for small data sets.

A small dataset (a :class:`~lmsearch.data.TensorSplit`) lives whole on the
training device as uint8; each batch is gathered, augmented (pad + random
crop, horizontal flip where the dataset allows it) and normalised there in
one go, in channels_last layout, as Keller Jordan's airbench does: no
per-sample DataLoader, no worker processes. A streaming dataset (ImageFolder)
comes through its DataLoader instead, augmented in the workers.

Randomness is a pure function of ``(config.seed, epoch)``: each epoch reseeds
the batch order, the augmentation and the global torch RNG (which drives a
model's own noise: stochastic depth, shake-shake) from them, inside
:func:`torch.random.fork_rng` so the caller's RNG is left as it was. So the
same model initialisation and seed give the same history and weights on CPU,
and a run resumed from :meth:`Trainer.state_dict` at an epoch boundary ends
bit-for-bit where an uninterrupted run does. (Model initialisation happens
before the trainer sees the model: seed it yourself.)

Example:
    >>> import lmsearch
    >>> data = lmsearch.load_dataset("fashion-mnist", subset=2000)
    >>> model = lmsearch.build_model(lmsearch.ArchSpec(scheme="lm", width=8, in_channels=1))
    >>> result = Trainer(model, data, TrainConfig(epochs=2, progress=False)).fit(test=True)
    >>> result.status, len(result.history), 0.1 < result.test_acc <= 1.0
    ('completed', 2, True)
"""

from __future__ import annotations

import contextlib
import itertools
import math
import numbers
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from lmsearch.data import DatasetSplits, StreamSplit, TensorSplit

__all__ = ["TrainConfig", "Trainer", "TrainResult", "SCHEDULES", "resolve_device", "lr_factor", "memory_format"]

SCHEDULES = ("step", "cosine", "onecycle", "constant")
STATE_FORMAT = "lmsearch-trainer"
STATE_VERSION = 1
Callback = Callable[[dict[str, Any]], Any]


@dataclass
class TrainConfig:
    """How to train.

    Fields:
        epochs: passes over the training part.
        batch_size: images per SGD step (the last partial batch of an epoch is dropped).
        lr, momentum, nesterov, weight_decay: SGD (weight decay on every parameter;
            nesterov applies only when momentum > 0).
        label_smoothing: of the training loss (validation loss is plain cross-entropy).
        schedule: ``step`` (the paper's: lr / 10 at 50% and again at 75% of the steps),
            ``cosine`` (to 0), ``onecycle`` (linear up to ``lr`` over the first 25%,
            then linear down to 0) or ``constant``; updated every step.
        warmup_epochs: linear warm-up from 0, multiplied onto the schedule.
        seed: seeds batch order, augmentation and model noise (see the module docstring).
        device: ``cpu``, ``cuda`` (or ``cuda:N``) or ``auto`` (CUDA when available).
        compile: wrap the model in :func:`torch.compile`.
        channels_last: NHWC memory layout for model and batches (not on CPU for a model that
            :func:`memory_format` finds oneDNN cannot train in NHWC).
        amp: bfloat16 autocast. ``None`` (default): on CUDA only; ``True``: on CPU too
            (much faster on CPUs with AVX512-BF16 or AMX, but no longer fp32 numerics);
            ``False``: never.
        augment: random crop with ``info.crop_padding`` and flip where ``info.hflip``.
        eval_batch_size: batch size of evaluation.
        progress: a tqdm bar per epoch; ``None`` shows it when stderr is a terminal.
        bn_recalibration: "precise BN": after every epoch, before it is evaluated, the
            batch-norm running statistics are re-estimated from this many training batches
            (seeded, not augmented) with :func:`torch.optim.swa_utils.update_bn`; 0 (default)
            keeps PyTorch's running averages. Early in training those lag behind the
            fast-moving weights and eval-mode accuracy drops towards chance (measured: a
            ResNet-14 at 36% after one 5,000-image epoch, 58% recalibrated), which misleads
            a pruner; the weights and the training path are not affected.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    schedule: Literal["step", "cosine", "onecycle", "constant"] = "step"
    warmup_epochs: float = 0.0
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    channels_last: bool = True
    amp: bool | None = None
    augment: bool = True
    eval_batch_size: int = 512
    progress: bool | None = None
    bn_recalibration: int = 0

    def __post_init__(self) -> None:
        def check(ok: bool, what: str, value: Any) -> None:
            if not ok:
                raise ValueError(f"{what}; got {value!r}")

        for name in ("epochs", "batch_size", "eval_batch_size", "seed", "bn_recalibration"):
            v = getattr(self, name)
            if isinstance(v, float) and v.is_integer() or hasattr(v, "__index__") and not isinstance(v, (bool, int)):
                v = int(v)  # 128.0 from a results table, numpy integers from a sampler
                setattr(self, name, v)
            low = 0 if name in ("epochs", "seed", "bn_recalibration") else 1
            check(isinstance(v, int) and not isinstance(v, bool) and v >= low, f"{name} must be an integer >= {low}", v)
        def number(name: str) -> float:
            v = getattr(self, name)
            check(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v),
                  f"{name} must be a finite number", v)
            return v

        check(number("lr") > 0, "lr must be > 0", self.lr)
        check(0 <= number("momentum") < 1, "momentum must be in [0, 1)", self.momentum)
        check(number("weight_decay") >= 0, "weight_decay must be >= 0", self.weight_decay)
        check(0 <= number("label_smoothing") < 1, "label_smoothing must be in [0, 1)", self.label_smoothing)
        check(number("warmup_epochs") >= 0, "warmup_epochs must be >= 0", self.warmup_epochs)
        check(self.warmup_epochs <= max(self.epochs, 1), f"warmup_epochs must be <= epochs ({self.epochs}): "
              f"a longer warm-up never reaches lr", self.warmup_epochs)
        check(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}", self.schedule)
        check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
              "device must be cpu, cuda, cuda:N or auto", self.device)


@dataclass
class TrainResult:
    """The outcome of :meth:`Trainer.fit`.

    ``status`` is ``completed`` (all epochs), ``diverged`` (a NaN/inf training
    or validation loss, or a NaN/inf weight or buffer, ended the run; ``message``
    says where) or ``stopped`` (the callback asked).
    ``history`` has one dict per finished epoch (see :meth:`Trainer.fit`);
    ``test_acc``/``test_loss`` are set when ``fit(test=True)`` completed.
    """

    status: Literal["completed", "diverged", "stopped"]
    history: list[dict[str, Any]]
    message: str = ""
    test_acc: float | None = None
    test_loss: float | None = None
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        """Epochs finished (a diverged epoch does not count)."""
        return sum(1 for h in self.history if not h.get("diverged") and math.isfinite(h["train_loss"]))

    @property
    def val_acc(self) -> float | None:
        """Validation accuracy after the last epoch (``None`` before any, or without a validation part)."""
        return self.history[-1]["val_acc"] if self.history else None


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a CUDA request without CUDA is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but CUDA is not available here; use --device cpu or auto")
    return torch.device(device)


def memory_format(model: nn.Module, device: torch.device, channels_last: bool = True) -> torch.memory_format:
    """The layout to train ``model`` in on ``device``: ``channels_last`` unless oneDNN would crash in it.

    On CPU, the backward (weight gradient) of a strided 1x1 convolution with
    fewer than 16 input channels (oneDNN's ``ic_block``), given NHWC tensors,
    runs oneDNN's ``jit_1x1`` "reduce to unit stride" path, which addresses its
    per-thread workspace with ``ic_block`` floats per pixel although it was sized
    for ``ic``: it writes up to 16/ic times past it and corrupts the heap
    (SIGSEGV in ``jit_avx512_common_1x1_convolution_bwd_weights_t``, or "corrupted
    size vs. prev_size"), as soon as images are large enough, e.g. the 1x1
    shortcut projections 4 -> 8 of a width-4 ResNet on 48 px or larger images
    (oneDNN issue #6035, still open in the oneDNN 3.12 of torch 2.14). In NCHW
    oneDNN uses its blocked layout, whose path is correct, so such models train
    in NCHW on CPU (measured on width-4 Fashion-MNIST nets: as fast or faster).
    """
    if not channels_last:
        return torch.contiguous_format
    if device.type == "cpu" and any(
            isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.groups == 1
            and m.in_channels < 16 for m in model.modules()):
        return torch.contiguous_format
    return torch.channels_last


def lr_factor(schedule: str, t: float) -> float:
    """Multiplier of the base lr at training progress ``t`` in [0, 1]."""
    if schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    if schedule == "onecycle":
        return t / 0.25 if t < 0.25 else max(0.0, (1.0 - t) / 0.75)
    return 1.0


def _seed(seed: int, epoch: int, stream: int) -> int:
    """A distinct 63-bit seed per (seed, epoch, stream)."""
    return (seed * 1_000_003 + epoch * 10_007 + stream * 101 + 12_345) % (2**63 - 1)


class _LrLambda:
    """Per-step lr multiplier: the schedule times a linear warm-up (a class, so it pickles)."""

    def __init__(self, schedule: str, total_steps: int, warmup_steps: int) -> None:
        self.schedule, self.total, self.warmup = schedule, max(1, total_steps), warmup_steps

    def __call__(self, step: int) -> float:
        factor = lr_factor(self.schedule, step / self.total)
        if self.warmup > 0:
            factor *= min(1.0, (step + 1) / self.warmup)
        return factor


class Trainer:
    """Trains ``model`` on ``data`` with ``config``; see :meth:`fit`, :meth:`evaluate`, :meth:`state_dict`."""

    def __init__(self, model: nn.Module, data: DatasetSplits, config: TrainConfig | None = None) -> None:
        self.config = config = config if config is not None else TrainConfig()
        self.data = data
        self.info = data.info
        self.device = resolve_device(config.device)
        self.memory_format = memory_format(model, self.device, config.channels_last)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self._forward: nn.Module | Callable[..., torch.Tensor] = (
            torch.compile(self.model) if config.compile else self.model)
        self._on_device: dict[str, TensorSplit] = {}
        mean = torch.tensor(self.info.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.info.std, device=self.device).view(1, -1, 1, 1)
        self._shift, self._scale = 255.0 * mean, 1.0 / (255.0 * std)
        self.steps_per_epoch = self._steps_per_epoch()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         nesterov=config.nesterov and config.momentum > 0,
                                         weight_decay=config.weight_decay)
        warmup = round(config.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _LrLambda(config.schedule, config.epochs * self.steps_per_epoch, warmup))
        self.epoch = 0
        self.status = "pending"
        self.message = ""
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ data
    def _steps_per_epoch(self) -> int:
        n, bs = len(self.data.train), self.config.batch_size
        if n == 0:
            raise ValueError(f"the training part of {self.info.name} is empty")
        return max(1, n // bs)

    def _part(self, split: str) -> TensorSplit | StreamSplit:
        part = getattr(self.data, split, None)
        if part is None or split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test; got {split!r}")
        if isinstance(part, StreamSplit):
            return part
        if split not in self._on_device:  # uint8 on the device, once
            self._on_device[split] = TensorSplit(part.images.to(self.device), part.labels.to(self.device))
        return self._on_device[split]

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(self.device, non_blocking=True).float() - self._shift) * self._scale
        return x.contiguous(memory_format=self.memory_format)

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Pad + random crop and random horizontal flip of a uint8 batch, per image, on its device."""
        b, _, h, w = x.shape
        pad = self.info.crop_padding
        if pad > 0:
            padded = F.pad(x, (pad, pad, pad, pad))
            dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen, device=x.device)
            dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen, device=x.device)
            rows = (dy + torch.arange(h, device=x.device)).unsqueeze(2)  # (B, H, 1)
            cols = (dx + torch.arange(w, device=x.device)).unsqueeze(1)  # (B, 1, W)
            batch = torch.arange(b, device=x.device).view(b, 1, 1)
            x = padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # gathered as (B, H, W, C)
        if self.info.hflip:
            flip = torch.rand(b, generator=gen, device=x.device) < 0.5
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
        return x

    def _train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        part = self._part("train")
        seed = _seed(self.config.seed, epoch, 0)
        bs, steps = self.config.batch_size, self.steps_per_epoch
        if isinstance(part, StreamSplit):
            loader = part.loader(bs, shuffle=True, seed=seed, drop_last=len(part) >= bs,
                                 pin_memory=self.device.type == "cuda")
            for images, labels in loader:
                yield self._normalise(images), labels.to(self.device, non_blocking=True)
            return
        gen = torch.Generator(device=self.device).manual_seed(seed)
        order = torch.randperm(len(part), generator=gen, device=self.device)
        for i in range(steps):
            idx = order[i * bs:(i + 1) * bs]
            images = part.images[idx]
            if self.config.augment:
                images = self._augment(images, gen)
            yield self._normalise(images), part.labels[idx]

    def recalibration_batches(self, epoch: int) -> list[torch.Tensor]:
        """The training images that re-estimate batch-norm statistics after ``epoch`` (see ``bn_recalibration``)."""
        part, bs, n = self._part("train"), self.config.batch_size, self.config.bn_recalibration
        seed = _seed(self.config.seed, epoch, 2)
        if isinstance(part, StreamSplit):
            loader = part.loader(bs, shuffle=True, seed=seed, pin_memory=self.device.type == "cuda")
            return [self._normalise(images) for images, _ in itertools.islice(loader, n)]
        gen = torch.Generator(device=self.device).manual_seed(seed)
        order = torch.randperm(len(part), generator=gen, device=self.device)[:n * bs]
        return [self._normalise(part.images[order[i:i + bs]]) for i in range(0, len(order), bs)]

    def _recalibrate(self, epoch: int) -> None:
        if self.config.bn_recalibration and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                for m in self.model.modules()):
            torch.manual_seed(_seed(self.config.seed, epoch, 3))  # model noise (inside fit's fork_rng)
            with torch.no_grad():
                update_bn(self.recalibration_batches(epoch), self.model)

    def _eval_batches(self, part: TensorSplit | StreamSplit) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs = self.config.eval_batch_size
        if isinstance(part, StreamSplit):
            for images, labels in part.loader(bs, pin_memory=self.device.type == "cuda"):
                yield self._normalise(images), labels.to(self.device, non_blocking=True)
            return
        for i in range(0, len(part), bs):
            yield self._normalise(part.images[i:i + bs]), part.labels[i:i + bs]

    def _autocast(self) -> contextlib.AbstractContextManager:
        amp = self.config.amp if self.config.amp is not None else self.device.type == "cuda"
        if amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------- evaluate
    def evaluate(self, split: str = "val") -> dict[str, float]:
        """``{"loss", "acc", "n"}`` of the model on ``split`` (``val``, ``test`` or ``train``), in eval mode.

        ``loss`` and ``acc`` are NaN when the split is empty.
        """
        part = self._part(split)
        was_training = self.model.training
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        n = 0
        with torch.no_grad(), self._autocast():
            for x, y in self._eval_batches(part):
                logits = self._forward(x).float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
                correct += (logits.argmax(1) == y).sum()
                n += int(y.shape[0])
        self.model.train(was_training)
        if n == 0:
            return {"loss": math.nan, "acc": math.nan, "n": 0}
        return {"loss": float(loss_sum) / n, "acc": int(correct) / n, "n": n}

    # ------------------------------------------------------------------ fit
    def _progress(self, epoch: int) -> Any:
        show = self.config.progress if self.config.progress is not None else sys.stderr.isatty()
        if not show:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch}/{self.config.epochs}", leave=False,
                    unit="batch", file=sys.stderr, dynamic_ncols=True)

    def _train_epoch(self, epoch: int) -> tuple[float, int, str]:
        """One epoch; returns ``(mean train loss, images seen, divergence message or "")``."""
        self.model.train()
        torch.manual_seed(_seed(self.config.seed, epoch, 1))  # the model's own noise
        check_every = 1 if self.device.type == "cpu" else 16
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        images = steps = 0
        bar = self._progress(epoch)
        try:
            for x, y in self._train_batches(epoch):
                with self._autocast():
                    loss = F.cross_entropy(self._forward(x).float(), y, label_smoothing=self.config.label_smoothing)
                if steps % check_every == 0 or steps == self.steps_per_epoch - 1:
                    value = loss.item() if check_every == 1 else float(loss_sum + loss.detach())
                    if not math.isfinite(value):
                        lr = self.optimizer.param_groups[0]["lr"]
                        return value, images, (f"diverged at epoch {epoch}, step {steps + 1}/{self.steps_per_epoch}: "
                                               f"the training loss is {value} (lr {lr:.4g}); training stopped. "
                                               f"Try a lower learning rate or a longer warm-up.")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                loss_sum += loss.detach().double()
                steps += 1
                images += int(y.shape[0])
                if bar is not None:
                    bar.update()
                    if steps % 10 == 0:
                        bar.set_postfix(loss=f"{float(loss):.4f}")
        finally:
            if bar is not None:
                bar.close()
        mean = float(loss_sum) / max(1, steps)
        if not math.isfinite(mean):  # reached only on CUDA, between two checks
            return mean, images, f"diverged in epoch {epoch}: the training loss is {mean}; training stopped"
        return mean, images, ""

    def _nonfinite_state(self, epoch: int) -> str:
        """The divergence message if a floating parameter or buffer holds NaN/inf after ``epoch``, else ``""``."""
        params = {id(p) for p in self.model.parameters()}
        with torch.no_grad():
            for name, t in self.model.state_dict(keep_vars=True).items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    kind = "parameter" if id(t) in params else "buffer"
                    return (f"diverged in epoch {epoch}: the {kind} {name} holds NaN or infinite values although "
                            f"the training loss stayed finite; training stopped. Try a lower learning rate or a "
                            f"longer warm-up.")
        return ""

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fit(self, callback: Callback | None = None, *, test: bool = False) -> TrainResult:
        """Train until ``config.epochs`` (continuing from a loaded :meth:`state_dict`).

        After each epoch, ``callback`` (if any) gets that epoch's dict:
        ``epoch`` (1-based), ``train_loss``, ``val_acc``, ``val_loss``
        (``None`` without a validation part), ``images_per_s`` (training
        throughput), ``seconds`` (epoch wall time, evaluation included), ``lr``
        and ``diverged``: ``""``, or why the run diverged in this epoch.
        When :meth:`state_dict` is taken inside the callback it holds that
        epoch as finished. A truthy return value stops training (status
        ``stopped``); an exception propagates out of ``fit`` unchanged.

        Divergence is detected here: a NaN/inf training loss (which ends the
        epoch at once, before the bad step; ``val_*`` are then NaN), a NaN/inf
        parameter or buffer after the epoch (``val_*`` NaN), or a NaN/inf
        validation loss. The callback still gets that epoch's dict, with
        ``diverged`` set to the message; the status becomes ``diverged``, the
        epoch does not count as finished and training stops.

        With ``test=True`` a completed run also measures the test split.
        """
        start = time.perf_counter()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            while self.status not in ("diverged",) and self.epoch < self.config.epochs:
                epoch = self.epoch + 1
                self._sync()
                t0 = time.perf_counter()
                train_loss, n_images, problem = self._train_epoch(epoch)
                self._sync()
                train_seconds = time.perf_counter() - t0
                metrics: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
                if not problem:
                    self._recalibrate(epoch)
                    problem = self._nonfinite_state(epoch)
                if problem:
                    metrics.update(val_acc=math.nan, val_loss=math.nan)
                elif len(self.data.val):
                    val = self.evaluate("val")
                    metrics.update(val_acc=val["acc"], val_loss=val["loss"])
                    if not math.isfinite(val["loss"]):
                        problem = (f"diverged in epoch {epoch}: the validation loss is {val['loss']} although "
                                   f"the training loss ({train_loss:.4g}) and the weights are finite; training "
                                   f"stopped. Try a lower learning rate or a longer warm-up.")
                else:
                    metrics.update(val_acc=None, val_loss=None)
                metrics.update(images_per_s=n_images / max(train_seconds, 1e-9),
                               seconds=time.perf_counter() - t0, lr=self.optimizer.param_groups[0]["lr"],
                               diverged=problem)
                self.history.append(metrics)
                if problem:
                    self.status, self.message = "diverged", problem
                    if callback is not None:
                        callback(dict(metrics))
                    break
                self.epoch = epoch
                self.status = "running"
                if callback is not None and callback(dict(metrics)):
                    self.status, self.message = "stopped", f"stopped by the callback after epoch {epoch}"
                    break
        if self.status not in ("diverged", "stopped"):
            self.status = "completed"
            self.message = self.message or f"completed {self.epoch} epochs"
        result = TrainResult(status=self.status, history=list(self.history), message=self.message,  # type: ignore[arg-type]
                             config=asdict(self.config))
        if test and self.status == "completed":
            scores = self.evaluate("test")
            result.test_acc, result.test_loss = scores["acc"], scores["loss"]
        result.seconds = time.perf_counter() - start
        return result

    # ----------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: model, optimizer, scheduler, epoch, status, history.

        No RNG state is needed: every epoch's randomness is derived from
        ``(config.seed, epoch)``. Loadable with ``torch.load(..., weights_only=True)``.
        """
        return {
            "format": STATE_FORMAT, "version": STATE_VERSION, "epoch": self.epoch, "status": self.status,
            "message": self.message, "seed": self.config.seed, "steps_per_epoch": self.steps_per_epoch,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; the model and config must be those the state came from."""
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a trainer state of {STATE_FORMAT} version {STATE_VERSION}")
        if state["steps_per_epoch"] != self.steps_per_epoch or state["seed"] != self.config.seed:
            raise ValueError(f"the trainer state was made with seed {state['seed']} and {state['steps_per_epoch']} "
                             f"steps per epoch; this trainer has seed {self.config.seed} and {self.steps_per_epoch}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.status, self.message = int(state["epoch"]), state["status"], state["message"]
        self.history = [dict(h) for h in state["history"]]
