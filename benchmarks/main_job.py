"""The main job, old space vs new, side by side on one machine.

Runs ``lmsearch search`` on each space file for every search seed (the file's
``search.seed`` replaced; nothing else changed), alternating which space goes
first, and prints per run and per space: wall time, trials (completed / pruned /
failed), epochs trained, the hypervolume of the final front on the test split
and the schemes on that front. The front is the one the search reports (chosen
by validation accuracy vs parameters); its hypervolume is computed from the
front trials' test accuracy, with the reference point (accuracy 0, 110% of the
largest network either space can build).

Resumable: each run's folder and ``runs.json`` stay in ``--workdir``; a rerun
skips finished runs and measures only the missing ones.

    python benchmarks/main_job.py --seeds 0 1 --workdir results/main-job-benchmark
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
OLD = ROOT / "benchmarks" / "data" / "fashion_quick_v1.yaml"
NEW = ROOT / "search_spaces" / "fashion_quick.yaml"
OBJECTIVES = [("test_acc", "max"), ("params", "min")]


def largest_params(*spaces: Path) -> int:
    """The parameter count of the largest architecture any of ``spaces`` can build."""
    from lmsearch.nn.counting import count_params
    from lmsearch.space import DATASET_SHAPES, load_space

    largest = 0
    for path in spaces:
        space = load_space(path, check_data_dir=False)
        in_channels, num_classes = DATASET_SHAPES[space.dataset]
        for _, arch in space.arch_points():
            spec = space.arch_spec(arch, in_channels=in_channels, num_classes=num_classes or 10)
            largest = max(largest, count_params(spec))
    return largest


def seeded_copy(space: Path, seed: int, folder: Path) -> Path:
    """``space`` with ``search.seed`` set to ``seed``, written into ``folder``."""
    doc = yaml.safe_load(space.read_text())
    doc.setdefault("search", {})["seed"] = seed
    path = folder / f"{space.stem}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def measure(exp: Path, ref_params: float, wall_s: float) -> dict[str, Any]:
    """What one finished run gives: counts, epochs, test-split hypervolume of its front, schemes on it."""
    import lmsearch

    df = lmsearch.load_results(exp)
    front = lmsearch.load_pareto(exp)
    states = df["state"].value_counts()
    return {
        "wall_s": round(wall_s, 1),
        "trials": len(df),
        "completed": int(states.get("COMPLETE", 0)),
        "pruned": int(states.get("PRUNED", 0)),
        "failed": int(states.get("FAILED", 0)),
        "epochs_trained": int(df["epochs_run"].sum()),
        "epoch_budget": int(df["epochs"].sum()),
        "front": len(front),
        "test_hv": float(lmsearch.hypervolume(front, ref={"test_acc": 0.0, "params": ref_params},
                                              objectives=OBJECTIVES)),
        "front_schemes": sorted(set(front["scheme"])),
        "schemes_tried": sorted(set(df["scheme"])),
    }


def run_one(space: Path, seed: int, work: Path, ref_params: float, log: Path) -> dict[str, Any]:
    """One search (``lmsearch search`` as a user runs it); its folder is ``work/<stem>-seed<seed>``."""
    exp = work / f"{space.stem}-seed{seed}"
    copy = seeded_copy(space, seed, work)
    if exp.exists():  # an interrupted run of this benchmark: its time is not comparable, so start again
        import shutil

        shutil.rmtree(exp)
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    start = time.perf_counter()
    with log.open("a") as out:
        proc = subprocess.run([sys.executable, "-m", "lmsearch", "search", str(copy), "--out", str(exp)],
                              stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{space.name} seed {seed}: lmsearch search exited {proc.returncode}; see {log}")
    return {"space": space.stem, "seed": seed, **measure(exp, ref_params, wall)}


def report(runs: list[dict[str, Any]], names: list[str]) -> str:
    import pandas as pd

    table = pd.DataFrame(runs)
    cols = ["space", "seed", "wall_s", "trials", "completed", "pruned", "failed", "epochs_trained", "front",
            "test_hv", "front_schemes"]
    lines = [table[cols].to_string(index=False), ""]
    means = table.groupby("space")[["wall_s", "trials", "epochs_trained", "test_hv"]].mean()
    means["front_schemes"] = table.groupby("space")["front_schemes"].apply(lambda s: sum(map(len, s)) / len(s))
    lines.append(means.to_string())
    if all(n in means.index for n in names):
        old, new = means.loc[names[0]], means.loc[names[1]]
        lines.append("")
        lines.append(f"new/old: test hypervolume {new.test_hv / old.test_hv:.3f}x, wall time "
                     f"{new.wall_s / old.wall_s:.3f}x, trials {new.trials:.1f} vs {old.trials:.1f}, schemes on the "
                     f"front {new.front_schemes:.1f} vs {old.front_schemes:.1f} (means over seeds "
                     f"{sorted(set(table.seed))})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, default=OLD, help=f"the old space (default {OLD.relative_to(ROOT)})")
    parser.add_argument("--new", type=Path, default=NEW, help=f"the new space (default {NEW.relative_to(ROOT)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="search seeds (default 0 1)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "results" / "main-job-benchmark",
                        help="run folders, runs.json and the log (default results/main-job-benchmark)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    record, log = args.workdir / "runs.json", args.workdir / "runs.log"
    runs: list[dict[str, Any]] = json.loads(record.read_text()) if record.is_file() else []
    ref_params = 1.1 * largest_params(args.old, args.new)
    print(f"reference point: test_acc 0, params {ref_params:,.0f} (110% of the largest net)", flush=True)
    for i, seed in enumerate(args.seeds):
        order = [args.old, args.new] if i % 2 == 0 else [args.new, args.old]
        for space in order:
            if any(r["space"] == space.stem and r["seed"] == seed for r in runs):
                continue
            print(f"running {space.name} seed {seed} ...", flush=True)
            runs.append(run_one(space, seed, args.workdir, ref_params, log))
            record.write_text(json.dumps(runs, indent=1))
            print(f"  {runs[-1]}", flush=True)
    print(report(runs, [args.old.stem, args.new.stem]))


if __name__ == "__main__":
    main()
