"""Compute targets: where jobs run and how many run at once."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends

from forgeflow.api.security import ADMIN, services
from forgeflow.errors import InvalidInput
from forgeflow.training.compute.targets import ComputeTarget, validate_target

router = APIRouter(dependencies=ADMIN, tags=["compute"])

UPDATABLE = ("max_concurrent_jobs", "min_nodes", "max_nodes", "idle_time_before_scale_down", "description")


def target_view(row: dict, ff) -> dict:
    """A target with its current load: jobs running on it and jobs waiting for it."""
    return row | ff.runner.load(row["name"])


@router.get("/compute")
def list_compute(ff=Depends(services)) -> list[dict]:
    return [target_view(t, ff) for t in ff.runner.targets.list()]


@router.get("/compute/{name}")
def show_compute(name: str, ff=Depends(services)) -> dict:
    return target_view(ff.runner.targets.get(name), ff)


@router.post("/compute", status_code=201)
def create_compute(body: dict[str, Any] = Body(description=ComputeTarget.__doc__), ff=Depends(services)) -> dict:
    # A plain dict body so an unknown field is named with the list of valid ones (validate_target).
    target = validate_target(body)
    return target_view(ff.runner.targets.create(target), ff)


@router.patch("/compute/{name}")
def update_compute(name: str, body: dict[str, Any] = Body(), ff=Depends(services)) -> dict:
    unknown = [k for k in body if k not in UPDATABLE]
    if unknown:
        raise InvalidInput(f"{unknown[0]!r} cannot be changed: updatable fields are {', '.join(UPDATABLE)}",
                           field=str(unknown[0]))
    row = ff.runner.targets.update(name, body)
    ff.runner.wake()  # a higher limit may start queued jobs now
    return target_view(row, ff)
