"""Pruning benchmark: replay recorded learning curves under each pruner, no training.

Step 1 (once, slow): record the per-epoch validation curves of a real search
without pruning into benchmarks/data/pruning_curves.csv:

    python benchmarks/pruning.py record            # runs benchmarks/data/pruning_record.yaml

Step 2 (seconds): replay asynchronous searches on that table, W workers taking
trials in a seeded random order, each epoch lasting its recorded seconds, with
the same pruner code the search uses (lmsearch.pruning.PrunerScheduler):

    python benchmarks/pruning.py replay --seeds 10

For every policy (none, ASHA on accuracy alone = Optuna's successive halving,
median, pareto) it prints the mean over seeds of: epochs used (and the share of
no-pruning's), final hypervolume of the COMPLETE trials (objectives: accuracy
max, parameters min; fixed reference point) as a share of no-pruning's, and the
share of the true Pareto front (of all trials' final values) that was found.
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
    """The compared pruners; ASHA and pareto share the rungs (eta, min_epochs)."""
    return {
        "none": {"name": "none"},
        "asha": {"name": "successive_halving", "eta": eta, "min_epochs": min_epochs},
        "median": {"name": "median", "warmup_epochs": min_epochs},
        "pareto": {"name": "pareto", "eta": eta, "min_epochs": min_epochs},
    }


def record(space: Path, out: Path) -> None:
    """Run the recording search and store its curves with each trial's parameters and scheme."""
    import lmsearch

    exp = out / "pruning-record"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lmsearch", "search", str(space), "--out", str(exp)]
    if (exp / "experiment.json").exists():
        cmd.append("--resume")
    subprocess.run(cmd, check=True)
    trials = lmsearch.load_results(exp)
    curves = lmsearch.load_curves(exp)
    done = trials[trials.state == "COMPLETE"][["trial_id", "scheme", "depth", "width", "params"]]
    table = curves.merge(done, on="trial_id")[["trial_id", "scheme", "depth", "width", "params", "epoch",
                                                "val_acc", "seconds"]]
    DATA.mkdir(exist_ok=True)
    table.sort_values(["trial_id", "epoch"]).to_csv(CURVES, index=False)
    print(f"recorded {table.trial_id.nunique()} trials, {len(table)} epochs -> {CURVES}")


@dataclass
class Outcome:
    epochs: int
    completed: set[str]


def replay(table: pd.DataFrame, policy: dict, seed: int, workers: int) -> Outcome:
    """One asynchronous search over the recorded trials in a seeded order."""
    curves = {tid: g.sort_values("epoch") for tid, g in table.groupby("trial_id")}
    order = sorted(curves)
    random.Random(seed).shuffle(order)
    budget = int(table.epoch.max())
    study = optuna.create_study(directions=["maximize", "minimize"])
    scheduler = PrunerScheduler(make_pruner(policy, budget), storage_url="", study_name="replay")
    scheduler._study = study  # in memory: the replay has no experiment folder
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
    rec.add_argument("--space", type=Path, default=DATA / "pruning_record.yaml")
    rec.add_argument("--out", type=Path, default=Path("results"))
    rep = sub.add_parser("replay", help="replay the recorded curves under each pruner")
    rep.add_argument("--curves", type=Path, default=CURVES)
    rep.add_argument("--seeds", type=int, default=10)
    rep.add_argument("--workers", type=int, default=2)
    rep.add_argument("--eta", type=int, default=3, help="reduction factor of asha and pareto (default 3)")
    rep.add_argument("--min-epochs", type=int, default=1, help="first rung of asha and pareto (default 1)")
    args = parser.parse_args()
    if args.command == "record":
        record(args.space, args.out)
        return 0

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = pd.read_csv(args.curves)
    budget = int(table.epoch.max())
    final = table[table.epoch == budget].set_index("trial_id")
    points = np.column_stack([-final.val_acc.to_numpy(), final.params.to_numpy(dtype=float)])
    true_front = set(final.index[~dominated_mask(points)])
    ref = [0.0, float(final.params.max()) * 1.1]  # accuracy 0, 110% of the largest net

    def hv(ids: set[str]) -> float:
        sub = final.loc[sorted(ids)]
        return hypervolume_points(np.column_stack([-sub.val_acc, sub.params.astype(float)]), ref) if ids else 0.0

    print(f"{len(final)} trials x {budget} epochs, true front {len(true_front)} points, "
          f"{args.workers} workers, {args.seeds} seeds, eta {args.eta}, first rung at epoch {args.min_epochs}")
    rows = []
    for name, policy in policies(args.eta, args.min_epochs).items():
        outs = [replay(table, policy, seed, args.workers) for seed in range(args.seeds)]
        rows.append({
            "policy": name,
            "epochs": np.mean([o.epochs for o in outs]),
            "hypervolume": np.mean([hv(o.completed) for o in outs]),
            "front_found": np.mean([len(o.completed & true_front) / len(true_front) for o in outs]),
        })
    df = pd.DataFrame(rows).set_index("policy")
    df["epochs_share"] = df.epochs / df.loc["none", "epochs"]
    df["hv_share"] = df.hypervolume / df.loc["none", "hypervolume"]
    print(df[["epochs", "epochs_share", "hypervolume", "hv_share", "front_found"]].to_string(float_format="%.3f"))
    p, a = df.loc["pareto"], df.loc["asha"]
    print(f"pareto: hv {p.hv_share:.1%} of none with {p.epochs_share:.1%} of its epochs "
          f"(goal >= 97% with <= 40%); true front found {p.front_found:.1%} vs asha {a.front_found:.1%} "
          f"at {a.epochs_share:.1%} of the epochs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
