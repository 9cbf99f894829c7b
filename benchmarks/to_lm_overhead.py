"""Training-step time of a torchvision ResNet converted by ``lmsearch.to_lm`` vs the original, side by side.

The original (torchvision's model) and its LM version (``to_lm``, k_n = 0:
the same weights) take SGD steps (forward, cross-entropy, backward, update)
on the same random batch. The two are timed alternately, repeat after repeat
(the order flips every repeat), so slow drifts of a shared machine hit both;
the table shows the fastest and the median step time of each and the ratio
of each. The 1-minute load average is printed before and after: on a shared
machine compare only ratios from one run.

Goal: converted <= 1.05x original at resnet50, batch 32, 64 px, on the CPU.

Example:
    python benchmarks/to_lm_overhead.py                              # resnet50, batch 32, 64 px, 10 repeats
    python benchmarks/to_lm_overhead.py --models resnet18 resnet50 --repeats 20 --per-channel
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from scheme_step_time import (  # this folder is on sys.path when a script runs from it
    fastest_and_median,
    time_alternately,
)

import lmsearch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Goal: to_lm <= 1.05x original.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet50"], help="torchvision constructors (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="default %(default)s")
    p.add_argument("--image-size", type=int, default=64, help="default %(default)s")
    p.add_argument("--num-classes", type=int, default=1000, help="default %(default)s")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per model (default %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (default %(default)s)")
    p.add_argument("--k-init", default="zero", choices=["zero", "paper"], help="k_n init (default %(default)s)")
    p.add_argument("--per-channel", action="store_true", help="one k_n per channel")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch CPU threads (default %(default)s, torch's choice)")
    return p.parse_args(argv)


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    """A closure running one SGD step of ``model`` on ``(x, y)``; returns seconds."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return time.perf_counter() - start

    return step


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {args.threads} thread(s), CPU, "
          f"batch {args.batch_size} at {args.image_size} px, k_init {args.k_init}"
          f"{', per-channel k' if args.per_channel else ''}; load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'model':<16} {'orig min ms':>11} {'lm min ms':>10} {'min ratio':>9}  {'orig med ms':>11} "
          f"{'lm med ms':>10} {'med ratio':>9}")
    for name in args.models:
        torch.manual_seed(0)
        original = getattr(torchvision.models, name)(weights=None, num_classes=args.num_classes)
        converted = lmsearch.to_lm(original, k_init=args.k_init, per_channel=args.per_channel)
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
        y = torch.randint(0, args.num_classes, (args.batch_size,))
        times = time_alternately({"orig": make_step(original, x, y), "lm": make_step(converted, x, y)},
                                 args.repeats, args.warmup)
        best, med = fastest_and_median(times)
        print(f"{name:<16} {1e3 * best['orig']:>11.1f} {1e3 * best['lm']:>10.1f} {best['lm'] / best['orig']:>8.3f}x"
              f"  {1e3 * med['orig']:>11.1f} {1e3 * med['lm']:>10.1f} {med['lm'] / med['orig']:>8.3f}x", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}. {args.repeats} timed steps each, alternated; min = the "
          "fastest step (least disturbed by other load), med = the median.")


if __name__ == "__main__":
    main()
