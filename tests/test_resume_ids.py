"""Trial ids that look like numbers survive a SIGKILLed driver and ``--resume`` (the CI flake of issue 13).

Ray draws trial ids as 8 random hex digits, so a few percent of them read as
numbers (``87736e49`` as 8.7736e+53). The driver below makes Ray draw only such
ids; the search is killed with SIGKILL after a trial finished, then resumed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import lmsearch

pytestmark = [pytest.mark.slow]


DRIVER = """
import itertools, os, sys
from ray.tune.experiment import trial as ray_trial
from lmsearch import results

def numberlike_ids():
    # 8 characters, as Ray's own ids: a float with an exponent, then digits only (leading zeros too)
    yield from ("87736e49", "1e100000", "00012300", "12345678")
    for n in itertools.count(1):
        yield f"{n:05d}e{n % 100:02d}"
        yield f"{n:08d}"

used = {r["trial_id"] for r in results.read_trial_rows(os.environ["EXP_DIR"])}  # a resumed driver
fresh = (i for i in numberlike_ids() if i not in used)
ray_trial.Trial.generate_id = classmethod(lambda cls: next(fresh))
from lmsearch.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _numberlike(trial_id: str) -> bool:
    try:
        float(trial_id)
    except ValueError:
        return False
    return len(trial_id) == 8


SPACE = """
name: ids
dataset: {name: synthetic, subset: 128}
budget: {epochs: 2}
architecture: {scheme: [euler, lm], depth: [8, 14], width: 4}
training: {batch_size: 64}
search: {sampler: random, num_samples: 4, seed: 3, max_concurrent: 1}
resources: {cpu: 1, max_failures: 0}
"""


def _driver(tmp_path: Path, *args: str) -> list[str]:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    return [sys.executable, str(script), "search", *args]


def test_numberlike_trial_ids_survive_a_killed_driver_and_resume(tmp_path: Path) -> None:
    space = tmp_path / "ids.yaml"
    space.write_text(textwrap.dedent(SPACE))
    exp = tmp_path / "exp"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "EXP_DIR": str(exp)}
    driver = subprocess.Popen(_driver(tmp_path, str(space), "--out", str(exp)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline, finished = time.time() + 240, 0
    try:
        while time.time() < deadline and driver.poll() is None:
            if (exp / "trials.csv").is_file() and (exp / "curves.csv").is_file():
                df = lmsearch.load_results(exp)
                finished = int((df.state == "COMPLETE").sum())
                if finished >= 2:
                    break
            time.sleep(0.3)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray processes, no clean-up
        driver.wait(timeout=60)
    assert finished >= 2, "no two trials finished in time"
    before = lmsearch.load_curves(exp)
    assert len(before) and all(_numberlike(t) for t in before.trial_id)

    proc = subprocess.run(_driver(tmp_path, str(space), "--out", str(exp), "--resume"),
                          capture_output=True, text=True, env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = lmsearch.load_results(exp)
    curves = lmsearch.load_curves(exp)
    assert len(after) == 4 and (after.state == "COMPLETE").all()
    assert all(_numberlike(t) for t in after.trial_id) and "87736e49" in set(after.trial_id)
    # every finished trial has both epochs in curves.csv, under its own id, and the early rows are unchanged
    assert sorted(zip(curves.trial_id, curves.epoch, strict=True)) == sorted(
        (t, e) for t in after.trial_id for e in (1, 2))
    kept = curves.set_index(["trial_id", "epoch"]).loc[list(zip(before.trial_id, before.epoch, strict=True))]
    assert list(kept.val_acc) == list(before.val_acc)
    # the raw files hold the ids as text, exactly
    for name in ("trials.csv", "curves.csv", "pareto.csv"):
        text = (exp / name).read_text()
        assert "e+" not in text and "8.7736" not in text, name
