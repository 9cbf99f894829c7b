"""lmsearch.train: learning on real data, determinism, resume, divergence, callbacks, augmentation."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from lmsearch.arch import ArchSpec
from lmsearch.data import load_dataset
from lmsearch.train import TrainConfig, Trainer, lr_factor

TIMING = ("images_per_s", "seconds")


def lm_net(in_channels: int = 1, num_classes: int = 10, depth: int = 14, width: int = 8, seed: int = 0,
           **fields: object) -> nn.Module:
    """A real, tiny LM-ResNet (depth 14: one LM step per stage after the projecting Euler step)."""
    from lmsearch.nn.network import build_model

    torch.manual_seed(seed)
    return build_model(ArchSpec(scheme="lm", depth=depth, width=width, in_channels=in_channels,
                                num_classes=num_classes, **fields))


def _timeless(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny_data():
    return load_dataset("synthetic", num_train=320, num_test=64, shape=(1, 12, 12), num_classes=4, seed=0)


def _config(**kw: object) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 32, "device": "cpu", "progress": False, "lr": 0.05}
    return TrainConfig(**{**base, **kw})


@pytest.mark.fashion
def test_learns_fashion_mnist() -> None:
    data = load_dataset("fashion-mnist", subset=2000, val_fraction=0.05, seed=0)
    seen = []
    config = _config(epochs=2, batch_size=16, lr=0.05, schedule="cosine", augment=False)
    result = Trainer(lm_net(preact=False), data, config).fit(callback=seen.append, test=True)
    assert result.status == "completed" and [h["epoch"] for h in seen] == [1, 2]
    assert set(seen[0]) >= {"epoch", "train_loss", "val_acc", "val_loss", "images_per_s", "seconds"}
    assert seen[1]["train_loss"] < seen[0]["train_loss"]
    assert result.val_acc > 0.70, result.history
    assert result.test_acc > 0.65 and result.history == seen


def test_same_seed_same_result(tiny_data) -> None:
    runs = []
    for _ in range(2):
        model = lm_net(depth=14, width=4, noise="stochastic_depth", noise_prob=0.3)
        runs.append((Trainer(model, tiny_data, _config(seed=7)).fit(), model))
    (r1, m1), (r2, m2) = runs
    assert r1.status == r2.status == "completed" and all(h["diverged"] == "" for h in r1.history)
    assert _timeless(r1.history) == _timeless(r2.history)
    assert _same_weights(m1, m2)
    other = lm_net(depth=14, width=4, noise="stochastic_depth", noise_prob=0.3)
    r3 = Trainer(other, tiny_data, _config(seed=8)).fit()
    assert _timeless(r3.history) != _timeless(r1.history)


@pytest.mark.parametrize("bn_recalibration", [0, 2])
def test_resume_from_epoch_checkpoint_is_bit_exact(tiny_data, bn_recalibration: int) -> None:
    config = _config(epochs=3, schedule="cosine", warmup_epochs=1, bn_recalibration=bn_recalibration)
    full_model = lm_net(width=4)
    full = Trainer(full_model, tiny_data, config).fit()

    saved = {}
    first = Trainer(lm_net(width=4), tiny_data, config)

    def checkpoint_then_crash(metrics: dict) -> None:
        buf = io.BytesIO()
        torch.save(first.state_dict(), buf)
        saved[metrics["epoch"]] = buf.getvalue()
        if metrics["epoch"] == 1:
            raise RuntimeError("worker died")

    with pytest.raises(RuntimeError, match="worker died"):  # a callback's exception propagates
        first.fit(callback=checkpoint_then_crash)

    torch.manual_seed(123)  # the resumed process has another RNG state and another initialisation
    resumed_model = lm_net(width=4, seed=99)
    resumed = Trainer(resumed_model, tiny_data, config)
    resumed.load_state_dict(torch.load(io.BytesIO(saved[1]), weights_only=True))
    seen = []
    result = resumed.fit(callback=seen.append)
    assert [h["epoch"] for h in seen] == [2, 3] and result.status == "completed"
    assert _timeless(result.history) == _timeless(full.history)
    assert _same_weights(resumed_model, full_model)


def test_bn_recalibration_is_update_bn_and_leaves_training_alone(tiny_data) -> None:
    plain_model, recal_model = lm_net(width=4), lm_net(width=4)
    plain = Trainer(plain_model, tiny_data, _config(epochs=2))
    recal = Trainer(recal_model, tiny_data, _config(epochs=2, bn_recalibration=3))
    rp, rr = plain.fit(), recal.fit()
    # the training path is untouched: same losses, same learned parameters
    assert [h["train_loss"] for h in rp.history] == [h["train_loss"] for h in rr.history]
    assert all(torch.equal(a, b) for a, b in zip(plain_model.parameters(), recal_model.parameters(), strict=True))
    # only the statistics differ, and they are update_bn's over the last epoch's seeded batches
    batches = recal.recalibration_batches(2)
    assert [len(b) for b in batches] == [32, 32, 32]
    running = {k: v.clone() for k, v in plain_model.state_dict().items() if "running" in k}
    assert any(not torch.equal(v, recal_model.state_dict()[k]) for k, v in running.items())
    update_bn(batches, plain_model)
    assert _same_weights(plain_model, recal_model)
    assert plain.evaluate("val") == recal.evaluate("val")
    assert rr.history[-1]["val_acc"] == recal.evaluate("val")["acc"]
    # the batches come from a permutation seeded by (seed, epoch): unaugmented training images
    assert not torch.equal(batches[0], recal.recalibration_batches(1)[0])
    with pytest.raises(ValueError, match="bn_recalibration must be an integer >= 0"):
        _config(bn_recalibration=-1)


def test_divergence_stops_with_a_clear_status(tiny_data) -> None:
    seen = []
    model = lm_net(width=4)
    result = Trainer(model, tiny_data, _config(lr=1e6, epochs=3)).fit(callback=seen.append)
    assert result.status == "diverged" and "diverged at epoch 1" in result.message
    assert "lower learning rate" in result.message
    assert len(seen) == 1 and not math.isfinite(seen[0]["train_loss"]) and math.isnan(seen[0]["val_acc"])
    assert result.epochs == 0


class _NaNAfter(nn.Module):
    """Outputs NaN logits from its ``n``-th call on."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.calls, self.n = 0, n
        self.fc = nn.Linear(144, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.fc(x.flatten(1))
        return out * math.nan if self.calls >= self.n and self.training else out


def test_nan_model_does_not_poison_weights(tiny_data) -> None:
    model = _NaNAfter(15)  # 9 training steps + 1 validation batch per epoch: NaN at step 5 of epoch 2
    trainer = Trainer(model, tiny_data, _config(epochs=3, channels_last=False))
    result = trainer.fit()
    assert trainer.steps_per_epoch == 9
    assert result.status == "diverged" and "epoch 2, step 5/9" in result.message
    assert result.epochs == 1 and math.isfinite(result.history[0]["val_acc"])
    assert all(torch.isfinite(p).all() for p in model.parameters())  # stopped before the bad step


class _PoisonAfter(nn.Module):
    """Finite outputs in training; from the ``n``-th training call on, its ``scale`` buffer is inf (and, with
    ``eval_inf``, its evaluation logits are inf while every weight stays finite)."""

    def __init__(self, n: int, eval_inf: bool = False) -> None:
        super().__init__()
        self.calls, self.n, self.eval_inf = 0, n, eval_inf
        self.fc = nn.Linear(144, 4)
        self.register_buffer("scale", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1))
        if not self.training:
            return out * math.inf if self.eval_inf else out
        self.calls += 1
        if self.calls >= self.n and not self.eval_inf:
            self.scale.fill_(math.inf)  # after the loss was computed from finite values
        return out


def test_nonfinite_buffer_after_an_epoch_is_divergence(tiny_data) -> None:
    seen = []
    model = _PoisonAfter(18)  # 9 steps per epoch: the buffer turns inf at the last step of epoch 2
    result = Trainer(model, tiny_data, _config(epochs=3, channels_last=False)).fit(callback=seen.append)
    assert result.status == "diverged" and result.epochs == 1
    assert "diverged in epoch 2: the buffer scale holds NaN or infinite values" in result.message
    assert [m["diverged"] for m in seen] == ["", result.message]
    assert math.isfinite(seen[1]["train_loss"]) and math.isnan(seen[1]["val_loss"])


def test_nonfinite_validation_loss_is_divergence(tiny_data) -> None:
    seen = []
    trainer = Trainer(_PoisonAfter(1, eval_inf=True), tiny_data, _config(epochs=2, channels_last=False))
    result = trainer.fit(callback=seen.append)
    assert result.status == "diverged" and trainer.epoch == 0 and result.epochs == 0
    assert "diverged in epoch 1: the validation loss is nan" in result.message
    assert len(seen) == 1 and seen[0]["diverged"] == result.message


def test_callback_stops_and_caller_rng_untouched(tiny_data) -> None:
    trainer = Trainer(lm_net(width=4), tiny_data, _config(epochs=4))
    torch.manual_seed(42)
    before = torch.get_rng_state()
    result = trainer.fit(callback=lambda m: m["epoch"] == 2)
    assert result.status == "stopped" and len(result.history) == 2
    assert torch.equal(torch.get_rng_state(), before)


def test_no_validation_part_and_evaluate() -> None:
    data = load_dataset("synthetic", num_train=64, num_test=16, shape=(1, 8, 8), num_classes=3, val_fraction=0.0)
    trainer = Trainer(lm_net(num_classes=3, depth=8, width=4), data, _config(epochs=1))
    result = trainer.fit(test=True)
    assert result.history[0]["val_acc"] is None and result.val_acc is None
    scores = trainer.evaluate("test")
    assert scores["n"] == 16 and scores["acc"] == result.test_acc and 0 <= scores["acc"] <= 1


def test_image_folder_path_trains(tmp_path: Path) -> None:
    from test_data import _write_pngs

    _write_pngs(tmp_path)
    data = load_dataset("folder", root=tmp_path, val_fraction=1 / 6, image_size=16, num_workers=0)
    model = lm_net(in_channels=3, num_classes=3, depth=8, width=4)
    result = Trainer(model, data, _config(epochs=1, batch_size=4)).fit(test=True)
    assert result.status == "completed" and result.history[0]["val_acc"] is not None and result.test_acc is not None


def test_augmentation_is_a_padded_crop_or_its_mirror(tiny_data) -> None:
    trainer = Trainer(lm_net(width=4), tiny_data, _config())
    x = torch.arange(3 * 12 * 12, dtype=torch.int64).remainder(250).add(1).to(torch.uint8).view(3, 1, 12, 12)
    out = trainer._augment(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for b in range(3):
        windows = [padded[b, :, dy:dy + 12, dx:dx + 12] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[b], w) or torch.equal(out[b], w.flip(2)) for w in windows)


def test_schedules_and_config_checks() -> None:
    assert [lr_factor("step", t) for t in (0.0, 0.49, 0.5, 0.8)] == pytest.approx([1, 1, 0.1, 0.01])
    assert lr_factor("cosine", 0.0) == 1 and lr_factor("cosine", 1.0) == pytest.approx(0)
    assert lr_factor("onecycle", 0.25) == 1 and lr_factor("onecycle", 1.0) == 0
    for bad in ({"schedule": "linear"}, {"lr": 0}, {"epochs": -1}, {"device": "tpu"}, {"momentum": 1.0},
                {"batch_size": 12.5}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    for name in ("lr", "weight_decay", "warmup_epochs", "momentum", "label_smoothing"):
        for value in (math.inf, math.nan):
            with pytest.raises(ValueError, match=f"{name} must be a finite number; got {value}"):
                TrainConfig(**{name: value})
    assert TrainConfig(batch_size=128.0).batch_size == 128  # e.g. read back from a results table
