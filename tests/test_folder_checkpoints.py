"""A search resumed from its study alone continues an interrupted trial from its epoch checkpoint in the folder.

What a long experiment needs across sessions: the committed folder (study.db, tables,
checkpoints/) without Ray's state, in a fresh clone. Checked with a real SIGKILL of the
driver mid-trial, ``ray/`` deleted, then ``--resume``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import lmsearch
from lmsearch.export import find_trial_weights
from lmsearch.trial_checkpoints import CHECKPOINT_DIR, checkpoint_key, load_checkpoint, save_checkpoint

pytestmark = [pytest.mark.slow]

SPACE = """
name: {name}
dataset: {{name: synthetic, subset: 512}}
budget: {{epochs: 6}}
architecture: {{scheme: lm, depth: 14, width: 4}}
training: {{batch_size: 32, seed: 7, schedule: step}}
search: {{sampler: grid, max_concurrent: 1}}
resources: {{cpu: 1, max_failures: 0}}
"""


def _search(space: Path, exp: Path, log: Path, *extra: str, wait: bool = True) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "LMSEARCH_EPOCH_LOG": str(log)}
    proc = subprocess.Popen([sys.executable, "-m", "lmsearch", "search", str(space), "--out", str(exp), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    if wait:
        proc.wait(timeout=400)
    return proc


def _epochs(log: Path) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split(","))) for line in log.read_text().split()] if log.is_file() else []


def _kill_search(driver: subprocess.Popen) -> None:
    """SIGKILL a search's driver and every process of its Ray session (named after the driver's pid)."""
    os.killpg(driver.pid, signal.SIGKILL)
    tag = f"_{driver.pid}"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            where = os.readlink(proc / "cwd") + " " + (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any(part.startswith("session_") and part.endswith(tag) for part in where.replace("\0", " ").replace(
                "=", " ").replace("/", " ").split()):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
    driver.wait(timeout=60)


def _wait_until_quiet(exp: Path, log: Path, quiet: float = 5.0, limit: float = 90.0) -> None:
    """Wait until neither the epoch log nor the folder's checkpoints have changed for ``quiet`` seconds."""
    def stamp() -> tuple:
        files = [log, *(exp / CHECKPOINT_DIR).glob("*.pt")]
        return tuple((str(f), f.stat().st_mtime_ns) for f in files if f.exists())

    start, last, since = time.time(), stamp(), time.time()
    while time.time() - start < limit and time.time() - since < quiet:
        time.sleep(0.5)
        now = stamp()
        if now != last:
            last, since = now, time.time()


def test_killed_trial_continues_from_its_folder_checkpoint_without_ray_state(tmp_path: Path) -> None:
    space = tmp_path / "ckpt.yaml"
    space.write_text(textwrap.dedent(SPACE.format(name="ckpt")))
    exp, log = tmp_path / "exp", tmp_path / "epochs.log"
    driver = _search(space, exp, log, wait=False)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and driver.poll() is None:
            saved = [load_checkpoint(p) for p in (exp / CHECKPOINT_DIR).glob("*.pt")]
            if any(s is not None and s["epoch"] >= 2 for s in saved):
                break
            time.sleep(0.2)
    finally:
        _kill_search(driver)  # mid-trial: no clean-up of any kind
    _wait_until_quiet(exp, log)  # Ray's worker outlives its driver by a moment, and may finish an epoch
    trained_before = max(e for _, e in _epochs(log))
    assert 2 <= trained_before < 6, "the trial was not caught mid-way"
    (checkpoint,) = (exp / CHECKPOINT_DIR).glob("*.pt")
    saved_epoch = load_checkpoint(checkpoint)["epoch"]
    assert saved_epoch >= 2
    shutil.rmtree(exp / "ray")  # what a fresh clone of the committed folder has

    resumed = _search(space, exp, log, "--resume")
    assert resumed.returncode == 0, resumed.stderr.read()[-3000:]
    numbers = sorted({n for n, _ in _epochs(log)})
    assert len(numbers) == 2  # the interrupted trial, and its configuration queued again
    again = [e for n, e in _epochs(log) if n == numbers[1]]
    assert again == list(range(saved_epoch + 1, 7))  # went on from the checkpoint, not from epoch 1
    df = lmsearch.load_results(exp)
    done = df[df.state == "COMPLETE"]
    assert len(done) == 1 and int(done.epochs_run.iloc[0]) == 6
    # the continued trial reports its earlier epochs again (untrained): its curve is whole, in the table and
    # in the study, which agree with each other
    curve = lmsearch.load_curves(exp).query("trial_id == @done.trial_id.iloc[0]")
    assert curve.epoch.tolist() == [1, 2, 3, 4, 5, 6]
    assert lmsearch.check_experiment(exp) == []
    assert not list((exp / CHECKPOINT_DIR).glob("*.pt"))  # an ended trial's checkpoint is gone
    # its final weights stay in the folder, without Ray's state: learned k_n of a committed experiment
    shutil.rmtree(exp / "ray")
    trial_id = done.trial_id.iloc[0]
    assert find_trial_weights(exp, trial_id) == exp / "weights" / trial_id
    k = lmsearch.experiment_lm_coefficients(exp)
    assert len(k) == 3 and list(k.trial_id.unique()) == [trial_id] and not k.attrs["missing"]  # 1 LM step x 3 stages

    # and it ends exactly where an uninterrupted run of the same configuration ends
    clean_space = tmp_path / "clean.yaml"
    clean_space.write_text(textwrap.dedent(SPACE.format(name="clean")))
    clean = _search(clean_space, tmp_path / "clean", tmp_path / "clean.log")
    assert clean.returncode == 0, clean.stderr.read()[-3000:]
    reference = lmsearch.load_results(tmp_path / "clean")
    assert done.val_acc.iloc[0] == reference.val_acc.iloc[0]
    assert done.test_acc.iloc[0] == reference.test_acc.iloc[0]


def test_checkpoint_key_names_the_run_not_the_trial(tmp_path: Path) -> None:
    config = {"spec": {"scheme": "lm", "depth": 20}, "train": {"seed": 1, "lr": 0.1}, "number": 3, "params": 9}
    same = {**config, "number": 11, "run": 3}  # the same run queued again under a new trial number
    assert checkpoint_key(config, 30) == checkpoint_key(same, 30)
    # another trial that happens to sample the same configuration is another run: its own file
    assert checkpoint_key(config, 30) != checkpoint_key({**config, "number": 12}, 30)
    assert checkpoint_key(config, 30) != checkpoint_key(config, 60)
    assert checkpoint_key(config, 30) != checkpoint_key({**config, "train": {"seed": 2, "lr": 0.1}}, 30)
    path = tmp_path / CHECKPOINT_DIR / "x.pt"
    save_checkpoint(path, {"epoch": 3, "w": torch.arange(3)})
    assert load_checkpoint(path)["epoch"] == 3
    path.write_bytes(path.read_bytes()[:20])  # cut short: the trial starts over rather than crash
    assert load_checkpoint(path) is None
    assert load_checkpoint(tmp_path / "missing.pt") is None
