"""Connecting to Ray: a local node pinned to a loopback address, or an existing cluster.

A local node (the one a search starts itself) runs without authentication
(``RAY_AUTH_MODE=disabled`` unless the user chose otherwise): it is bound to a
loopback address. Joining a cluster always uses Ray's token authentication
(``RAY_AUTH_MODE=token``): the token comes from ``RAY_AUTH_TOKEN``, else the
file named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` (Ray's own
order). A missing, unreadable or refused token raises :class:`ClusterAuthError`,
whose message names those variables and never contains the token.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["init_ray", "ClusterAuthError", "DEFAULT_NODE_IP", "TOKEN_VAR", "TOKEN_PATH_VAR", "AUTH_MODE_VAR"]

# Ray replaces 127.0.0.1/localhost by the machine's network address, so a local
# search pins its node to another loopback address and no traffic leaves the host.
DEFAULT_NODE_IP = "127.0.0.2"

AUTH_MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = Path(".ray") / "auth_token"  # under the home folder, where Ray looks last
_README = "see README.md, 'GPUs and Ray clusters'"
_HOW = (f"give this machine the cluster's token in {TOKEN_PATH_VAR} (a file holding it, readable by you only) "
        f"or in {TOKEN_VAR} ({_README})")

# The RAY_AUTH_MODE value init_ray itself put in os.environ (not the user's choice).
_mode_set_here: str | None = None


class ClusterAuthError(RuntimeError):
    """Joining a Ray cluster failed on token authentication (missing, unreadable or wrong token)."""


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _user_auth_mode() -> str | None:
    """RAY_AUTH_MODE as the user set it (None when unset or set by an earlier init_ray)."""
    mode = os.environ.get(AUTH_MODE_VAR)
    return None if mode is None or mode == _mode_set_here else mode


def _set_auth_mode(mode: str) -> None:
    global _mode_set_here
    os.environ[AUTH_MODE_VAR] = mode
    _mode_set_here = mode


def _refresh_ray_auth() -> None:
    """Make an imported Ray see the current RAY_AUTH_* variables (it caches both mode and token)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:
        return
    Config.initialize("")  # re-reads RAY_AUTH_MODE, as Ray's own _enable_token_auth does
    AuthenticationTokenLoader.instance().reset_cache()


def _token_source(address: str) -> str:
    """Where Ray will read the token from, for messages (never the token itself).

    Mirrors Ray's order: a non-empty ``RAY_AUTH_TOKEN``, else ``RAY_AUTH_TOKEN_PATH``,
    else ``~/.ray/auth_token``. Raises :class:`ClusterAuthError` when there is no
    usable token (Ray itself would abort the process on an unreadable token file).
    """
    raw = os.environ.get(TOKEN_VAR, "")
    if raw:
        if not raw.strip():
            raise ClusterAuthError(f"cannot join the Ray cluster at {address}: {TOKEN_VAR} is set but blank; "
                                   f"{_HOW}")
        return TOKEN_VAR
    path_value = os.environ.get(TOKEN_PATH_VAR, "")
    if path_value:
        path = Path(path_value)
        try:
            content = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ClusterAuthError(f"cannot join the Ray cluster at {address}: {TOKEN_PATH_VAR}={path} "
                                   f"cannot be read ({reason}); {_HOW}") from None
        if not content.strip():
            raise ClusterAuthError(f"cannot join the Ray cluster at {address}: {TOKEN_PATH_VAR}={path} is empty; "
                                   f"{_HOW}")
        return f"{TOKEN_PATH_VAR}={path}"
    default = Path.home() / DEFAULT_TOKEN_FILE
    if default.is_file() and default.stat().st_size > 0:
        return f"{default} (neither {TOKEN_VAR} nor {TOKEN_PATH_VAR} is set)"
    raise ClusterAuthError(
        f"cannot join the Ray cluster at {address}: no authentication token. lmsearch joins clusters with "
        f"token authentication ({AUTH_MODE_VAR}=token) and neither {TOKEN_VAR} nor {TOKEN_PATH_VAR} is set "
        f"(nor is there a {default}); {_HOW}")


def _refused(address: str, source: str) -> ClusterAuthError:
    return ClusterAuthError(
        f"the Ray cluster at {address} refused the authentication token from {source}: it is not the token "
        f"the cluster was started with. Set {TOKEN_VAR} or {TOKEN_PATH_VAR} to the cluster's token ({_README})")


def _check_token_accepted(address: str, source: str) -> None:
    """Ask the cluster's GCS whether it accepts our token (about 10 ms); raise if it refuses.

    Without this, ``ray.init`` retries a refused token for 20 s and then reports a
    bare ``ConnectionError``. Anything but a refusal (an unreachable head, an
    address Ray resolves differently) is left to ``ray.init`` to report.
    """
    if address.startswith("ray://"):
        return
    try:
        from ray._private.services import canonicalize_bootstrap_address
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError

        gcs = canonicalize_bootstrap_address(address)
        host, port = gcs.rsplit(":", 1) if gcs else ("", "")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
            pass  # GcsClient waits 40 s for a port nobody listens on: only ask a live one
    except Exception:  # ray.init reports an unreachable or odd address itself
        return
    try:
        GcsClient(address=gcs)
    except AuthenticationError:
        raise _refused(address, source) from None
    except Exception:  # not an authentication problem: ray.init will say what it is
        return


def _is_refusal(exc: BaseException) -> bool:
    """Whether a failed ``ray.init`` (or its causes) was the cluster refusing the token."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if "Unauthenticated" in text or "InvalidAuthToken" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _prepare_join(address: str) -> str:
    """Switch this process to token authentication for ``address``; returns the token's source."""
    mode = _user_auth_mode()
    if mode is not None and mode.lower() != "token":
        raise ClusterAuthError(
            f"cannot join the Ray cluster at {address} with {AUTH_MODE_VAR}={mode}: lmsearch joins clusters only "
            f"with token authentication. Unset {AUTH_MODE_VAR} (or set {AUTH_MODE_VAR}=token), start the cluster "
            f"with {AUTH_MODE_VAR}=token and {_HOW}")
    source = _token_source(address)
    if mode is None:
        _set_auth_mode("token")
    try:
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:
        import ray

        raise ClusterAuthError(f"Ray {ray.__version__} has no token authentication ({AUTH_MODE_VAR}=token): "
                               f"upgrade Ray to join a cluster") from None
    _refresh_ray_auth()
    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        raise ClusterAuthError(f"cannot join the Ray cluster at {address}: Ray finds no usable token in "
                               f"{source}; {_HOW}")
    return source


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives while a local Ray node starts, and raise it after.

    A KeyboardInterrupt inside ``ray.init`` leaves processes of the half-started node
    behind (its dashboard and runtime-env agents outlive ``ray.shutdown``). Held, the
    first Ctrl-C takes effect a few seconds later, once the node is up, and the caller's
    ``ray.shutdown`` stops all of it; a second Ctrl-C acts at once (a start-up that
    hangs can still be stopped). Nothing changes off the main thread (where Python runs
    no signal handlers) or when SIGINT has no Python handler (ignored, default, or set
    outside Python).
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    held = False

    def hold(signum: int, frame: Any) -> None:
        nonlocal held
        if held:  # the second Ctrl-C: the user insists
            signal.signal(signal.SIGINT, previous)
            signal.raise_signal(signal.SIGINT)
        held = True

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is hold:
            signal.signal(signal.SIGINT, previous)
            if held:
                signal.raise_signal(signal.SIGINT)  # through the restored handler, as if it came now


def init_ray(address: str | None = None, *, node_ip: str | None = DEFAULT_NODE_IP,
             num_cpus: int | None = None, num_gpus: int | None = None,
             log_to_driver: bool = True) -> dict[str, Any]:
    """Start (``address=None``) or join (``address="auto"`` / ``"host:port"``) a Ray cluster.

    A local node binds to ``node_ip`` (default 127.0.0.2; ``None`` lets Ray pick) and
    runs with ``RAY_AUTH_MODE=disabled`` unless that variable says otherwise. Joining
    a cluster (also through ``RAY_ADDRESS`` when ``address`` is None) needs token
    authentication: see the module docstring; failures raise :class:`ClusterAuthError`.
    When joining a cluster whose head is on a loopback address, the driver binds to
    that address too. ``log_to_driver``: show what the trials print (a search's ``--verbose``).
    Returns ``ray.init``'s context info as a dict.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return {}
    if address is None and os.environ.get("RAY_ADDRESS", "local") != "local":
        address = os.environ["RAY_ADDRESS"]  # ray.init would join it: with token auth, as any join
    source = ""  # where the token comes from, when joining
    if address is None:
        if _user_auth_mode() is None:
            _set_auth_mode("disabled")  # this search's own loopback node; Ray would write a token to ~/.ray
        _refresh_ray_auth()
    else:
        source = _prepare_join(address)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": log_to_driver,
                              "configure_logging": True, "logging_level": "WARNING"}
    if address is None:
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus)
        if node_ip:
            kwargs["_node_ip_address"] = node_ip
    else:
        _check_token_accepted(address, source)
        kwargs["address"] = address
        host = address.rsplit(":", 1)[0] if ":" in address else address
        if node_ip and node_ip != DEFAULT_NODE_IP:
            kwargs["_node_ip_address"] = node_ip
        elif _is_loopback(host):
            kwargs["_node_ip_address"] = host
        kwargs.pop("include_dashboard")
    try:
        with _ctrl_c_held() if address is None else contextlib.nullcontext():
            ctx = ray.init(**kwargs)
    except ray.exceptions.AuthenticationError as exc:
        if address is None:
            raise
        if "no authentication token" not in exc.message:
            raise _refused(address, source) from None
        raise ClusterAuthError(f"cannot join the Ray cluster at {address}: Ray found no usable token in "
                               f"{source}; {_HOW}") from None
    except ConnectionError as exc:
        if address is None or not _is_refusal(exc):
            raise
        raise _refused(address, source) from None
    return {"address": getattr(ctx, "address_info", {}).get("address")}
