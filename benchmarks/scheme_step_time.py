"""Training-step time of LM-ResNet vs ResNet (Euler) at equal depth, measured side by side.

For each depth, an Euler net and its LM twin (same ArchSpec but ``scheme="lm"``)
take SGD steps (forward, cross-entropy, backward, update) on the same random
batch. The two are timed alternately, repeat after repeat (the order flips
every repeat), so slow drifts of a shared machine hit both; the table shows
the median step time of each, the ratio of the medians and the ratio of the
fastest steps (the least disturbed by other processes). The 1-minute load
average is printed before and after: on a shared machine the figures are
noisy, compare only ratios from one run.

Goal: lm <= 1.05x euler (the LM combination is one ``torch.lerp`` plus an
in-place add per step; the convolutions dominate).

Example:
    python benchmarks/scheme_step_time.py                       # depths 20 56 110, width 16, batch 128, 32 px
    python benchmarks/scheme_step_time.py --depths 20 --repeats 20 --threads 2 --channels-last
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmsearch.arch import ArchSpec
from lmsearch.nn.network import build_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Goal: lm <= 1.05x euler.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[20, 56, 110], help="6n+2 depths (default: %(default)s)")
    p.add_argument("--width", type=int, default=16, help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=128, help="default %(default)s")
    p.add_argument("--image-size", type=int, default=32, help="default %(default)s")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per scheme and depth (default %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per scheme first (default %(default)s)")
    p.add_argument("--postact", action="store_true", help="post-activation nets (default: pre-activation)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default %(default)s: steadier on a shared machine)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(spec: ArchSpec, args: argparse.Namespace, device: torch.device):
    """A closure running one SGD step of ``build_model(spec)`` on a fixed random batch; returns seconds."""
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build_model(spec).to(device, memory_format=fmt).train()
    forward = torch.compile(model) if args.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, spec.in_channels, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, spec.num_classes, (args.batch_size,), device=device)

    def step() -> float:
        _sync(device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        opt.step()
        _sync(device)
        return time.perf_counter() - start

    return step


def time_alternately(steps: dict[str, Callable[[], float]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """``warmup`` untimed runs of each step, then ``repeats`` timed ones, alternating (the order flips every repeat)."""
    for _ in range(warmup):
        for run in steps.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeats):
        for name in list(steps) if r % 2 == 0 else list(steps)[::-1]:
            times[name].append(steps[name]())
    return times


def fastest_and_median(times: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """The fastest and the median time of each step."""
    return {k: min(v) for k, v in times.items()}, {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {device}, batch {args.batch_size} at "
          f"{args.image_size} px, width {args.width}, {'post' if args.postact else 'pre'}-activation"
          f"{', channels_last' if args.channels_last else ''}{', compiled' if args.compile else ''}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'depth':>5}  {'euler ms':>9}  {'lm ms':>9}  {'lm/euler':>8}  {'min ratio':>9}  {'spread e/l %':>12}")
    for depth in args.depths:
        spec = ArchSpec(scheme="euler", depth=depth, width=args.width, preact=not args.postact)
        steps = {"euler": make_step(spec, args, device), "lm": make_step(spec.replace(scheme="lm"), args, device)}
        times = time_alternately(steps, args.repeats, args.warmup)
        best, med = fastest_and_median(times)
        spread = {k: 100 * (max(v) - min(v)) / med[k] for k, v in times.items()}
        print(f"{depth:>5}  {1e3 * med['euler']:>9.1f}  {1e3 * med['lm']:>9.1f}  {med['lm'] / med['euler']:>7.3f}x"
              f"  {best['lm'] / best['euler']:>8.3f}x  {spread['euler']:>5.0f}/{spread['lm']:<5.0f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}. Step times are medians; min ratio = fastest lm step / "
          "fastest euler step (least disturbed by other load); spread = (max - min) / median of the repeats.")


if __name__ == "__main__":
    main()
