"""Chaos benchmark: SIGKILL the search driver K times, resume each time, compare with an uninterrupted run.

Runs a small grid search (fixed seeds, tiny nets, few epochs) once without
interruption, then again while killing the driver with SIGKILL at random
moments and resuming with ``--resume`` after each kill. The last line is

    kills=K trials=N lost=L rerun=R stuck=S mismatched=M

lost: grid points of the uninterrupted run missing from the final COMPLETE trials;
rerun: a trial trained again after it had finished (epoch log after each kill),
       or one grid point finished twice;
stuck: Optuna trials left RUNNING;
mismatched: a final validation accuracy that differs from the uninterrupted run
       by more than 1e-6.
Exit status is non-zero unless L, R, S and M are all 0.

    python benchmarks/chaos.py --kills 3
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import optuna

SPACE = """
name: chaos
dataset: {{name: fashion-mnist, subset: {subset}}}
budget: {{epochs: {epochs}}}
architecture: {{scheme: [euler, poly], depth: {depths}, width: 4}}
training: {{batch_size: 64, lr: 0.05, seed: [1, 2]}}
search: {{sampler: grid, seed: 0}}
resources: {{cpu: 1, max_failures: 2}}
"""
POINT = ["scheme", "depth", "seed"]


def search_cmd(space: Path, out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "lmsearch", "search", str(space), "--out", str(out), "--quiet"]
    return cmd + (["--resume"] if resume else [])


def run_to_end(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"search failed:\n{proc.stderr[-4000:]}")


def completed(exp: Path) -> dict[tuple, dict]:
    import lmsearch

    if not (exp / "trials.csv").exists():
        return {}
    df = lmsearch.load_results(exp)
    return {tuple(r[k] for k in POINT): r for r in df[df.state == "COMPLETE"].to_dict("records")}


def read_log(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    return [tuple(map(int, line.split(","))) for line in path.read_text().split()]  # type: ignore[misc]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=3, help="how many times to SIGKILL the driver (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=512, help="training images per trial")
    parser.add_argument("--depths", type=int, nargs="+", default=[8, 14],
                        help="depths of the grid (2 schemes x depths x 2 seeds; default 8 14: 8 trials)")
    parser.add_argument("--min-wait", type=float, default=8.0, help="earliest kill, seconds after a (re)start")
    parser.add_argument("--max-wait", type=float, default=30.0, help="latest kill, seconds after a (re)start")
    parser.add_argument("--workdir", type=Path, help="keep the experiments here (default: a temp folder)")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="lmsearch-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    space = work / "chaos.yaml"
    space.write_text(textwrap.dedent(SPACE.format(subset=args.subset, epochs=args.epochs, depths=list(args.depths))))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}

    t0 = time.time()
    run_to_end(search_cmd(space, work / "reference", resume=False), env)
    reference = completed(work / "reference")
    print(f"reference: {len(reference)} trials in {time.time() - t0:.0f} s", flush=True)

    chaos, log = work / "chaos", work / "epochs.log"
    env = {**env, "LMSEARCH_EPOCH_LOG": str(log)}
    rng = random.Random(args.seed)
    checks: list[tuple[set[int], int]] = []  # (trials finished at a kill, epoch-log length then)
    for k in range(args.kills):
        driver = subprocess.Popen(search_cmd(space, chaos, resume=k > 0), env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait = rng.uniform(args.min_wait, args.max_wait)
        try:
            driver.wait(timeout=wait)
            print(f"kill {k + 1}: the search ended before {wait:.1f} s", flush=True)
            continue
        except subprocess.TimeoutExpired:
            pass
        finished = {int(r["number"]) for r in completed(chaos).values()}
        checks.append((finished, len(read_log(log))))
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        print(f"kill {k + 1}: SIGKILL after {wait:.1f} s with {len(finished)} trials finished", flush=True)
        time.sleep(2)  # Ray's reaper takes down the local cluster of the killed driver
    run_to_end(search_cmd(space, chaos, resume=True), env)
    # A finished trial was trained again if any epoch of it was logged after the kill.
    log_lines = read_log(log)
    rerun = sum(1 for finished, logged in checks for number, _ in log_lines[logged:] if number in finished)

    import lmsearch

    final = lmsearch.load_results(chaos)
    done = final[final.state == "COMPLETE"]
    points = [tuple(r[k] for k in POINT) for r in done.to_dict("records")]
    rerun += len(points) - len(set(points))
    got = completed(chaos)
    lost = sum(1 for p in reference if p not in got)
    mismatched = sum(1 for p, r in reference.items() if p in got and abs(got[p]["val_acc"] - r["val_acc"]) > 1e-6)
    study = optuna.load_study(study_name="chaos", storage=f"sqlite:///{chaos / 'study.db'}")
    stuck = sum(1 for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING)
    print(f"work folder: {work}; total {time.time() - t0:.0f} s")
    print(f"kills={args.kills} trials={len(reference)} lost={lost} rerun={rerun} stuck={stuck} mismatched={mismatched}")
    return 0 if lost == rerun == stuck == mismatched == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
