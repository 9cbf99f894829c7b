"""Training throughput: lmsearch's trainer vs a plain torchvision DataLoader loop, on the same model.

For each model (default ResNet-20 and LM-ResNet-56) on Fashion-MNIST, in one run:

* **ours**: :class:`lmsearch.train.Trainer`: the dataset as uint8 on the device,
  crop/flip/normalise in batch there, channels_last, no DataLoader;
* **plain**: how the authors' notebook trains: torchvision's FashionMNIST with
  ``RandomCrop(28, padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()``,
  ``Normalize`` through a ``DataLoader``, NCHW fp32, same SGD settings;
* optionally **ours bf16** (``--bf16``): bf16 autocast on the CPU.

Both see the same images for two passes; the second pass is timed (the
first warms up oneDNN's kernels). Throughput is reported in images/s, their
ratio, and training GFLOP/s (3 x forward FLOPs per image) as a share of this
machine's fp32 matmul peak, measured here with a large ``torch.mm``. On a
shared machine the numbers move with the other load: the 1-minute load
average is printed before and after.

Example:
    python benchmarks/train_throughput.py                      # defaults: 20 batches of 128, both models
    python benchmarks/train_throughput.py --models resnet20 --batches 50 --threads 2 --bf16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                epilog="Goals on a CPU: ratio >= 1.7x and >= 60% of the fp32 matmul peak for ResNet-20.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "lm_resnet56"], help="zoo names (default: %(default)s)")
    p.add_argument("--batches", type=int, default=20, help="batches per timed pass (default %(default)s; 2 passes each)")
    p.add_argument("--batch-size", type=int, default=128, help="default %(default)s")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the plain loop (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: lmsearch's search order)")
    p.add_argument("--bf16", action="store_true", help="also time our trainer with bf16 autocast")
    return p.parse_args(argv)


def matmul_peak_gflops(device: torch.device, n: int = 2048, seconds: float = 1.0) -> float:
    """Measured fp32 ``torch.mm`` GFLOP/s (2 n^3 per product), the best of a few timed repeats."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        reps, start = 0, time.perf_counter()
        _sync(device)
        while time.perf_counter() - start < seconds / 3:
            a @ b
            reps += 1
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(name: str, in_channels: int, num_classes: int, seed: int = 0) -> tuple[torch.nn.Module, object]:
    import lmsearch

    torch.manual_seed(seed)
    model = lmsearch.create_model(name, in_channels=in_channels, num_classes=num_classes)
    return model, model.spec


def time_ours(name: str, data: object, args: argparse.Namespace, amp: bool) -> float:
    """Images/s of the second epoch of lmsearch's trainer over the benchmark subset."""
    from lmsearch.train import TrainConfig, Trainer

    model, _ = _build(name, data.info.in_channels, data.info.num_classes)
    config = TrainConfig(epochs=2, batch_size=args.batch_size, device=args.device, amp=amp, progress=False,
                         schedule="constant")
    result = Trainer(model, data, config).fit()
    return float(result.history[-1]["images_per_s"])


def time_plain(name: str, data: object, args: argparse.Namespace) -> float:
    """Images/s of the second pass of a plain DataLoader + torchvision transforms loop (NCHW fp32)."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms as T
    from torchvision.datasets import FashionMNIST

    from lmsearch.data.fashion_mnist import _stage, find_fashion_mnist
    from lmsearch.data.splits import split_indices

    device = torch.device(args.device)
    info = data.info
    transform = T.Compose([T.RandomCrop(28, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(info.mean, info.std)])
    model, _ = _build(name, info.in_channels, info.num_classes)
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    with tempfile.TemporaryDirectory() as tmp:
        _stage(find_fashion_mnist(args.data_dir), Path(tmp) / "FashionMNIST" / "raw")
        full = FashionMNIST(tmp, train=True, transform=transform)
        # the images our trainer sees: load_dataset's seeded subset, as indices into the training file
        indices = split_indices(len(full), val_fraction=0.1, seed=0, subset=len(data.train))[0].tolist()
        dataset = Subset(full, indices)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            num_workers=args.workers, pin_memory=device.type == "cuda")
        model.train()
        for _ in range(2):
            _sync(device)
            start, seen = time.perf_counter(), 0
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                seen += y.shape[0]
            _sync(device)
            elapsed = time.perf_counter() - start
    return seen / elapsed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import lmsearch
    from lmsearch.data import load_dataset

    device = torch.device(args.device)
    n = args.batches * args.batch_size
    data = load_dataset("fashion-mnist", args.data_dir, val_fraction=0.1, seed=0, subset=n)
    data = type(data)(data.info, data.train, data.val.take(torch.arange(min(256, len(data.val)))), data.test)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    peak = matmul_peak_gflops(device)
    print(f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
          f"fp32 matmul peak {peak:.0f} GFLOP/s; load average {load:.2f} on {os.cpu_count()} CPUs")
    print(f"{n} Fashion-MNIST images per pass, batch {args.batch_size}, second of two passes timed; "
          f"plain loop: {args.workers} DataLoader workers")
    header = f"{'model':<14}{'loop':<12}{'images/s':>10}{'ratio':>8}{'GFLOP/s':>10}{'% peak':>8}"
    print(header)
    print("-" * len(header))
    for name in args.models:
        _, spec = _build(name, data.info.in_channels, data.info.num_classes)
        train_flops = 3 * lmsearch.count_flops(spec, input_size=data.info.shape)
        plain = time_plain(name, data, args)
        rows = [("plain", plain), ("ours", time_ours(name, data, args, amp=False))]
        if args.bf16:
            rows.append(("ours bf16", time_ours(name, data, args, amp=True)))
        for loop, ips in rows:
            gflops = ips * train_flops / 1e9
            print(f"{name:<14}{loop:<12}{ips:>10.0f}{ips / plain:>7.2f}x{gflops:>10.1f}{100 * gflops / peak:>7.0f}%",
                  flush=True)
    after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average after: {after:.2f} (other processes share these CPUs: treat the figures as lower bounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
