"""One search per experiment folder: live owners refuse, stale locks are taken over, bad folders fail early."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lmsearch.lock import LOCK_NAME, ExperimentLock, ExperimentLocked


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(folder: Path, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))


def test_lock_holds_owner_and_is_released(tmp_path: Path) -> None:
    with ExperimentLock(tmp_path):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert not (tmp_path / LOCK_NAME).exists()


def test_live_owner_refuses_a_second_search(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path, sleeper.pid)
        with pytest.raises(ExperimentLocked, match=f"in use by a running search \\(pid {sleeper.pid} on "):
            ExperimentLock(tmp_path).acquire()
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == sleeper.pid  # untouched
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stale_lock_of_dead_process_is_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pid = dead_pid()
    write_lock(tmp_path, pid)
    with ExperimentLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert "taking over stale lock" in err and f"pid {pid}" in err


def test_lock_of_another_host_is_refused(tmp_path: Path) -> None:
    write_lock(tmp_path, 1, host="some-other-host")
    with pytest.raises(ExperimentLocked, match="pid 1 on some-other-host"):
        ExperimentLock(tmp_path).acquire()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmsearch", *args], capture_output=True, text=True, timeout=120)


SPACE = "architecture: {scheme: euler, depth: 8, width: 4}\ndataset: {name: fashion-mnist, subset: 64}\n"


def test_cli_refuses_a_folder_owned_by_a_live_search(tmp_path: Path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / "exp", sleeper.pid)
        proc = cli("search", str(space), "--out", str(tmp_path / "exp"))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc.returncode == 2
    assert f"is in use by a running search (pid {sleeper.pid}" in proc.stderr


def test_cli_rejects_unwritable_and_missing_output_before_ray(tmp_path: Path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    proc = cli("search", str(space), "--out", "/proc/lmsearch-experiment")  # not writable, even for root
    assert proc.returncode == 2 and "/proc/lmsearch-experiment is not writable" in proc.stderr
    proc = cli("search", str(space), "--out", str(tmp_path / "missing" / "exp"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
