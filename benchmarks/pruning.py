"""Pruning benchmark: replay recorded learning curves under each pruner, no training.

Step 1 (once, slow): record the per-epoch validation curves of a real search
without pruning into benchmarks/data/pruning_curves.csv:

    python benchmarks/pruning.py record            # runs benchmarks/data/pruning_record.yaml
    python benchmarks/pruning.py record --space benchmarks/data/pruning_record_b.yaml \
        --curves benchmarks/data/pruning_curves_b.csv    # the second, independent table

Step 2 (seconds): replay asynchronous searches on that table, W workers taking
trials in a seeded random order, each epoch lasting its recorded seconds, with
the same pruner code the search uses (lmsearch.pruning.PrunerScheduler):

    python benchmarks/pruning.py replay --seeds 10
    python benchmarks/pruning.py sweep             # asha and pareto for eta x first rung

For every policy (none, ASHA on accuracy alone = Optuna's successive halving,
median, and the Pareto pruner: its default ``pareto``, ``pareto-noreach`` without
the reachability test, ``pareto-old`` the rule before issue 16, ``pareto-protect``
with ``protect_schemes``) it prints the mean over seeds of: epochs used (and the
share of no-pruning's), final hypervolume of the COMPLETE trials (objectives:
accuracy max, parameters min; fixed reference point) and its share of
no-pruning's, the share of the true Pareto front (of the replayed trials' final
values) that was found, the trials completed, and the schemes on the front of the
completed trials (canonical schemes: an lm net without LM steps is euler).

``--epochs N`` cuts the table at epoch N (the replayed budget) and ``--trials N``
replays a seeded random subset of N trials per seed, e.g. the main job's setting:

    python benchmarks/pruning.py replay --epochs 6 --trials 24 --seeds 30
"""

from __future__ import annotations

import argparse
import heapq
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
from ray.tune.schedulers import TrialScheduler

from lmsearch.pareto import dominated_mask, hypervolume_points
from lmsearch.pruning import PrunerScheduler, make_pruner

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
CURVES = DATA / "pruning_curves.csv"


def policies(eta: int, min_epochs: int) -> dict[str, dict]:
    """The compared pruners; ASHA and the pareto variants share the rungs (eta, min_epochs).

    ``pareto`` is the default Pareto pruner (hypervolume tie-break in a fixed frame and the
    reachability test); ``pareto-noreach`` drops the reachability test; ``pareto-old`` is the
    rule before issue 16 (crowding-distance tie-break, no reachability test); ``pareto-protect``
    also lets the best trial so far of each scheme past the last rung (``protect_schemes``).
    """
    rung = {"eta": eta, "min_epochs": min_epochs}
    return {
        "none": {"name": "none"},
        "asha": {"name": "successive_halving", **rung},
        "median": {"name": "median", "warmup_epochs": min_epochs},
        "pareto": {"name": "pareto", **rung},
        "pareto-noreach": {"name": "pareto", **rung, "reach": False},
        "pareto-old": {"name": "pareto", **rung, "tie_break": "crowding", "reach": False},
        "pareto-protect": {"name": "pareto", **rung, "protect_schemes": True},
    }


def record(space: Path, out: Path, curves: Path = CURVES, node_ip: str | None = None) -> None:
    """Run the recording search and store its curves with each trial's parameters and scheme.

    The experiment folder is ``out/<the space's name>``; an unfinished one is resumed and a
    finished one only tabled again. ``node_ip``: the local Ray node's address (``--node-ip`` of
    ``lmsearch search``), e.g. a loopback address no other search on the machine uses.
    """
    import lmsearch
    from lmsearch.results import read_experiment
    from lmsearch.space import load_space

    exp = out / load_space(space).name
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lmsearch", "search", str(space), "--out", str(exp)]
    if node_ip:
        cmd += ["--node-ip", node_ip]
    finished = (exp / "experiment.json").exists() and read_experiment(exp).get("status") == "finished"
    if not finished:
        if (exp / "experiment.json").exists():
            cmd.append("--resume")
        subprocess.run(cmd, check=True)
    trials = lmsearch.load_results(exp)
    table = lmsearch.load_curves(exp)
    done = trials[trials.state == "COMPLETE"][["trial_id", "scheme", "depth", "width", "params"]]
    table = table.merge(done, on="trial_id")[["trial_id", "scheme", "depth", "width", "params", "epoch",
                                              "val_acc", "seconds"]]
    curves.parent.mkdir(parents=True, exist_ok=True)
    table.sort_values(["trial_id", "epoch"]).to_csv(curves, index=False)
    print(f"recorded {table.trial_id.nunique()} trials, {len(table)} epochs -> {curves}")


@dataclass
class Outcome:
    epochs: int
    completed: set[str]


def canonical_schemes(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with each trial's canonical scheme, as the searcher records it: an lm net
    without an LM step (one block per stage, e.g. depth 8) is the euler net. The recording
    spaces use basic blocks."""
    from lmsearch.arch import ArchSpec

    scheme = {(s, d): ArchSpec(scheme=s, depth=int(d), block="basic").canonical().scheme
              for s, d in table[["scheme", "depth"]].drop_duplicates().itertuples(index=False)}
    return table.assign(scheme=[scheme[(s, d)] for s, d in zip(table.scheme, table.depth, strict=True)])


def trial_order(table: pd.DataFrame, seed: int, trials: int | None = None) -> list[str]:
    """The seeded order the replay takes trials in; only its first ``trials`` with a subset."""
    order = sorted(table.trial_id.unique())
    random.Random(seed).shuffle(order)
    return order[:trials] if trials else order


def replay(table: pd.DataFrame, policy: dict, seed: int, workers: int, trials: int | None = None) -> Outcome:
    """One asynchronous search over the recorded trials (or a seeded subset of ``trials``) in a seeded order."""
    curves = {tid: g.sort_values("epoch") for tid, g in table.groupby("trial_id")}
    order = trial_order(table, seed, trials)
    budget = int(table.epoch.max())
    storage = optuna.storages.InMemoryStorage()  # the replay has no experiment folder
    study = optuna.create_study(storage=storage, study_name="replay", directions=["maximize", "minimize"])
    scheduler = PrunerScheduler(make_pruner(policy, budget), storage, "replay")
    clock: list[tuple[float, int, str, int]] = []  # (time, tiebreak, trial, epoch that ends then)
    ot_trials: dict[str, optuna.Trial] = {}
    queue = list(order)
    epochs, completed, tick = 0, set(), 0

    def start(now: float) -> None:
        nonlocal tick
        if not queue:
            return
        tid = queue.pop(0)
        ot_trials[tid] = study.ask()
        ot_trials[tid].set_user_attr("params", int(curves[tid].params.iloc[0]))
        ot_trials[tid].set_user_attr("scheme", str(curves[tid].scheme.iloc[0]))
        tick += 1
        heapq.heappush(clock, (now + float(curves[tid].seconds.iloc[0]), tick, tid, 1))

    for _ in range(workers):
        start(0.0)
    while clock:
        now, _, tid, epoch = heapq.heappop(clock)
        epochs += 1
        row = curves[tid].iloc[epoch - 1]
        t = ot_trials[tid]
        if epoch == budget:
            # As the searcher does when a trial completes: its last epoch is recorded too.
            scheduler.record.record_epoch(t.number, {"epoch": epoch, "val_acc": float(row.val_acc)})
            study.tell(t, [float(row.val_acc), int(row.params)])
            completed.add(tid)
            start(now)
            continue
        fake = SimpleNamespace(config={"number": t.number})
        decision = scheduler.on_trial_result(None, fake, {"status": "running", "epoch": epoch,
                                                          "val_acc": float(row.val_acc)})
        if decision == TrialScheduler.STOP:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
            start(now)
        else:
            tick += 1
            heapq.heappush(clock, (now + float(curves[tid].seconds.iloc[epoch]), tick, tid, epoch + 1))
    return Outcome(epochs, completed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run the recording search (slow)")
    rec.add_argument("--space", type=Path, default=DATA / "pruning_record.yaml",
                     help="search space to record (default benchmarks/data/pruning_record.yaml)")
    rec.add_argument("--out", type=Path, default=Path("results"),
                     help="parent of the experiment folder (named after the space; default results)")
    rec.add_argument("--curves", type=Path, default=CURVES, help=f"table to write (default {CURVES.name})")
    rec.add_argument("--node-ip", help="address of the local Ray node (lmsearch search --node-ip)")
    rep = sub.add_parser("replay", help="replay the recorded curves under each pruner")
    rep.add_argument("--curves", type=Path, default=CURVES,
                     help=f"recorded table to replay (default {CURVES.name}: table A; pruning_curves_b.csv: B)")
    rep.add_argument("--seeds", type=int, default=10, help="seeded trial orders to average over (default 10)")
    rep.add_argument("--workers", type=int, default=2, help="trials that run at once (default 2)")
    rep.add_argument("--eta", type=int, default=3, help="reduction factor of asha and pareto (default 3)")
    rep.add_argument("--min-epochs", type=int, default=1, help="first rung of asha and pareto (default 1)")
    swp = sub.add_parser("sweep", help="asha and pareto over several rung settings (eta x first rung)")
    swp.add_argument("--curves", type=Path, default=CURVES, help=f"recorded table (default {CURVES.name})")
    swp.add_argument("--seeds", type=int, default=10, help="seeded trial orders to average over (default 10)")
    swp.add_argument("--workers", type=int, default=2, help="trials that run at once (default 2)")
    swp.add_argument("--etas", type=int, nargs="+", default=[2, 3, 4], help="reduction factors (default 2 3 4)")
    swp.add_argument("--min-epochs-list", type=int, nargs="+", default=[1, 2, 3],
                     help="first rungs (default 1 2 3)")
    for cmd in (rep, swp):
        cmd.add_argument("--epochs", type=int,
                         help="cut the table at this epoch (the replayed budget; default all). The curves stay "
                              "those of the recorded budget: a cosine schedule has not annealed by the cut")
        cmd.add_argument("--trials", type=int,
                         help="replay a seeded random subset of this many trials per seed (default all)")
    args = parser.parse_args()
    if args.command == "record":
        record(args.space, args.out, args.curves, args.node_ip)
        return 0

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = canonical_schemes(pd.read_csv(args.curves, dtype={"trial_id": str}))
    bench = Bench(table, args.seeds, args.workers, args.epochs, args.trials)
    subset = f", seeded subsets of {bench.trials} (each with its own true front)" if bench.trials else ""
    print(f"{len(bench.final)} trials x {bench.budget} epochs, true front {len(bench.true_front)} points{subset}, "
          f"{args.workers} workers, {args.seeds} seeds")
    if args.command == "sweep":
        rows = []
        for eta in args.etas:
            for min_epochs in args.min_epochs_list:
                if min_epochs >= bench.budget:
                    continue
                for name in ("asha", "pareto", "pareto-noreach", "pareto-old", "pareto-protect"):
                    r = bench.run(policies(eta, min_epochs)[name])
                    rows.append({"policy": name, "eta": eta, "min_epochs": min_epochs, **r})
        df = pd.DataFrame(rows)
        df["epochs_share"] = df.epochs / bench.none["epochs"]
        df["goal_met"] = goal_met(df)
        cols = ["policy", "eta", "min_epochs", "epochs_share", "hv_share", "front_found", "goal_met"]
        print(df[cols].to_string(index=False, float_format="%.3f"))
        return 0

    print(f"eta {args.eta}, first rung at epoch {args.min_epochs}")
    rows = [{"policy": name, **(bench.none if name == "none" else bench.run(policy))}
            for name, policy in policies(args.eta, args.min_epochs).items()]
    df = pd.DataFrame(rows).set_index("policy")
    df["epochs_share"] = df.epochs / df.loc["none", "epochs"]
    cols = ["epochs", "epochs_share", "hypervolume", "hv_share", "front_found", "completed", "schemes_on_front"]
    print(df[cols].to_string(float_format="%.3f"))
    p, a = df.loc["pareto"], df.loc["asha"]
    print(f"pareto: true front found {p.front_found:.1%} with {p.epochs_share:.1%} of the epochs and "
          f"{p.hv_share:.1%} of the hypervolume (goal >= 85%, <= 30%, >= 99%: "
          f"{'met' if goal_met(df.loc[['pareto']]).iloc[0] else 'missed'}); asha {a.front_found:.1%} "
          f"with {a.epochs_share:.1%}")
    return 0


def goal_met(df: pd.DataFrame) -> pd.Series:
    """Issue 16's goal: >= 85% of the true front, <= 30% of the epochs, >= 99% of the hypervolume."""
    return (df.front_found >= 0.85) & (df.epochs_share <= 0.30) & (df.hv_share >= 0.99)


class Bench:
    """The recorded table (cut at ``epochs``), each seed's trials and true front, and the fixed reference point.

    ``trials``: replay a seeded random subset of that many trials per seed (default all);
    each seed's shares are then taken against no pruning on the same subset.
    """

    def __init__(self, table: pd.DataFrame, seeds: int, workers: int, epochs: int | None = None,
                 trials: int | None = None) -> None:
        if epochs is not None:
            if not 1 <= epochs <= table.epoch.max():
                raise SystemExit(f"--epochs must be between 1 and {table.epoch.max()} (the table's budget)")
            table = table[table.epoch <= epochs]
        if trials is not None and not 1 <= trials <= table.trial_id.nunique():
            raise SystemExit(f"--trials must be between 1 and {table.trial_id.nunique()} (the table's trials)")
        self.table, self.seeds, self.workers, self.trials = table, seeds, workers, trials
        self.budget = int(table.epoch.max())
        self.final = table[table.epoch == self.budget].set_index("trial_id")
        self.ref = [0.0, float(self.final.params.max()) * 1.1]  # accuracy 0, 110% of the largest net
        self.true_front = self.front(set(self.final.index))
        self.none = self.run({"name": "none"})

    def front(self, ids: set[str]) -> set[str]:
        """The non-dominated trials of ``ids`` by final accuracy and parameters."""
        sub = self.final.loc[sorted(ids)]
        points = np.column_stack([-sub.val_acc.to_numpy(), sub.params.to_numpy(dtype=float)])
        return set(sub.index[~dominated_mask(points)]) if ids else set()

    def hv(self, ids: set[str]) -> float:
        sub = self.final.loc[sorted(ids)]
        return hypervolume_points(np.column_stack([-sub.val_acc, sub.params.astype(float)]), self.ref) if ids else 0.0

    def run(self, policy: dict) -> dict[str, float]:
        """Means over seeds: epochs used, hypervolume of the completed trials (and its share of no
        pruning's on the same trials), share of the true front found, trials completed, and schemes on
        the front of the completed trials."""
        rows = []
        for seed in range(self.seeds):
            ids = set(trial_order(self.table, seed, self.trials))
            out = replay(self.table, policy, seed, self.workers, self.trials)
            true_front, found, hv = self.front(ids), self.front(out.completed), self.hv(out.completed)
            rows.append({"epochs": out.epochs, "hypervolume": hv, "hv_share": hv / self.hv(ids),
                         "front_found": len(out.completed & true_front) / len(true_front),
                         "completed": len(out.completed),
                         "schemes_on_front": self.final.loc[sorted(found), "scheme"].nunique()})
        return pd.DataFrame(rows).mean().to_dict()


if __name__ == "__main__":
    sys.exit(main())
