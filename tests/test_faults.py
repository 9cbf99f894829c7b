"""Hard faults: a SIGKILLed worker is retried from its checkpoint; a SIGKILLed driver resumes losing nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lmsearch

REPO = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.fashion,
]


def test_killed_worker_is_retried_from_its_last_checkpoint(tmp_path: Path) -> None:
    space = tmp_path / "kill.yaml"
    space.write_text(textwrap.dedent("""
        name: kill
        dataset: {name: fashion-mnist, subset: 256}
        budget: {epochs: 3}
        architecture: {scheme: lm, depth: 14, width: 4}
        training: {batch_size: 64}
        search: {sampler: random, num_samples: 2, seed: 0, max_concurrent: 1}
        resources: {cpu: 1, max_failures: 1}
    """))
    log = tmp_path / "epochs.log"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "LMSEARCH_FAULTS": "kill@0:2",
           "LMSEARCH_FAULTS_DIR": str(tmp_path), "LMSEARCH_EPOCH_LOG": str(log)}
    proc = subprocess.run([sys.executable, "-m", "lmsearch", "search", str(space), "--out", str(tmp_path / "exp"),
                           "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "kill-0-2").exists()  # the worker of trial 0 was SIGKILLed at epoch 2
    df = lmsearch.load_results(tmp_path / "exp")
    assert (df.state == "COMPLETE").all() and len(df) == 2
    trained = [tuple(map(int, line.split(","))) for line in log.read_text().split()]
    # trial 0 resumed from its epoch-1 checkpoint: every epoch trained exactly once
    assert sorted(e for n, e in trained if n == 0) == [1, 2, 3]


def test_chaos_one_kill_loses_and_reruns_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "chaos.py"), "--kills", "1", "--epochs", "2", "--subset", "256",
         "--depths", "8", "--min-wait", "12", "--max-wait", "16", "--workdir", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, timeout=600)
    last = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert last.startswith("kills=1 trials=4 lost=0 rerun=0 stuck=0 mismatched=0"), last
