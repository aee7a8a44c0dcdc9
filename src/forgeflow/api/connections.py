"""Connections for flows; secrets come back masked unless a contributor (or owner) asks for them."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from forgeflow.api.security import CONTRIBUTOR, READER, audit_secret_read, audit_target, current, require, services
from forgeflow.store.identity import Role

router = APIRouter(tags=["connections"])


def _finite(value: Any) -> Any:
    """NaN and infinities (a JSON body may spell them NaN, Infinity or 1e999) would be stored as 'nan' or 'inf'."""
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    return value


Value = Annotated[str | int | float | bool, BeforeValidator(_finite)]


class ConnectionBody(BaseModel):
    name: str
    type: str = Field("custom", description="custom, open_ai or azure_open_ai.")
    configs: dict[str, Value] = Field(default_factory=dict)
    secrets: dict[str, Value] = Field(default_factory=dict)


@router.post("/connections", status_code=201, dependencies=CONTRIBUTOR)
def create(body: ConnectionBody, request: Request, ff=Depends(services)) -> dict:
    audit_target(request, body.name)
    return ff.connections.upsert(body.name, body.type, body.configs, body.secrets)


@router.put("/connections/{name}", dependencies=CONTRIBUTOR)
def replace(name: str, body: ConnectionBody, ff=Depends(services)) -> dict:
    return ff.connections.upsert(name, body.type, body.configs, body.secrets, replace=True)


class ConnectionChanges(BaseModel):
    type: str | None = Field(None, description="A new type (rarely needed).")
    configs: dict[str, Value] = Field(default_factory=dict, description="Configs to add or change.")
    secrets: dict[str, Value] = Field(default_factory=dict, description="Secrets to add or change.")
    remove: list[str] = Field(default_factory=list, description="Fields to drop: configs.NAME, secrets.NAME or NAME.")


@router.patch("/connections/{name}", dependencies=CONTRIBUTOR)
def update(name: str, body: ConnectionChanges, ff=Depends(services)) -> dict:
    return ff.connections.update(name, body.configs, body.secrets, body.remove, body.type)


@router.get("/connections", dependencies=READER)
def list_connections(ff=Depends(services)) -> list[dict]:
    return ff.connections.list()


@router.get("/connections/{name}", dependencies=READER)
def show(name: str, request: Request, with_secrets: bool = False, ff=Depends(services)) -> dict:
    """The connection, secrets masked; `with_secrets` (contributor or owner) shows them (a flow run needs them)."""
    if with_secrets:
        require(current(request), Role.CONTRIBUTOR, "reading a connection's secrets")
        audit_secret_read(request, read="secrets")
    return ff.connections.show(name, with_secrets=with_secrets)


@router.delete("/connections/{name}", dependencies=CONTRIBUTOR)
def delete(name: str, ff=Depends(services)) -> dict:
    ff.connections.delete(name)
    return {"deleted": name}
