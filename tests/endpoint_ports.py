"""Ports an endpoint may be given in tests: free now, and in the range a server gives endpoints by default
(serving/endpoint_hosts.DEFAULT_PORTS), never the ephemeral ones processes.free_port hands out."""

from __future__ import annotations

import random
import socket

from forgeflow.serving.endpoint_hosts import check_port_range


def free_endpoint_ports(n: int = 1, host: str = "127.0.0.1", spec: str | None = None) -> list[int]:
    """`n` distinct ports of the endpoint port range (`spec`, else the default) that `host` can bind right now,
    picked at random so that test processes running side by side rarely pick the same."""
    found: list[int] = []
    for port in random.sample(check_port_range(spec), k=len(check_port_range(spec))):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    raise RuntimeError(f"fewer than {n} free ports in the endpoint port range on {host}")


def free_endpoint_port(host: str = "127.0.0.1") -> int:
    return free_endpoint_ports(1, host)[0]
