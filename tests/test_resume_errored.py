"""A FAILED trial stays FAILED when an interrupted search is resumed (its state is final in the study too)."""

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

SPACE = """
name: errored
dataset: {name: synthetic, subset: 256}
budget: {epochs: 4}
architecture: {scheme: [euler, poly], depth: 8, width: 4}
training: {batch_size: 32}
search: {sampler: grid, max_concurrent: 1}
resources: {cpu: 1, max_failures: 0}
"""


def _search(space: Path, exp: Path, *extra: str, faults: str = "") -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "LMSEARCH_FAULTS": faults}
    return subprocess.Popen([sys.executable, "-m", "lmsearch", "search", str(space), "--out", str(exp), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def test_resume_does_not_rerun_a_failed_trial(tmp_path: Path) -> None:
    space = tmp_path / "errored.yaml"
    space.write_text(textwrap.dedent(SPACE))
    exp = tmp_path / "exp"
    driver = _search(space, exp, faults="raise@0:1")  # trial 0 raises in its first epoch
    deadline = time.time() + 240
    try:
        while time.time() < deadline and driver.poll() is None:
            if (exp / "trials.csv").is_file() and (exp / "curves.csv").is_file():
                df = lmsearch.load_results(exp)
                curves = lmsearch.load_curves(exp)
                if (df.state == "FAILED").any() and (curves.number == 1).any():
                    break
            time.sleep(0.2)
    finally:
        driver.send_signal(signal.SIGINT)  # Ctrl-C while trial 1 runs
        driver.wait(timeout=120)
    assert driver.returncode == 130, driver.stderr.read()[-2000:]
    before = lmsearch.load_results(exp)
    assert before.set_index("number").state.to_dict() == {0: "FAILED", 1: "RUNNING"}

    resumed = _search(space, exp, "--resume")  # no fault now: a rerun of trial 0 would complete
    resumed.wait(timeout=300)
    assert resumed.returncode == 0, resumed.stderr.read()[-3000:]
    after = lmsearch.load_results(exp)
    assert after.set_index("number").state.to_dict() == {0: "FAILED", 1: "COMPLETE"}
    assert "injected fault" in after.set_index("number").error[0]
    assert lmsearch.check_experiment(exp) == []
