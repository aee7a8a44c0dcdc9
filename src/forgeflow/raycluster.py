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
_HOST_PORT = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.\-]{0,252})?:\d{1,5}")
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
            if _HOST_PORT.fullmatch(rest) and 0 < int(rest.rsplit(":", 1)[1]) < 65536:
                return f"{scheme}{rest}"
            break
    else:
        if _HOST_PORT.fullmatch(value) and 0 < int(value.rsplit(":", 1)[1]) < 65536:
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
        # Made outside the lock: finding the dashboard of a GCS that does not answer takes Ray up to a minute,
        # and other clusters must not wait for that.
        quiet_ray()
        from ray.job_submission import JobSubmissionClient

        try:
            client = JobSubmissionClient(address)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError: Ray raises all three
            raise unreachable(address, exc) from None
        with _lock:
            client = _clients.setdefault(address, client)
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


# -- the cluster's nodes, live: what `compute show` and `compute list` report ------------------------------------

NODES_TIMEOUT_S = 10.0
SHOWN_DEAD_NODES = 10  # nodes that ended, newest first; Ray keeps many more
_ACTIVE_JOB = ("PENDING", "RUNNING")
_probes: dict[str, Any] = {}  # address -> the Future of the read under way
_probes_lock = threading.Lock()


def cluster_nodes(address: str, timeout_s: float = NODES_TIMEOUT_S, node_types: tuple[str, ...] = ()) -> dict[str, Any]:
    """The cluster at `address` as it is now, read over its dashboard (no driver), within `timeout_s`:

    `nodes`: alive nodes then the last ones that ended, each `{node_id, ip, state (ALIVE|DEAD), role (head|worker),
    node_type, resources, available, jobs, actors, other_actors, started_at, ended_at, state_message}` where
    `node_type` is the autoscaler's node type (None where the cluster has no autoscaler node types),
    `resources` what the node offers (CPU, GPU, memory bytes, custom resources), `available` what is free as of
    the autoscaler's last report, every few seconds (None where it does not report it), `jobs` the submission
    ids (forgeflow job ids) of active Ray jobs with their driver or actors there, `actors` the names of
    forgeflow's actors there (namespace "forgeflow"), `other_actors` how many more actors run there;
    `pending`: nodes the autoscaler is bringing up, `{node_type, state, node}`;
    `autoscaler_error`: the autoscaler's last error, if any. `node_types` are node type names the caller knows
    (a target's size): the dashboard camel-cases the names of node types still being launched.
    An unreachable or silent cluster is ServerUnavailable naming `address`; a slow one is read on in the
    background (one read per cluster at a time), so a caller never waits past `timeout_s`.
    """
    from concurrent.futures import Future, TimeoutError

    address = check_address(address)
    with _probes_lock:
        probe = _probes.get(address)
        if probe is None:
            probe = _probes[address] = Future()
            threading.Thread(target=_probe, args=(address, node_types, probe), name="forgeflow-ray-nodes",
                             daemon=True).start()
    try:
        return probe.result(timeout=timeout_s)
    except TimeoutError:
        raise ServerUnavailable(f"the Ray cluster at {address} did not answer within {timeout_s:g}s (is its head "
                                "node reachable from this server? check with `ray status --address ADDRESS`)",
                                field="address") from None


def summarize(cluster: dict[str, Any]) -> dict[str, Any]:
    """Counts for `compute list`: nodes and workers alive, CPUs and GPUs in total and free, nodes coming up."""
    alive = [n for n in cluster["nodes"] if n["state"] == "ALIVE"]

    def total(key: str, field: str) -> float | None:
        values = [(n[field] or {}).get(key, 0) for n in alive]
        return None if field == "available" and any(n["available"] is None for n in alive) else sum(values)

    return {"nodes_alive": len(alive), "workers_alive": sum(n["role"] == "worker" for n in alive),
            "cpus": total("CPU", "resources"), "cpus_free": total("CPU", "available"),
            "gpus": total("GPU", "resources"), "gpus_free": total("GPU", "available"),
            "pending": len(cluster["pending"])}


def _probe(address: str, node_types: tuple[str, ...], probe: Any) -> None:
    try:
        probe.set_result(_read_cluster(address, node_types))
    except BaseException as exc:  # handed to every caller waiting on this probe
        probe.set_exception(exc)
    finally:
        with _probes_lock:
            _probes.pop(address, None)


def _read_cluster(address: str, node_types: tuple[str, ...]) -> dict[str, Any]:
    import httpx
    from ray.util.state import list_actors, list_jobs, list_nodes

    dashboard = dashboard_url(address)
    rpc = int(NODES_TIMEOUT_S)
    try:
        nodes = list_nodes(address=dashboard, detail=True, limit=10_000, timeout=rpc, raise_on_missing_output=False)
        actors = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=10_000, timeout=rpc,
                             raise_on_missing_output=False)
        jobs = [j for j in list_jobs(address=dashboard, limit=10_000, timeout=rpc, raise_on_missing_output=False)
                if getattr(j.status, "value", j.status) in _ACTIVE_JOB and j.submission_id]
        status = httpx.get(f"{dashboard}/api/cluster_status", timeout=NODES_TIMEOUT_S).json().get("data") or {}
    except Exception as exc:  # the dashboard moved or went away: look it up afresh next time
        forget(address)
        raise unreachable(address, exc) from None
    try:
        return _describe(nodes, actors, jobs, status, node_types)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # another Ray version, or not Ray at all
        raise ServerUnavailable(f"the Ray cluster at {address} answered in a shape this forgeflow does not read "
                                f"({type(exc).__name__}: {exc}); is it Ray {_ray_version()}?", field="address") from None


def _ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


def _describe(nodes: list, actors: list, jobs: list, status: dict, node_types: tuple[str, ...]) -> dict[str, Any]:
    """Nodes (alive first, then the last ended), nodes coming up, and the autoscaler's error, from the state API
    and the dashboard's cluster status."""
    report = (status.get("clusterStatus") or {}).get("autoscalerReport") or {}
    usage = ((status.get("clusterStatus") or {}).get("loadMetricsReport") or {}).get("usageByNode") or {}
    types = report.get("nodeTypeMapping") or {}
    ips = [n.node_ip for n in nodes if n.state == "ALIVE"]

    def by_node(table: dict[str, Any], node: Any) -> Any:
        # The autoscaler keys nodes by id on one-machine clusters and by IP elsewhere.
        if node.node_id in table:
            return table[node.node_id]
        return table.get(node.node_ip) if ips.count(node.node_ip) == 1 else None

    on_node = _work_by_node(nodes, actors, jobs)
    listed = []
    for node in nodes:
        node_type = (node.labels or {}).get(NODE_TYPE_LABEL) or by_node(types, node)
        if node_type == f"node_{node.node_id}":  # the anonymous type of a cluster without node types
            node_type = None
        resources = {k: v for k, v in (node.resources_total or {}).items()
                     if not k.startswith("node:") and k != "object_store_memory"}
        used = by_node(usage, node) if node.state == "ALIVE" else None
        available = None
        if used is not None:
            camel = {_camel(k): k for k in resources}
            available = {camel[k]: max(0.0, total - taken) for k, (taken, total) in used.items() if k in camel}
        there = on_node[node.node_id]
        listed.append({
            "node_id": node.node_id, "ip": node.node_ip, "state": str(node.state),
            "role": "head" if node.is_head_node else "worker", "node_type": node_type,
            "resources": resources, "available": available, "jobs": sorted(there["jobs"]),
            "actors": sorted(there["actors"]), "other_actors": there["other_actors"],
            "started_at": _iso(node.start_time_ms), "ended_at": _iso(node.end_time_ms),
            "state_message": node.state_message or None})
    alive = [n for n in listed if n["state"] == "ALIVE"]
    ended = sorted((n for n in listed if n["state"] != "ALIVE"), key=lambda n: n["ended_at"] or "", reverse=True)
    known_types = set(node_types) | set(types.values()) | {p[1] for p in report.get("pendingNodes") or []}
    alive_ids = {n["node_id"] for n in alive}
    pending = [{"node_type": _uncamel(t, known_types), "state": "launching", "node": None}
               for t, count in (report.get("pendingLaunches") or {}).items() for _ in range(int(count))]
    pending += [{"node_type": t, "state": state, "node": node} for node, t, state in report.get("pendingNodes") or []
                if node not in alive_ids]
    return {"nodes": sorted(alive, key=lambda n: (n["role"] != "head", n["started_at"] or "")) +
            ended[:SHOWN_DEAD_NODES], "pending": pending, "autoscaler_error": status.get("autoscalingError") or None}


def _work_by_node(nodes: list, actors: list, jobs: list) -> dict[str, dict[str, Any]]:
    """Node id -> the active jobs with their driver or actors there, forgeflow's named actors, and a count of the
    rest. A job is known by its submission id, from its driver's node, its supervisor actor or its actors."""
    from ray.dashboard.modules.job.common import JOB_ACTOR_NAME_TEMPLATE

    job_of = {j.job_id: j.submission_id for j in jobs if j.job_id}
    supervisor = {JOB_ACTOR_NAME_TEMPLATE.format(job_id=j.submission_id): j.submission_id for j in jobs}
    on_node: dict[str, dict[str, Any]] = {n.node_id: {"jobs": set(), "actors": [], "other_actors": 0} for n in nodes}
    for job in jobs:
        if job.driver_node_id in on_node:
            on_node[job.driver_node_id]["jobs"].add(job.submission_id)
    for actor in actors:
        there = on_node.get(actor.node_id)
        if there is None:
            continue
        job = job_of.get(actor.job_id) or supervisor.get(actor.name or "")
        if job:  # a job's driver (its supervisor actor) or one of its workers (Ray Train's are actors)
            there["jobs"].add(job)
        if actor.ray_namespace == NAMESPACE and actor.name:
            there["actors"].append(actor.name)
        elif not job:
            there["other_actors"] += 1
    return on_node


def _camel(name: str) -> str:
    """A key as the dashboard spells it in its JSON answers (object_store_memory -> objectStoreMemory)."""
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def _uncamel(name: str, known: set[str]) -> str:
    return next((k for k in known if _camel(k) == name), name)


def _iso(ms: int | None) -> str | None:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds") if ms else None


def node_type_resources(address: str, node_type: str | None) -> dict[str, float]:
    """What the cluster's live nodes of `node_type` (those whose NODE_TYPE_LABEL names it) offer, summed; every live
    node's when `node_type` is None. A job bound to a CPU node type must not ask for a GPU another type has."""
    quiet_ray()
    from ray.util.state import list_nodes

    try:
        nodes = list_nodes(address=dashboard_url(address), filters=[("state", "=", "ALIVE")],
                           raise_on_missing_output=False)
    except Exception as exc:  # ConnectionError, RayStateApiException
        raise unreachable(address, exc) from None
    total: dict[str, float] = {}
    for node in nodes:
        if node_type is not None and (node.labels or {}).get(NODE_TYPE_LABEL) != node_type:
            continue
        for name, amount in (node.resources_total or {}).items():
            total[name] = total.get(name, 0.0) + float(amount)
    return total
