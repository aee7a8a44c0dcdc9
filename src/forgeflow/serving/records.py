"""A deployment as its row in the `deployments` table says: the endpoint service writes it, the
supervisor, the placement and the gateway read it. And the gateway's view of an endpoint (`EndpointConfig`)."""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any

from forgeflow.serving import specs
from forgeflow.store.states import DeploymentState

Key = tuple[str, str]
_REGISTERED = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*:[0-9]+")  # a registered version's canonical reference  # (endpoint, deployment)
SPEC_FIELDS = ("model_ref", "model_path", "runtime", "instance_count", "request_settings", "liveness_probe",
               "readiness_probe", "scale_settings", "compute", "resources", "adapters", "gguf_type")


@dataclass(frozen=True)
class Deployment:
    endpoint: str
    name: str
    model_ref: str
    model_path: str
    runtime: str
    instance_count: int
    request_settings: dict[str, int]
    liveness_probe: dict[str, Any]
    readiness_probe: dict[str, Any]
    state: DeploymentState
    error: str | None
    created_at: str
    updated_at: str | None
    scale_settings: dict[str, Any] = field(default_factory=lambda: dict(specs.DEFAULT_SCALE))
    compute: str = specs.LOCAL_COMPUTE  # the compute target its instances run on: `local` is this machine
    # what each instance reserves on its node ({"cpus", "gpus", "memory_mb"}); only a cluster target reserves it
    resources: dict[str, int | float] = field(default_factory=lambda: dict(specs.DEFAULT_RESOURCES))
    # Several fine-tunes of one base: registered NAME:VERSION -> its LoRA adapter folder, in the order given (the
    # first is the default); model_path is then the base model's folder and model_ref the base model. Empty: one
    # model, model_path its merged folder.
    adapters: dict[str, str] = field(default_factory=dict)
    gguf_type: str | None = None  # llamacpp's GGUF weights; None off llamacpp

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Deployment:
        """A stored row; probes and scale settings saved before they were settable read as the defaults, a
        deployment saved before it could run elsewhere as one on `local`, and one saved before adapters or GGUF
        types as one model, on llamacpp of the f16 weights it was served (the model server's default then)."""
        values = {f.name: row.get(f.name) for f in dataclasses.fields(cls)}
        return cls(**values | {
            "state": DeploymentState(row["state"]),
            "liveness_probe": specs.probe("liveness_probe", None, row.get("liveness_probe")),
            "readiness_probe": specs.probe("readiness_probe", None, row.get("readiness_probe")),
            "scale_settings": specs.scale_settings(None, row.get("scale_settings")),
            "compute": row.get("compute") or specs.LOCAL_COMPUTE,
            "resources": specs.resources(None, row.get("resources")),
            "adapters": dict(row.get("adapters") or {}),
            "gguf_type": row.get("gguf_type") or (specs.LEGACY_GGUF_TYPE if row.get("runtime") == "llamacpp" else None),
        })

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def spec(self) -> dict[str, Any]:
        """What the deployment runs and how: every field but its name, state and times."""
        return {k: v for k, v in self.row().items() if k in SPEC_FIELDS}

    def replace(self, **changes: Any) -> Deployment:
        return dataclasses.replace(self, **changes)

    @property
    def models(self) -> list[str]:
        """The registered models it serves: its adapters' names, or its one model."""
        return list(self.adapters) or [self.model_ref]

    @property
    def registered_models(self) -> list[str]:
        """The registered versions (`NAME:VERSION`) it serves, which a request's `model` may name: its adapters',
        or its one model's when that is a registered version (not a catalog model, a folder or a flow)."""
        if self.adapters:
            return list(self.adapters)
        return [self.model_ref] if _REGISTERED.fullmatch(self.model_ref or "") and not self.serves_flow else []

    @property
    def key(self) -> Key:
        return self.endpoint, self.name

    @property
    def autoscaled(self) -> bool:
        """Its instance count follows the load (scale_settings.type target_utilization)."""
        return specs.autoscaled(self.scale_settings)

    @property
    def serves_flow(self) -> bool:
        return self.runtime == specs.FLOW_RUNTIME

    @property
    def request_timeout_s(self) -> float:
        return self.request_settings.get("request_timeout_ms", 90_000) / 1000


@dataclass
class EndpointConfig:
    """What the gateway needs about one endpoint, decrypted once."""

    name: str
    auth_mode: str
    primary: str
    secondary: str
    traffic: dict[str, int]
    mirror: dict[str, int]
    max_body_bytes: int | None
    deployments: dict[str, Deployment] = field(default_factory=dict)
    allowed_users: list[str] | None = None  # token mode: users whose personal access tokens may call it too
    loaded_at: float = field(default_factory=time.monotonic)
