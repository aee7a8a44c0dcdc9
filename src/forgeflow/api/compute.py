"""Compute targets: where jobs run and how many run at once; a ray target's nodes, live, and its cluster config."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request

from forgeflow import raycluster
from forgeflow.api.security import CONTRIBUTOR, READER, audit_target, services
from forgeflow.errors import Conflict, InvalidInput, ServerUnavailable
from forgeflow.training.compute.cluster_config import PROVIDERS, cluster_config, placeholders
from forgeflow.training.compute.targets import ComputeTarget, validate_target

router = APIRouter(tags=["compute"])

UPDATABLE = ("max_concurrent_jobs", "min_nodes", "max_nodes", "idle_time_before_scale_down", "description",
             "address", "size", "storage")
# Where a target's jobs and instances run: these change only while nothing runs there.
PLACEMENT = ("address", "size", "storage")
# One dead cluster must not hold up the list; `show` may wait longer for a cluster that is slow to answer.
LIST_TIMEOUT_S = 3.0
SHOW_TIMEOUT_S = raycluster.NODES_TIMEOUT_S


def target_view(row: dict, ff) -> dict:
    """A target with its current load: jobs running on it and jobs waiting for it."""
    return row | ff.runner.load(row["name"])


def live_cluster(row: dict, timeout_s: float, *, nodes: bool) -> dict[str, Any] | None:
    """A ray target's cluster as it is now (its nodes when `nodes`, else counts), or why it could not be read;
    None for a local target."""
    if row["type"] != "ray":
        return None
    try:
        # A refused or silent address fails this TCP check at once, where Ray would look for its dashboard for long.
        raycluster.check_reachable(row["address"], min(timeout_s, LIST_TIMEOUT_S))
        cluster = raycluster.cluster_nodes(row["address"], timeout_s,
                                           node_types=(row["size"],) if row["size"] else ())
    except ServerUnavailable as exc:
        return {"reachable": False, "error": exc.message}
    return {"reachable": True, **raycluster.summarize(cluster), **(cluster if nodes else {})}


@router.get("/compute", dependencies=READER)
def list_compute(ff=Depends(services)) -> list[dict]:
    rows = ff.runner.targets.list()
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(rows)))) as pool:
        clusters = list(pool.map(lambda row: live_cluster(row, LIST_TIMEOUT_S, nodes=False), rows))
    return [target_view(row, ff) | {"cluster": cluster} for row, cluster in zip(rows, clusters)]


@router.get("/compute/{name}", dependencies=READER)
def show_compute(name: str, ff=Depends(services)) -> dict:
    row = ff.runner.targets.get(name)
    return target_view(row, ff) | {"cluster": live_cluster(row, SHOW_TIMEOUT_S, nodes=True)}


@router.post("/compute", status_code=201, dependencies=CONTRIBUTOR)
def create_compute(request: Request, body: dict[str, Any] = Body(description=ComputeTarget.__doc__),
                   ff=Depends(services)) -> dict:
    # A plain dict body so an unknown field is named with the list of valid ones (validate_target).
    target = validate_target(body)
    audit_target(request, target.name)
    row = ff.runner.targets.create(target)
    # A target is kept even when its cluster does not answer yet (its cluster may be launched from the config
    # `compute cluster-config` writes for it); the answer says so, and `compute show` keeps saying so.
    return target_view(row, ff) | {"cluster": live_cluster(row, SHOW_TIMEOUT_S, nodes=False)}


@router.patch("/compute/{name}", dependencies=CONTRIBUTOR)
def update_compute(name: str, body: dict[str, Any] = Body(), ff=Depends(services)) -> dict:
    unknown = [k for k in body if k not in UPDATABLE]
    if unknown:
        raise InvalidInput(f"{unknown[0]!r} cannot be changed: updatable fields are {', '.join(UPDATABLE)}",
                           field=str(unknown[0]))
    check_unused(ff.runner.targets.get(name), ff.runner.targets.updated(name, body), ff)
    row = ff.runner.targets.update(name, body)
    ff.runner.wake()  # a higher limit may start queued jobs now
    return target_view(row, ff) | {"cluster": live_cluster(row, SHOW_TIMEOUT_S, nodes=False)}


def check_unused(row: dict, target: ComputeTarget, ff) -> None:
    """409 naming the field when a change moves where things run while jobs or deployments run there: a running
    job's driver and a deployment's instances stay on the cluster (and storage) they started on."""
    changed = [k for k in PLACEMENT if getattr(target, k) != row[k]]
    if not changed:
        return
    users = []
    running = ff.runner.load(row["name"])["running_jobs"]
    if running:
        users.append(f"{running} running job(s)")
    deployments = ff.ws.store.select("deployments", {"compute": row["name"]})
    if deployments:
        users.append("deployment(s) " + ", ".join(f"{d['endpoint']}/{d['name']}" for d in deployments))
    if users:
        raise Conflict(f"{changed[0]} of compute target {row['name']!r} cannot change while {' and '.join(users)} "
                       "use it: let the jobs end (or cancel them) and delete or move the deployments "
                       "(--compute), or create a new target", field=changed[0])


@router.get("/compute/{name}/cluster-config", dependencies=READER)
def get_cluster_config(name: str, provider: str = Query(..., description=f"One of {', '.join(PROVIDERS)}."),
                       ff=Depends(services)) -> dict:
    """The config that launches this ray target's cluster with Ray's autoscaler, scaled by the target's settings."""
    if provider not in PROVIDERS:
        raise InvalidInput(f"provider {provider!r} is not one of {', '.join(PROVIDERS)}", field="provider")
    row = ff.runner.targets.get(name)
    config = cluster_config(row, provider, row.get("storage") or str(ff.ws.paths.artifacts))
    return {"compute": row["name"], "provider": provider, "config": config, "placeholders": placeholders(config)}
