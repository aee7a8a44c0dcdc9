"""Compute targets: where fine-tuning jobs and deployments run, and how many jobs at once.

`local` (the machine running the server) always exists. A `ray` target is an existing Ray cluster, named by its
address (see `forgeflow.raycluster`), with Azure ML's AmlCompute scale settings (min/max nodes, idle seconds
before scale-down, a node size): forgeflow maps them onto Ray's autoscaler where it writes the cluster's config
and shows them as they are where it attaches. `storage` is the directory every node reaches (job folders and
checkpoints); by default the workspace's own artifacts folder, which must then be shared with the nodes.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

import pydantic
from pydantic import Field

from forgeflow.errors import Conflict, InvalidInput, NotFound
from forgeflow.names import check_name
from forgeflow.raycluster import check_address
from forgeflow.store.db import Store, now

DEFAULT_TARGET = "local"
TYPES = ("local", "ray")
# Ray's rule for a label value (the size is the node-type label jobs select on): Ray would refuse anything else
# only when a job is submitted.
LABEL_VALUE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
# Fields a PATCH may set to null, which clears them.
NULLABLE = ("address", "size", "storage", "description")


class ComputeTarget(pydantic.BaseModel, extra="forbid"):
    """One compute target; the REST body of POST /api/compute."""

    name: str = Field(description="Target name, e.g. local or gpu-box.")
    type: Literal["local", "ray"] = Field("local", description="local (this machine) or ray (a Ray cluster).")
    address: str | None = Field(None, max_length=512, description=(
        "ray targets: the cluster's GCS address (head:6379), ray://head:10001, http://head:8265 or auto."))
    size: str | None = Field(None, max_length=63, description=(
        "ray targets: the node type jobs and instances run on (a node type of the cluster's autoscaler config)."))
    storage: str | None = Field(None, max_length=1024, description=(
        "ray targets: a directory every node reaches, for job folders and checkpoints (default: the workspace's "
        "artifacts folder, shared with the nodes)."))
    max_concurrent_jobs: int = Field(1, gt=0, le=1024, description="Jobs that may run at once; more wait Queued.")
    min_nodes: int = Field(0, ge=0, le=1000, description="Nodes kept up when idle (cluster targets).")
    max_nodes: int = Field(1, gt=0, le=1000, description="Most nodes the target scales to (cluster targets).")
    idle_time_before_scale_down: int = Field(120, ge=0, le=7 * 86400,
                                             description="Idle seconds before a node is released (at most a week).")
    description: str | None = Field(None, description="Free text.")

    @pydantic.field_validator("size")
    @classmethod
    def _size(cls, size: str | None) -> str | None:
        if size is not None and not LABEL_VALUE.fullmatch(size):
            raise ValueError(f"{size!r} is not a node type Ray can select on: at most 63 letters, digits, '-', '_' "
                             "or '.', starting and ending with a letter or digit (e.g. gpu-a100)")
        return size

    @pydantic.field_validator("storage")
    @classmethod
    def _storage(cls, storage: str | None) -> str | None:
        if storage is None:
            return None
        if not storage.startswith("/"):
            raise ValueError(f"storage must be an absolute directory path every node mounts, got {storage!r}"
                             " (object-store URIs are not supported for job folders)")
        if "\0" in storage:
            raise ValueError("storage must not contain NUL bytes")
        if os.path.normpath(storage) != storage:
            raise ValueError(f"storage {storage!r} is not a plain path: use {os.path.normpath(storage)!r}")
        return storage

    @pydantic.model_validator(mode="after")
    def _nodes(self) -> ComputeTarget:
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) must not exceed max_nodes ({self.max_nodes})")
        if self.type == "ray":
            self.address = check_address(self.address)
        else:
            extra = [k for k in ("address", "size", "storage") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{extra[0]} is for ray targets only (a local target is this machine)")
        return self


class ComputeTargets:
    """The compute_targets table; makes sure `local` exists."""

    def __init__(self, store: Store) -> None:
        self.store = store
        if self.store.get("compute_targets", name=DEFAULT_TARGET) is None:
            try:
                self._insert(ComputeTarget(name=DEFAULT_TARGET, description="The machine running the forgeflow server."))
            except Exception:  # another process inserted it first
                if self.store.get("compute_targets", name=DEFAULT_TARGET) is None:
                    raise

    def _insert(self, target: ComputeTarget) -> None:
        self.store.insert("compute_targets", target.model_dump() | {"created_at": now()})

    def list(self) -> list[dict[str, Any]]:
        return self.store.select("compute_targets", order_by="created_at, name")

    def get(self, name: str) -> dict[str, Any]:
        name = (name or "").removeprefix("azureml:")
        row = self.store.get("compute_targets", name=name)
        if row is None:
            have = ", ".join(t["name"] for t in self.list())
            raise NotFound(f"no compute target {name!r} (targets: {have}; create one with: forgeflow compute create)",
                           field="compute")
        return row

    def create(self, target: ComputeTarget) -> dict[str, Any]:
        check_name(target.name, "compute target")
        if self.store.get("compute_targets", name=target.name) is not None:
            raise Conflict(f"compute target {target.name!r} already exists (see: forgeflow compute show {target.name})",
                           field="name")
        self._insert(target)
        return self.get(target.name)

    def updated(self, name: str, values: dict[str, Any]) -> ComputeTarget:
        """The target as `values` would change it, validated (nothing is written); null clears a field that may be
        empty (NULLABLE) and is refused for the others."""
        current = self.get(name)
        for key, value in values.items():
            if value is None and key not in NULLABLE:
                raise InvalidInput(f"{key} cannot be null: give a value (fields that null clears: "
                                   f"{', '.join(NULLABLE)})", field=key)
        return validate_target({k: current[k] for k in ComputeTarget.model_fields} | values)

    def update(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        target = self.updated(name, values)
        self.store.update("compute_targets", {"name": target.name}, target.model_dump(exclude={"name", "type"}))
        return self.get(target.name)

    def limits(self) -> dict[str, int]:
        """Target name -> max_concurrent_jobs, read fresh by the runner on every pass."""
        return {t["name"]: int(t["max_concurrent_jobs"]) for t in self.list()}


def validate_target(raw: dict[str, Any]) -> ComputeTarget:
    """Validate a target, naming the field that is wrong."""
    try:
        return ComputeTarget(**raw)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or None
        msg = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            msg = f"unknown field: valid fields are {', '.join(ComputeTarget.model_fields)}"
        raise InvalidInput(f"{field}: {msg}" if field else msg, field=field) from None
