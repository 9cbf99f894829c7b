"""Cost of the compression grid: training images/s per depth and width, fp32 vs bf16 autocast.

Measures :class:`lmsearch.train.Trainer`'s real training step (augmentation,
channels_last, SGD) on synthetic Fashion-MNIST-shaped data (1 x 28 x 28, 10
classes) for the pre-activation nets of the compression experiment (the
authors' layout: ``shortcut="preact_conv"``), euler and lm, at each width and
depth given, with and without bf16 autocast, side by side in one run. Each
configuration trains one warm-up epoch (oneDNN picks its kernels) and one timed
epoch of ``--batches`` batches. From the measured rate it prints the hours one
training run of ``--epochs`` epochs over ``--train-images`` images costs, which is
what the grid's size is chosen from.

On a shared machine the numbers move with the other load: the 1-minute load
average is printed before and after; say so beside any number taken from here.

Example:
    python benchmarks/compression_cost.py --widths 8 16 --depths 20 32 44 56 --batches 20
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16], help="default %(default)s")
    p.add_argument("--depths", type=int, nargs="+", default=[20, 32, 44, 56], help="default %(default)s")
    p.add_argument("--schemes", nargs="+", default=["euler", "lm"], help="default %(default)s")
    p.add_argument("--batches", type=int, default=20, help="timed batches per configuration (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=128, help="default %(default)s")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default %(default)s)")
    p.add_argument("--epochs", type=int, default=30, help="epochs of one run, for the cost estimate (default %(default)s)")
    p.add_argument("--train-images", type=int, default=54000, help="images per epoch (default %(default)s)")
    return p.parse_args(argv)


def images_per_s(scheme: str, depth: int, width: int, amp: bool, args: argparse.Namespace) -> float:
    """Training images/s of one net: a warm-up epoch, then a timed one."""
    from lmsearch.arch import ArchSpec
    from lmsearch.data import load_dataset
    from lmsearch.nn.network import build_model
    from lmsearch.train import TrainConfig, Trainer

    n = args.batches * args.batch_size
    data = load_dataset("synthetic", num_train=n, num_test=args.batch_size, shape=(1, 28, 28), num_classes=10,
                        val_fraction=0.0 if n else 0.1)
    torch.manual_seed(0)
    spec = ArchSpec(scheme=scheme, depth=depth, width=width, preact=True, shortcut="preact_conv", in_channels=1)
    trainer = Trainer(build_model(spec), data, TrainConfig(epochs=2, batch_size=args.batch_size, amp=amp,
                                                           device="cpu", progress=False, schedule="constant"))
    trainer._train_epoch(0)  # warm-up
    start = time.perf_counter()
    trainer._train_epoch(1)
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'width':>5} {'depth':>5} {'scheme':>6} {'fp32 img/s':>10} {'bf16 img/s':>10} {'bf16/fp32':>9} "
          f"{'h/run fp32':>10} {'h/run bf16':>10}")
    for width in args.widths:
        for depth in args.depths:
            for scheme in args.schemes:
                fp32 = images_per_s(scheme, depth, width, False, args)
                bf16 = images_per_s(scheme, depth, width, True, args)
                hours = [args.epochs * args.train_images / r / 3600 for r in (fp32, bf16)]
                print(f"{width:>5} {depth:>5} {scheme:>6} {fp32:>10.0f} {bf16:>10.0f} {bf16 / fp32:>9.2f} "
                      f"{hours[0]:>10.2f} {hours[1]:>10.2f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
