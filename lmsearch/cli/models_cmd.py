"""``lmsearch models``: the model zoo with each preset's scheme, depth and parameter count."""

from __future__ import annotations

import argparse

HELP = "List the model zoo: name, scheme, depth, width, block, parameters."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="", help="only names containing this text")


def run(args: argparse.Namespace) -> int:
    from lmsearch.nn.counting import count_params
    from lmsearch.nn.zoo import list_models, model_spec

    names = [n for n in list_models() if args.pattern in n]
    if not names:
        print(f"no model name contains {args.pattern!r}")
        return 1
    print(f"{'name':28} {'scheme':6} {'depth':>5} {'width':>5} {'block':10} {'params':>12}")
    for name in names:
        spec = model_spec(name)
        print(f"{name:28} {spec.scheme:6} {spec.depth:5d} {spec.width:5d} {spec.block:10} {count_params(spec):12,d}")
    return 0
