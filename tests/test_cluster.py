"""Joining a Ray cluster: token authentication, and a real two-node search on loopback addresses.

The cluster tests start a head on 127.0.0.2 and a worker on 127.0.0.3 (one CPU each) with
``RAY_AUTH_MODE=token``, by ``ray start --block`` so the module owns their process trees
and stops exactly them (also when a test fails). No connection may leave the loopback
range. The first tests need no cluster: lmsearch refuses to join before contacting it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import lmsearch
from lmsearch import cluster as lmcluster
from lmsearch.cluster import ClusterAuthError, init_ray

RAY = str(Path(sys.executable).parent / "ray")
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")
# The caller's environment without any Ray authentication setting (conftest sets RAY_AUTH_MODE=disabled).
BASE_ENV = {**{k: v for k, v in os.environ.items() if k not in AUTH_VARS}, "RAY_USAGE_STATS_ENABLED": "0"}
SPACE = """
    name: cluster
    dataset: {name: fashion-mnist, subset: 1024}
    budget: {epochs: 3}
    architecture: {scheme: [euler, poly], depth: [8, 14], width: 4}
    training: {batch_size: 64}
    search: {sampler: grid}
    resources: {cpu: 1}
"""
# For searches that must stop before any training: no dataset files needed.
TINY_SPACE = SPACE.replace("{name: fashion-mnist, subset: 1024}", "{name: synthetic, subset: 64}")


@dataclass(frozen=True)
class Cluster:
    address: str
    token_file: Path
    env: dict[str, str]  # what the nodes run with: token mode and RAY_AUTH_TOKEN_PATH


def free_port(host: str = "127.0.0.2") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def non_loopback_peers() -> set[str]:
    out = subprocess.run(["ss", "-tnH"], capture_output=True, text=True).stdout
    peers = {line.split()[4] for line in out.splitlines() if len(line.split()) >= 5}
    return {p for p in peers if not (p.startswith("127.") or p.startswith("[::1]") or p.startswith("[::ffff:127."))}


def write_token(path: Path, token: str | None = None) -> str:
    """Write a token file readable by its owner only, as the README does."""
    token = token or secrets.token_hex(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


def wait_for_nodes(address: str, count: int, env: dict[str, str], timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        proc = subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, text=True, env=env)
        if proc.returncode == 0 and proc.stdout.count("node_") >= count:
            return
        time.sleep(1)
    raise TimeoutError(f"the cluster at {address} did not show {count} nodes: {proc.stdout}{proc.stderr}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a `ray start --block` process and everything it started (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    temp = tempfile.mkdtemp(prefix="lmr")  # short: Ray's socket paths must stay under 107 bytes
    token_file = tmp_path_factory.mktemp("secret") / "token"
    write_token(token_file)
    env = {**BASE_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    port = free_port()
    address = f"127.0.0.2:{port}"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.2", f"--port={port}", "--num-cpus=1",
             "--num-gpus=0", f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        wait_for_nodes(address, 1, env)
        procs.append(subprocess.Popen(
            [RAY, "start", "--block", f"--address={address}", "--node-ip-address=127.0.0.3", "--num-cpus=1",
             "--num-gpus=0", "--disable-usage-stats"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        wait_for_nodes(address, 2, env)
        yield Cluster(address, token_file, env)
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def driver_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This process as a fresh driver: no RAY_AUTH_* variables and a home without ~/.ray/auth_token.

    Yields the home folder. Afterwards Ray is shut down and re-reads the restored variables.
    """
    import ray

    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(lmcluster, "_mode_set_here", None)
    yield home
    ray.shutdown()
    monkeypatch.undo()
    lmcluster._refresh_ray_auth()  # later tests start local nodes: Ray must not stay in token mode


# --- refused before contacting any cluster ---------------------------------------------------------

def test_no_token_names_both_variables(driver_env: Path) -> None:
    with pytest.raises(ClusterAuthError, match="no authentication token") as info:
        init_ray("127.0.0.2:1")
    assert "RAY_AUTH_TOKEN_PATH" in str(info.value) and re.search(r"RAY_AUTH_TOKEN(?!_PATH)", str(info.value))
    assert "RAY_AUTH_MODE" not in os.environ  # nothing changed for a join that did not happen


def test_unreadable_token_path_names_it(driver_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray itself aborts the whole process on a missing RAY_AUTH_TOKEN_PATH file.
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(ClusterAuthError, match=r"RAY_AUTH_TOKEN_PATH=\S*missing cannot be read"):
        init_ray("127.0.0.2:1")
    (tmp_path / "empty").touch()
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "empty"))
    with pytest.raises(ClusterAuthError, match=r"RAY_AUTH_TOKEN_PATH=\S*empty is empty"):
        init_ray("127.0.0.2:1")


def test_auth_disabled_is_refused_for_a_cluster(driver_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 64)
    with pytest.raises(ClusterAuthError, match="RAY_AUTH_MODE=disabled: lmsearch joins clusters only with token"):
        init_ray("127.0.0.2:1")


# --- a token-authenticated cluster on 127.0.0.2 + 127.0.0.3 ------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("source", ["RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "home"])
def test_right_token_connects_and_runs_a_task(token_cluster: Cluster, driver_env: Path, source: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    token = token_cluster.token_file.read_text().strip()
    if source == "RAY_AUTH_TOKEN":
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    elif source == "RAY_AUTH_TOKEN_PATH":
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_cluster.token_file))
    else:  # Ray's default place, ~/.ray/auth_token
        (driver_env / ".ray").mkdir()
        write_token(driver_env / ".ray" / "auth_token", token)
    before = non_loopback_peers()
    init_ray(token_cluster.address)
    assert ray.cluster_resources().get("CPU") == 2  # both nodes, seen through the authenticated driver

    @ray.remote(num_cpus=1)
    def where() -> str:
        return ray.util.get_node_ip_address()

    assert ray.get(where.remote(), timeout=120) in {"127.0.0.2", "127.0.0.3"}
    assert not non_loopback_peers() - before


@pytest.mark.slow
@pytest.mark.parametrize("source", ["RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"])
def test_wrong_token_is_refused(token_cluster: Cluster, driver_env: Path, source: str, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    wrong = secrets.token_hex(32)
    if source == "RAY_AUTH_TOKEN":
        monkeypatch.setenv("RAY_AUTH_TOKEN", wrong)
    else:
        write_token(tmp_path / "wrong", wrong)
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "wrong"))

    def retrying_init(*args: object, **kwargs: object) -> None:
        raise AssertionError("ray.init was called: it retries a refused token for 20 s before it fails")

    monkeypatch.setattr(ray, "init", retrying_init)  # the refusal must come from the one question to the GCS
    with pytest.raises(ClusterAuthError, match=f"cluster at {token_cluster.address} refused the authentication "
                                               f"token from {source}") as info:
        init_ray(token_cluster.address)
    assert "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH" in str(info.value)
    assert wrong not in str(info.value)
    assert not ray.is_initialized()


@pytest.mark.slow
def test_cluster_refuses_a_client_without_token(token_cluster: Cluster, tmp_path: Path) -> None:
    """The head itself refuses a tokenless client (lmsearch refuses earlier, without asking it)."""
    probe = ("from ray._raylet import GcsClient\n"
             f"GcsClient(address={token_cluster.address!r})\n"
             "print('connected')\n")
    env = {**BASE_ENV, "HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert "connected" not in proc.stdout
    assert "AuthenticationError" in proc.stderr and "InvalidAuthToken" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("token", ["none", "wrong"])
def test_search_cli_without_the_token_fails_clearly(token_cluster: Cluster, tmp_path: Path, token: str) -> None:
    space = tmp_path / "cluster.yaml"
    space.write_text(textwrap.dedent(TINY_SPACE))
    home = tmp_path / "home"
    home.mkdir()
    env = {**BASE_ENV, "HOME": str(home)}
    wrong = secrets.token_hex(32)
    if token == "wrong":
        env["RAY_AUTH_TOKEN"] = wrong
    proc = subprocess.run([sys.executable, "-m", "lmsearch", "search", str(space), "--out", str(tmp_path / "exp"),
                           "--address", token_cluster.address, "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "lmsearch search: error:" in proc.stderr
    assert "RAY_AUTH_TOKEN" in proc.stderr and "RAY_AUTH_TOKEN_PATH" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert wrong not in proc.stderr + proc.stdout


@pytest.mark.slow
@pytest.mark.fashion
def test_search_spreads_trials_over_both_nodes(token_cluster: Cluster, tmp_path: Path) -> None:
    space = tmp_path / "cluster.yaml"
    space.write_text(textwrap.dedent(SPACE))
    before = non_loopback_peers()
    seen: set[str] = set()
    env = {**BASE_ENV, "RAY_AUTH_TOKEN_PATH": str(token_cluster.token_file)}  # lmsearch sets RAY_AUTH_MODE
    search = subprocess.Popen([sys.executable, "-m", "lmsearch", "search", str(space), "--out",
                               str(tmp_path / "exp"), "--address", token_cluster.address, "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
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


def test_a_ctrl_c_while_ray_starts_is_held_until_it_is_up() -> None:
    from lmsearch.cluster import _ctrl_c_held

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own: Ctrl-C raises
    try:
        reached_end_of_block = False
        with pytest.raises(KeyboardInterrupt):
            with _ctrl_c_held():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # Python runs the (holding) handler here: no KeyboardInterrupt yet
                reached_end_of_block = True
        assert reached_end_of_block
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with _ctrl_c_held():  # no Ctrl-C: nothing raised
            pass
        second_went_through = True
        with pytest.raises(KeyboardInterrupt):
            with _ctrl_c_held():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
                os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C acts at once
                time.sleep(0.2)
                second_went_through = False
        assert second_went_through
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a shell's background job ignores Ctrl-C ...
        with _ctrl_c_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # ... and still does, without raising
    finally:
        signal.signal(signal.SIGINT, before)
