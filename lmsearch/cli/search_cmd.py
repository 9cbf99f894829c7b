"""``lmsearch search``: run or resume a scheme search described by a space file."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from lmsearch.cli import nonempty

HELP = "Run (or --resume) an architecture search from a search-space YAML file."

EPILOG = """\
examples:
  lmsearch search search_spaces/fashion_quick.yaml
  lmsearch search search_spaces/fashion_quick.yaml --num-samples 4 --out /tmp/quick
  lmsearch search search_spaces/fashion_quick.yaml --out /tmp/quick --resume
  lmsearch search search_spaces/fashion_quick.yaml --time-budget 20m
  RAY_AUTH_MODE=token ray start --head --node-ip-address=127.0.0.2 --port=6390 --num-cpus=2
  lmsearch search search_spaces/fashion_quick.yaml --address 127.0.0.2:6390

Joining a cluster (--address) needs its token in RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN
or ~/.ray/auth_token (README: "GPUs and Ray clusters").

While it runs, one line per trial event: started, each epoch's validation
accuracy, pruned, completed or failed, with the counts so far, the size of the
Pareto front and the estimated time left. At the end: the front, the counts,
the front plot (pareto.png) and the commands to look further.

Exit status: 0 when every trial has ended (all of them, or those drawn within
--time-budget: --resume runs the rest); 2 when the search cannot start (bad
space file, data, --out, --address or resources: a new experiment then leaves
nothing behind) or another running search uses --out; 130 when interrupted
(Ctrl-C: continue with --resume).

The experiment folder (default results/<name>/) gets space.yaml, trials.csv,
curves.csv, pareto.csv, the Optuna study (study.db: optuna-dashboard
sqlite:///results/<name>/study.db) and Ray Tune's state under ray/.
"""


def _duration(text: str) -> float:
    """argparse type: a time budget in seconds (:func:`lmsearch.space.parse_duration`)."""
    from lmsearch.space import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _node_ip(text: str) -> str:
    """argparse type: an IP address, or ``auto``."""
    if text == "auto":
        return text
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an IP address (e.g. 127.0.0.2) or 'auto'; got {text!r}") from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("space", type=nonempty, help="search-space YAML file (see search_spaces/)")
    parser.add_argument("--out", type=nonempty, help="experiment folder (default: results/<name from the space file>)")
    parser.add_argument("--name", help="experiment name (default: the space file's `name`, else its stem)")
    parser.add_argument("--num-samples", type=int, help="number of trials (default: the file's search.num_samples)")
    parser.add_argument("--pruner", choices=("none", "pareto", "median", "percentile", "successive_halving",
                                             "hyperband"),
                        help="replace the space file's pruner (default parameters)")
    parser.add_argument("--address", type=nonempty, help="join a Ray cluster: 'auto' or HOST:PORT (default: start a local node)")
    parser.add_argument("--node-ip", default="127.0.0.2", type=_node_ip,
                        help="address the local Ray node binds to (default 127.0.0.2, a loopback address: "
                             "no traffic leaves the machine); 'auto' lets Ray choose")
    parser.add_argument("--time-budget", type=_duration, metavar="T",
                        help="draw no trial after T (seconds, or a number with s, m or h: 90s, 20m, 1.5h) "
                             "from this sitting's first trial; the trials drawn before finish, and --resume "
                             "runs the rest (default: the file's search.time_budget, else none)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted search in --out: finished trials are kept, "
                             "running ones restart from their last epoch checkpoint (without the "
                             "folder's ray/ state, e.g. in a fresh clone, from its study.db: running "
                             "ones are marked FAILED and their configurations run again, from their "
                             "epoch checkpoint in checkpoints/ when there is one)")
    show = parser.add_mutually_exclusive_group()
    show.add_argument("--quiet", action="store_true",
                      help="no progress lines while it runs (the summary at the end is still printed)")
    show.add_argument("--verbose", "-v", action="count", default=0,
                      help="also Ray Tune's status table of every trial (every 30 s) and what the trials "
                           "print; -vv, -vvv: more of Ray's detail")


def run(args: argparse.Namespace) -> int:
    from lmsearch.cluster import ClusterAuthError
    from lmsearch.lock import ExperimentLocked
    from lmsearch.results import ExperimentFolderError
    from lmsearch.search import SearchError, SearchInterrupted, run_search
    from lmsearch.space import SpaceError

    try:
        run_search(
            args.space, out=args.out, name=args.name, num_samples=args.num_samples, pruner=args.pruner,
            address=args.address,
            resume=args.resume, node_ip=None if args.node_ip == "auto" else args.node_ip, time_budget=args.time_budget,
            verbose=args.verbose, progress=not args.quiet,
        )
    except (SpaceError, SearchError, ExperimentLocked, ClusterAuthError, ExperimentFolderError,
            FileNotFoundError) as exc:
        print(f"lmsearch search: error: {exc}", file=sys.stderr)
        return 2
    except SearchInterrupted as exc:
        print(f"lmsearch search: interrupted; {exc.exp_dir} resumes with --resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the search began: a new one leaves nothing behind
        print("lmsearch search: interrupted", file=sys.stderr)
        return 130
    return 0
