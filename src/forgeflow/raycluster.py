"""The one way forgeflow reaches a Ray cluster: address rules, the job-submission client and the driver connection.

A compute target of type `ray` names its cluster by the address `ray start --address` takes (`head:6379`, the
GCS), by a Ray Client address (`ray://head:10001`), by `auto` (the cluster this machine belongs to) or by the
dashboard's own URL (`http://head:8265`). forgeflow finds the job-submission endpoint (the dashboard) itself.

Jobs and `compute show` talk to the cluster over the dashboard's HTTP API (no driver). Deployments run Ray actors,
which needs this process to be a Ray driver (`connect`): a process is the driver of one cluster at a time, so a
server places deployments on one Ray cluster; a second address is a clear conflict, not a silent reconnect.
Ray is imported here, lazily: the CLI and servers without a Ray target never pay for it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

from forgeflow.errors import Conflict, InvalidInput, ServerUnavailable

log = logging.getLogger("forgeflow.ray")

NAMESPACE = "forgeflow"
# The label Ray's autoscaler gives each node it starts: the node type (a target's `size`) it was started as. Jobs
# and instances of a target with a size run only on nodes carrying it.
NODE_TYPE_LABEL = "ray.io/node-group"
_HOST_PORT = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-]{0,252})?:\d{1,5}$")
_lock = threading.Lock()
_clients: dict[str, Any] = {}
_driver_address: str | None = None


def check_address(address: str | None) -> str:
    """The address as given when it has one of the forms Ray accepts, else InvalidInput naming `address`."""
    value = (address or "").strip()
    if not value:
        raise InvalidInput("a ray compute target needs --address: the cluster's GCS address (head:6379), "
                           "ray://head:10001, http://head:8265 (the dashboard) or auto", field="address")
    if value == "auto":
        return value
    for scheme in ("ray://", "http://", "https://"):
        if value.startswith(scheme):
            rest = value[len(scheme):].rstrip("/")
            if _HOST_PORT.match(rest) and 0 < int(rest.rsplit(":", 1)[1]) < 65536:
                return f"{scheme}{rest}"
            break
    else:
        if _HOST_PORT.match(value) and 0 < int(value.rsplit(":", 1)[1]) < 65536:
            return value
    raise InvalidInput(f"address {value!r} is not a Ray address: use head:6379 (GCS), ray://head:10001, "
                       "http://head:8265 (dashboard) or auto", field="address")


def quiet_ray() -> None:
    """Settings for every Ray call from forgeflow: no usage reports (forgeflow works offline)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def submission_client(address: str):
    """Ray's JobSubmissionClient for the cluster at `address` (the dashboard is found from a GCS address)."""
    address = check_address(address)
    with _lock:
        client = _clients.get(address)
        if client is None:
            quiet_ray()
            from ray.job_submission import JobSubmissionClient

            try:
                client = JobSubmissionClient(address)
            except Exception as exc:  # ConnectionError, RuntimeError, ValueError: Ray raises all three
                raise unreachable(address, exc) from None
            _clients[address] = client
        return client


def dashboard_url(address: str) -> str:
    """The cluster's dashboard (job-submission and state API) URL."""
    return submission_client(address).get_address()


def forget(address: str) -> None:
    """Drop a cached client (the cluster restarted on another dashboard port)."""
    with _lock:
        _clients.pop(check_address(address), None)


def connect(address: str) -> None:
    """Make this process a driver of the cluster at `address` (once); another address is a Conflict."""
    global _driver_address
    address = check_address(address)
    with _lock:
        if _driver_address == address:
            return
        if _driver_address is not None:
            raise Conflict(f"this server already drives the Ray cluster at {_driver_address}: one server places "
                           f"deployments on one Ray cluster, so {address} needs a server of its own", field="compute")
        if address.startswith(("http://", "https://")):
            raise InvalidInput(f"deployments need the cluster's GCS address (head:6379) or ray://head:10001, not "
                               f"the dashboard URL {address}: give that as the target's --address", field="address")
        quiet_ray()
        import ray

        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING,
                     configure_logging=False)
        except Exception as exc:
            raise unreachable(address, exc) from None
        _driver_address = address
        log.info("connected to the Ray cluster at %s", address)


def disconnect() -> None:
    """Stop being a driver (server shutdown); the actors this process owned end with it."""
    global _driver_address
    with _lock:
        if _driver_address is None:
            return
        import ray

        ray.shutdown()
        _driver_address = None


def unreachable(address: str, exc: BaseException) -> ServerUnavailable:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ServerUnavailable(f"cannot reach the Ray cluster at {address}: {first} (is it running? start one with "
                             "`ray start --head`, or check the address with `ray status --address ADDRESS`)",
                             field="address")


def driver_address() -> str | None:
    """The cluster this process is a driver of (`connect`), or None."""
    return _driver_address


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """ServerUnavailable unless the cluster's GCS (or Ray Client server) at `address` takes a TCP connection:
    `ray.init` itself retries an unreachable address for minutes instead of failing."""
    import socket

    address = check_address(address)
    if address == "auto" or address.startswith(("http://", "https://")):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise unreachable(address, exc) from None


def cluster_resources(address: str) -> dict[str, float]:
    """What the cluster's live nodes offer, summed (CPU, GPU, memory, custom resources), from its state API."""
    quiet_ray()
    from ray.util.state import list_nodes

    try:
        nodes = list_nodes(address=dashboard_url(address), filters=[("state", "=", "ALIVE")],
                           raise_on_missing_output=False)
    except Exception as exc:  # ConnectionError, RayStateApiException
        raise unreachable(address, exc) from None
    total: dict[str, float] = {}
    for node in nodes:
        for name, amount in (node.resources_total or {}).items():
            total[name] = total.get(name, 0.0) + float(amount)
    return total
