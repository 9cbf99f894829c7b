"""Ray Tune's per-trial overhead in an lmsearch search.

Runs a search of N tiny trials one at a time (max_concurrent 1, so trial times
add up) and prints, side by side: the search's wall time, the sum of the
trials' own training + evaluation time (trials.csv wall_time_s), and the
difference per trial, with and without the one-off cost of starting Ray and
loading the dataset (measured in the same run).

    python benchmarks/search_overhead.py --trials 12
"""

from __future__ import annotations

import argparse
import os
import tempfile
import textwrap
import time
from pathlib import Path

SPACE = """
name: overhead
dataset: {{name: fashion-mnist, subset: 512}}
budget: {{epochs: {epochs}}}
architecture: {{scheme: [euler, lm], depth: [8, 14], width: 4}}
training: {{batch_size: 128}}
search: {{sampler: random, num_samples: {trials}, seed: 0, max_concurrent: {concurrent}}}
resources: {{cpu: 1}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--concurrent", type=int, default=1, help="trials at a time (default 1)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray

    import lmsearch
    from lmsearch.cluster import init_ray
    from lmsearch.search import run_search

    work = Path(tempfile.mkdtemp(prefix="lmsearch-overhead-"))
    space = work / "space.yaml"
    space.write_text(textwrap.dedent(SPACE.format(trials=args.trials, epochs=args.epochs,
                                                  concurrent=args.concurrent)))
    t0 = time.perf_counter()
    init_ray()
    lmsearch.load_dataset("fashion-mnist", subset=512)
    startup = time.perf_counter() - t0
    t1 = time.perf_counter()
    exp = run_search(space, out=work / "exp", verbose=0)
    search_wall = time.perf_counter() - t1
    ray.shutdown()
    df = lmsearch.load_results(exp)
    train = float(df.wall_time_s.sum())
    n = len(df)
    busy = search_wall * args.concurrent
    print(f"trials={n} epochs={args.epochs} concurrent={args.concurrent}")
    print(f"ray start + dataset load (once): {startup:6.2f} s")
    print(f"search wall time:                {search_wall:6.2f} s  (Ray already up)")
    print(f"sum of trials' own train+eval:   {train:6.2f} s")
    print(f"overhead per trial:              {(busy - train) / n:6.2f} s  (goal <= 1 s)")
    print(f"overhead per trial incl. start:  {(busy + startup - train) / n:6.2f} s")


if __name__ == "__main__":
    main()
