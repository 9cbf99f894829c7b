"""One search per experiment folder: the kernel holds the lock, so a dead owner's lock is free at once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lmsearch.lock import LOCK_NAME, ExperimentLock, ExperimentLocked

# A process that takes the lock of argv[1], says "locked" and holds it until killed.
HOLDER = textwrap.dedent("""
    import sys, time
    from lmsearch.lock import ExperimentLock
    lock = ExperimentLock(sys.argv[1])
    lock.acquire()
    print("locked", flush=True)
    time.sleep(600)
""")

# Racers: wait for argv[2] to appear, try the lock of argv[1], print "won" or "lost", hold a winner's lock 3 s.
RACER = textwrap.dedent("""
    import os, sys, time
    from lmsearch.lock import ExperimentLock, ExperimentLocked
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.001)
    try:
        lock = ExperimentLock(sys.argv[1])
        lock.acquire()
    except ExperimentLocked:
        print("lost", flush=True)
    else:
        print("won", flush=True)
        time.sleep(3)
        lock.release()
""")


def start_holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(folder: Path, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))


def test_lock_holds_owner_and_is_released(tmp_path: Path) -> None:
    with ExperimentLock(tmp_path) as lock:
        assert lock.held
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert not lock.held and not (tmp_path / LOCK_NAME).exists()
    with ExperimentLock(tmp_path):  # and can be taken again
        pass


def test_live_owner_refuses_a_second_search_without_touching_the_lock(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        before = (tmp_path / LOCK_NAME).stat()
        content = (tmp_path / LOCK_NAME).read_text()
        with pytest.raises(ExperimentLocked, match=f"in use by a running search \\(pid {holder.pid} on "):
            ExperimentLock(tmp_path).acquire()
        after = (tmp_path / LOCK_NAME).stat()
        assert (tmp_path / LOCK_NAME).read_text() == content
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    finally:
        stop(holder)


def test_sigkilled_owners_lock_is_free_immediately(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    holder = start_holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # the file stays, the kernel lock went with the process
    with ExperimentLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert "taking over stale lock" in err and f"pid {holder.pid}" in err


def test_a_live_pid_in_a_leftover_file_is_no_owner(tmp_path: Path) -> None:
    """The file's pid is a hint: a dead owner's pid reused by another process, or a file copied from
    another host, does not keep the folder locked."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path, sleeper.pid)
        with ExperimentLock(tmp_path):
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        stop(sleeper)
    write_lock(tmp_path, 1, host="some-other-host")
    with ExperimentLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == socket.gethostname()


@pytest.mark.parametrize("leftover", ["stale", "empty", "none"])
def test_racers_on_a_free_folder_get_exactly_one_lock(tmp_path: Path, leftover: str) -> None:
    """Several processes taking the same free lock at once, over a stale, an empty (owner
    just created it) or no lock file: one wins, every other one is refused."""
    for round_ in range(3):
        folder, go = tmp_path / f"exp{round_}", tmp_path / f"go{round_}"
        folder.mkdir()
        if leftover == "stale":
            write_lock(folder, dead_pid())
        elif leftover == "empty":
            (folder / LOCK_NAME).write_text("")
        racers = [subprocess.Popen([sys.executable, "-c", RACER, str(folder), str(go)], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True) for _ in range(6)]
        time.sleep(2.0)  # let every racer start and wait for the signal
        go.touch()
        outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
        assert outcomes == ["lost"] * 5 + ["won"], (leftover, round_, outcomes)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmsearch", *args], capture_output=True, text=True, timeout=120)


SPACE = "architecture: {scheme: euler, depth: 8, width: 4}\ndataset: {name: fashion-mnist, subset: 64}\n"


@pytest.mark.parametrize("resume", [False, True])
def test_cli_refuses_a_folder_owned_by_a_live_search(tmp_path: Path, resume: bool) -> None:
    """Even once the live search has written experiment.json: "in use", never "pass --resume"."""
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "experiment.json").write_text(json.dumps({"name": "s", "status": "running"}))
    holder = start_holder(exp)
    try:
        listing = sorted(p.name for p in exp.iterdir())
        proc = cli("search", str(space), "--out", str(exp), *(["--resume"] if resume else []))
        assert sorted(p.name for p in exp.iterdir()) == listing
    finally:
        stop(holder)
    assert proc.returncode == 2, proc.stderr
    assert f"is in use by a running search (pid {holder.pid}" in proc.stderr
    assert "--resume" not in proc.stderr and "nothing to resume" not in proc.stderr


def test_cli_rejects_unwritable_and_missing_output_before_ray(tmp_path: Path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    proc = cli("search", str(space), "--out", "/proc/lmsearch-experiment")  # not writable, even for root
    assert proc.returncode == 2 and "/proc/lmsearch-experiment is not writable" in proc.stderr
    proc = cli("search", str(space), "--out", str(tmp_path / "missing" / "exp"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
