"""A real two-node Ray cluster on loopback addresses runs the trials of a search.

Head on 127.0.0.2, worker on 127.0.0.3, one CPU each, started with ``ray start
--block`` so the test owns their process trees and stops exactly them (also
when it fails). No connection may leave the loopback range.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lmsearch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.fashion,
]

RAY = str(Path(sys.executable).parent / "ray")
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port(host: str = "127.0.0.2") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def non_loopback_peers() -> set[str]:
    out = subprocess.run(["ss", "-tnH"], capture_output=True, text=True).stdout
    peers = {line.split()[4] for line in out.splitlines() if len(line.split()) >= 5}
    return {p for p in peers if not (p.startswith("127.") or p.startswith("[::1]") or p.startswith("[::ffff:127."))}


def wait_for_nodes(address: str, count: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        proc = subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, text=True, env=ENV)
        if proc.returncode == 0 and proc.stdout.count("node_") >= count:
            return
        time.sleep(1)
    raise TimeoutError(f"the cluster at {address} did not show {count} nodes: {proc.stdout}{proc.stderr}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a `ray start --block` process and everything it started (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def two_node_cluster() -> Iterator[str]:
    temp = tempfile.mkdtemp(prefix="lmr")  # short: Ray's socket paths must stay under 107 bytes
    port = free_port()
    address = f"127.0.0.2:{port}"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.2", f"--port={port}", "--num-cpus=1",
             "--num-gpus=0", f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats"],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        wait_for_nodes(address, 1)
        procs.append(subprocess.Popen(
            [RAY, "start", "--block", f"--address={address}", "--node-ip-address=127.0.0.3", "--num-cpus=1",
             "--num-gpus=0", "--disable-usage-stats"],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        wait_for_nodes(address, 2)
        yield address
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


def test_search_spreads_trials_over_both_nodes(two_node_cluster: str, tmp_path: Path) -> None:
    space = tmp_path / "cluster.yaml"
    space.write_text(textwrap.dedent("""
        name: cluster
        dataset: {name: fashion-mnist, subset: 1024}
        budget: {epochs: 3}
        architecture: {scheme: [euler, lm], depth: [8, 14], width: 4}
        training: {batch_size: 64}
        search: {sampler: grid}
        resources: {cpu: 1}
    """))
    before = non_loopback_peers()
    seen: set[str] = set()
    search = subprocess.Popen([sys.executable, "-m", "lmsearch", "search", str(space), "--out",
                               str(tmp_path / "exp"), "--address", two_node_cluster, "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 400
    while search.poll() is None and time.time() < deadline:
        seen |= non_loopback_peers() - before  # sampled while the trials run
        time.sleep(0.5)
    if search.poll() is None:
        search.kill()
    stdout, stderr = search.communicate()
    proc = subprocess.CompletedProcess(search.args, search.returncode, stdout, stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = lmsearch.load_results(tmp_path / "exp")
    assert len(df) == 4 and (df.state == "COMPLETE").all()
    assert df.node_id.nunique() == 2, df[["number", "node_id", "hostname"]]
    assert df.hostname.notna().all()
    assert (tmp_path / "exp" / "pareto.csv").stat().st_size > 0
    assert not seen, f"connections left the loopback range: {seen}"
    print("node split:", df.groupby("node_id").number.apply(list).to_dict())
