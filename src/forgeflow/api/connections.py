"""Connections for flows; secrets come back masked unless asked for by an admin client."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from forgeflow.api.deps import ADMIN, services

router = APIRouter(dependencies=ADMIN, tags=["connections"])


class ConnectionBody(BaseModel):
    name: str
    type: str = Field("custom", description="custom, open_ai or azure_open_ai.")
    configs: dict[str, str | int | float | bool] = Field(default_factory=dict)
    secrets: dict[str, str | int | float | bool] = Field(default_factory=dict)


@router.post("/connections", status_code=201)
def create(body: ConnectionBody, ff=Depends(services)) -> dict:
    return ff.connections.upsert(body.name, body.type, body.configs, body.secrets)


@router.put("/connections/{name}")
def replace(name: str, body: ConnectionBody, ff=Depends(services)) -> dict:
    return ff.connections.upsert(name, body.type, body.configs, body.secrets, replace=True)


@router.get("/connections")
def list_connections(ff=Depends(services)) -> list[dict]:
    return ff.connections.list()


@router.get("/connections/{name}")
def show(name: str, with_secrets: bool = False, ff=Depends(services)) -> dict:
    return ff.connections.show(name, with_secrets=with_secrets)


@router.delete("/connections/{name}")
def delete(name: str, ff=Depends(services)) -> dict:
    ff.connections.delete(name)
    return {"deleted": name}
