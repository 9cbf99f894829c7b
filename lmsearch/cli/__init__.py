"""The ``lmsearch`` command: one sub-module per verb, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# verb -> module under lmsearch.cli; each module defines
#   HELP: str, add_arguments(parser) -> None, run(args) -> int
VERBS = {
    "train": "lmsearch.cli.train_cmd",
    "search": "lmsearch.cli.search_cmd",
    "pareto": "lmsearch.cli.pareto_cmd",
    "export": "lmsearch.cli.export_cmd",
    "models": "lmsearch.cli.models_cmd",
    "check": "lmsearch.cli.check_cmd",
}


def nonempty(text: str) -> str:
    """An argparse type for paths and addresses: an empty value (an unset shell variable) is refused,
    not read as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty or blank")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmsearch",
        description="Architecture search over the numerical schemes of residual networks "
        "(Euler/ResNet, linear multi-step LM-ResNet, Runge-Kutta, PolyNet, RevNet) "
        "with Ray Tune and Optuna.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    for verb, module_name in VERBS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # verb not built yet
        summary = module.HELP.strip().split("\n")[0].split(". ")[0].rstrip(".")
        p = sub.add_parser(verb, help=summary, description=module.HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lmsearch pareto DIR | head`: the reader left; no traceback (Python's signal docs)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
