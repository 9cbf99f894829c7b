"""Bytes of tensors saved for backward: RevNet (rev) vs ResNet (euler) as depth grows, side by side.

One training-mode forward pass per network, counting every tensor autograd
saves for backward with ``torch.autograd.graph.saved_tensors_hooks``. The
``activations`` columns leave out saved tensors that are parameters (weights
saved by convolutions); ``total`` counts everything. rev runs its invertible
steps through :func:`lmsearch.nn.reversible.reversible_sequence`, which saves
one output per stage and recomputes the rest in backward; its shape-changing
steps (first step of stages 2 and 3) run on plain autograd, a constant cost.
The ``plain rev`` column is the same rev net with the memory saving switched
off, to show where the flat curve comes from.

Depths are 12n+2 (rev uses two functions per step and needs an even number of
functions per stage). Sizes are exact byte counts, not timings, so the load of
a shared machine does not change them.

Goal: rev flat in depth and <= 25% of euler at depth 110.

Example:
    python benchmarks/rev_memory.py                       # depths 14 26 50 74 98 110, batch 128 at 32 px
    python benchmarks/rev_memory.py --batch-size 32 --depths 26 110 --width 32
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn
from torch.autograd.graph import saved_tensors_hooks

from lmsearch.arch import ArchSpec
from lmsearch.nn.network import build_model
from lmsearch.nn.schemes import ReversibleStage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Goal: rev flat in depth and <= 25%% of euler at depth 110.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[14, 26, 50, 74, 98, 110],
                   help="12n+2 depths (default: %(default)s)")
    p.add_argument("--width", type=int, default=16, help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=128, help="default %(default)s")
    p.add_argument("--image-size", type=int, default=32, help="default %(default)s")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s)")
    return p.parse_args(argv)


def saved_bytes(model: nn.Module, x: Tensor) -> tuple[int, int]:
    """``(activation bytes, total bytes)`` of the tensors autograd saves in one forward pass."""
    params = {p.data_ptr() for p in model.parameters()}
    total = activations = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total, activations
        n = t.numel() * t.element_size()
        total += n
        if t.data_ptr() not in params:
            activations += n
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return activations, total


def _mb(n: int) -> str:
    return f"{n / 2**20:9.1f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    print(f"batch {args.batch_size} at {args.image_size} px, width {args.width}, pre-activation, float32; "
          "MiB saved for backward in one training forward")
    print(f"{'depth':>5}  {'euler act':>9}  {'rev act':>9}  {'rev/euler':>9}  {'plain rev':>9}  "
          f"{'euler tot':>9}  {'rev tot':>9}")
    for depth in args.depths:
        spec = ArchSpec(scheme="euler", depth=depth, width=args.width)
        euler = saved_bytes(build_model(spec).train(), x)
        rev_model = build_model(spec.replace(scheme="rev")).train()
        rev = saved_bytes(rev_model, x)
        for m in rev_model.modules():
            if isinstance(m, ReversibleStage):
                m.memory_saving = False
        plain = saved_bytes(rev_model, x)
        print(f"{depth:>5}  {_mb(euler[0])}  {_mb(rev[0])}  {rev[0] / euler[0]:>8.1%}  {_mb(plain[0])}  "
              f"{_mb(euler[1])}  {_mb(rev[1])}", flush=True)


if __name__ == "__main__":
    main()
