"""Connecting to Ray: a local node pinned to a loopback address, or an existing cluster."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

__all__ = ["init_ray", "DEFAULT_NODE_IP"]

# Ray replaces 127.0.0.1/localhost by the machine's network address, so a local
# search pins its node to another loopback address and no traffic leaves the host.
DEFAULT_NODE_IP = "127.0.0.2"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def init_ray(address: str | None = None, *, node_ip: str | None = DEFAULT_NODE_IP,
             num_cpus: int | None = None, num_gpus: int | None = None) -> dict[str, Any]:
    """Start (``address=None``) or join (``address="auto"`` / ``"host:port"``) a Ray cluster.

    A local node binds to ``node_ip`` (default 127.0.0.2; ``None`` lets Ray pick).
    When joining a cluster whose head is on a loopback address, the driver binds
    to that address too. Returns ``ray.init``'s context info as a dict.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return {}
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                              "configure_logging": True, "logging_level": "WARNING"}
    if address is None:
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus)
        if node_ip:
            kwargs["_node_ip_address"] = node_ip
    else:
        kwargs["address"] = address
        host = address.rsplit(":", 1)[0] if ":" in address else address
        if node_ip and node_ip != DEFAULT_NODE_IP:
            kwargs["_node_ip_address"] = node_ip
        elif _is_loopback(host):
            kwargs["_node_ip_address"] = host
        kwargs.pop("include_dashboard")
    ctx = ray.init(**kwargs)
    return {"address": getattr(ctx, "address_info", {}).get("address")}
