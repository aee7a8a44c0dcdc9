"""Online endpoints and deployments, and the gateway's metrics (control plane; scoring lives in
serving.gateway)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from forgeflow.api.guard import SCORING_MAX_BYTES
from forgeflow.api.security import CONTRIBUTOR, READER, audit_detail, audit_secret_read, audit_target, services
from forgeflow.errors import InvalidInput
from forgeflow.names import client_path
from forgeflow.serving import specs
from forgeflow.serving.specs import FLOW_RUNTIME

router = APIRouter(tags=["endpoints"])
metrics_router = APIRouter(tags=["server"])  # mounted at the root, beside the gateway
_PORT_DOC = ("A port of its own, in the range of the server that takes the request (forgeflow serve --endpoint-ports, "
             "9000-9999 by default), on which every server also listens: http://HOST:PORT/score is then this "
             "endpoint's scoring URL, its path exactly /score as Azure's (port_scoring_uri).")


class EndpointCreate(BaseModel):
    name: str = Field(description="3-32 characters, a letter first, letters, digits and dashes.")
    auth_mode: str = Field("key", description="'key': primary and secondary keys; 'token': expiring tokens from get-credentials.")
    description: str | None = None
    max_body_bytes: int | None = Field(None, ge=1024, le=SCORING_MAX_BYTES,
                                       description="Largest request body (bytes); the server default when unset.")
    allowed_users: list[str] | None = Field(None, description="auth_mode 'token' only: users whose personal access "
                                            "tokens may also call the endpoint (null: none).")
    port: int | None = Field(None, strict=True, description=_PORT_DOC)


class EndpointUpdate(BaseModel):
    traffic: dict[str, int] | None = Field(None, description="Deployment name -> percent; totals 0 or 100.")
    mirror_traffic: dict[str, int] | None = Field(None, description="One deployment -> percent (at most 50) of live "
                                                  "traffic copied to it; its answers are discarded.")
    description: str | None = None
    max_body_bytes: int | None = Field(None, ge=1024, le=SCORING_MAX_BYTES,
                                       description="Largest request body in bytes.")
    auth_mode: str | None = Field(None, description="Switch between 'key' and 'token'; both keys are replaced, so "
                                  "no credential of the old mode keeps working.")
    allowed_users: list[str] | None = Field(None, description="auth_mode 'token' only: users whose personal access "
                                            "tokens may also call the endpoint; null clears the list.")
    port: int | None = Field(None, strict=True, description=_PORT_DOC + " Null: none; left out, it stays.")


class RegenerateKeys(BaseModel):
    key_type: str = Field("primary", description="primary or secondary.")


class DeploymentCreate(BaseModel, extra="forbid"):
    name: str = Field(description="Deployment name, e.g. blue.")
    model: Any = Field(None, json_schema_extra={"anyOf": [{"type": "string"}, {"type": "array",
                                                                            "items": {"type": "string"}},
                                                          {"type": "null"}]},
                       description="Registered model name:version, or a base model name; or "
                                          "a list of registered LoRA fine-tunes of one base model, served together "
                                          "on that base (a request's `model` picks one).")
    flow: str | None = Field(None, description="A flow folder (flow.dag.yaml) to serve instead of a model.")
    instance_count: int | None = Field(None, description="Model-server processes behind the gateway: 1 by default; "
                                       "with autoscaling, from min_instances to max_instances (default "
                                       "max(min_instances, 1)).")
    runtime: str = Field("transformers", description="Serving runtime.")
    request_settings: dict[str, int] = Field(default_factory=dict, description="request_timeout_ms, max_concurrent_requests_per_instance.")
    liveness_probe: dict[str, float] | None = Field(None, description="initial_delay, period, timeout (seconds), failure_threshold, success_threshold.")
    readiness_probe: dict[str, float] | None = Field(None, description="initial_delay, period, timeout (seconds), failure_threshold, success_threshold.")
    scale_settings: dict[str, Any] | None = Field(None, description="type: default (instance_count instances) or "
                                                  "target_utilization: min_instances (0 scales to zero), "
                                                  "max_instances, polling_interval, target_utilization_percentage, "
                                                  "idle_time_before_scale_down, target_latency_ms.")
    compute: str = Field("local", description="Compute target the instances run on: local (this machine) or a ray "
                         "target, which places each instance on a cluster node.")
    resources: dict[str, Any] | None = Field(None, description="What each instance reserves on its node (cluster "
                                             "targets only): cpus (default 1), gpus (default 0), memory_mb (default "
                                             "0, none reserved).")
    gguf_type: str | None = Field(None, description="Runtime llamacpp: the GGUF weights served, f16, q8_0 or q4_k_m "
                                  "(the default).")


class DeploymentUpdate(BaseModel, extra="forbid"):
    set: dict[str, Any] = Field(description="FIELD.PATH -> value, as `az ml online-deployment update --set`: model, "
                                "instance_count, runtime, request_settings.*, liveness_probe.*, readiness_probe.*, "
                                "scale_settings.*, compute, resources.*, gguf_type; model may be a list of "
                                "fine-tunes of one base (it replaces the list).")


@router.post("/endpoints", status_code=201, dependencies=CONTRIBUTOR)
def create_endpoint(body: EndpointCreate, request: Request, ff=Depends(services)) -> dict:
    audit_target(request, body.name)
    return ff.endpoints.create_endpoint(body.name, body.auth_mode, body.description, body.max_body_bytes,
                                        allowed_users=body.allowed_users, port=body.port)


@router.get("/endpoints", dependencies=READER)
def list_endpoints(ff=Depends(services)) -> list[dict]:
    return ff.endpoints.list_endpoints()


@router.get("/endpoints/{name}", dependencies=READER)
def show_endpoint(name: str, ff=Depends(services)) -> dict:
    """The endpoint, with its running or last rollout in short (see /endpoints/{name}/rollouts/current)."""
    return ff.endpoints.show_endpoint(name) | {"rollout": ff.rollouts.summary(name)}


@router.patch("/endpoints/{name}", dependencies=CONTRIBUTOR)
def update_endpoint(name: str, body: EndpointUpdate, ff=Depends(services)) -> dict:
    # allowed_users or port given as null clears it; left out, it stays as it is
    given = {k: getattr(body, k) for k in ("allowed_users", "port") if k in body.model_fields_set}
    if body.traffic is not None:
        ff.rollouts.refuse_traffic_change(name)
    return ff.endpoints.update_endpoint(name, traffic=body.traffic, mirror_traffic=body.mirror_traffic,
                                        description=body.description, max_body_bytes=body.max_body_bytes,
                                        auth_mode=body.auth_mode, **given)


@router.delete("/endpoints/{name}", dependencies=CONTRIBUTOR)
def delete_endpoint(name: str, ff=Depends(services)) -> dict:
    ff.endpoints.delete_endpoint(name)
    return {"deleted": name}


@router.get("/endpoints/{name}/credentials", dependencies=CONTRIBUTOR)
def credentials(name: str, request: Request, ff=Depends(services)) -> dict:
    """The endpoint's keys (or a fresh token): a read of secrets, so it is audited."""
    audit_secret_read(request, read="credentials")
    return ff.endpoints.credentials(name)


@router.post("/endpoints/{name}/regenerate-keys", dependencies=CONTRIBUTOR)
def regenerate_keys(name: str, body: RegenerateKeys, request: Request, ff=Depends(services)) -> dict:
    """A new primary or secondary key; the old one fails at once."""
    keys = ff.endpoints.regenerate_keys(name, body.key_type)
    audit_detail(request, key_type=body.key_type)  # which key, never the key
    return keys


@router.post("/endpoints/{name}/deployments", status_code=201, dependencies=CONTRIBUTOR)
def create_deployment(name: str, body: DeploymentCreate, request: Request, ff=Depends(services)) -> dict:
    from forgeflow.registry.resolve import resolve_models

    audit_target(request, f"{name}/{body.name}")
    if (body.model is None) == (not body.flow):
        raise InvalidInput("give exactly one of model or flow", field="model")
    runtime = body.runtime
    if body.flow:
        from forgeflow.flows.loader import load_flow

        flow = load_flow(client_path(body.flow, "flow"))
        ref, path, adapters, runtime = f"flow:{flow.dir}", flow.dir, {}, FLOW_RUNTIME
    else:
        ref, path, adapters = resolve_models(specs.model_refs(body.model))
    return ff.endpoints.create_deployment(name, body.name, ref, path, body.instance_count, runtime,
                                          body.request_settings, body.liveness_probe, body.readiness_probe,
                                          scale_settings=body.scale_settings, compute=body.compute,
                                          resources=body.resources, gguf_type=body.gguf_type, adapters=adapters)


@router.get("/endpoints/{name}/deployments", dependencies=READER)
def list_deployments(name: str, ff=Depends(services)) -> list[dict]:
    return ff.endpoints.list_deployments(name)


@router.get("/endpoints/{name}/deployments/{deployment}", dependencies=READER)
def show_deployment(name: str, deployment: str, ff=Depends(services)) -> dict:
    return ff.endpoints.show_deployment(name, deployment)


@router.patch("/endpoints/{name}/deployments/{deployment}", dependencies=CONTRIBUTOR)
def update_deployment(name: str, deployment: str, body: DeploymentUpdate, ff=Depends(services)) -> dict:
    """Change fields; a new model (or list of fine-tunes), GGUF type, runtime, instance count, compute or resources
    rolls instances without dropping requests."""
    from forgeflow.registry.resolve import resolve_models

    ff.rollouts.refuse_deployment_change(name, deployment, body.set)
    return ff.endpoints.update_deployment(name, deployment, body.set, resolve=resolve_models)


@router.delete("/endpoints/{name}/deployments/{deployment}", dependencies=CONTRIBUTOR)
def delete_deployment(name: str, deployment: str, ff=Depends(services)) -> dict:
    ff.endpoints.delete_deployment(name, deployment)
    return {"deleted": deployment}


@router.get("/endpoints/{name}/deployments/{deployment}/logs", dependencies=READER)
def deployment_logs(name: str, deployment: str, lines: int = Query(100, ge=1, le=100_000),
                    ff=Depends(services)) -> dict:
    return {"text": ff.endpoints.deployment_logs(name, deployment, lines)}


@metrics_router.get("/metrics", response_class=PlainTextResponse, dependencies=READER)
async def metrics(ff=Depends(services)) -> PlainTextResponse:
    """Prometheus metrics per endpoint and deployment (needs a token of any role as a bearer token)."""
    return PlainTextResponse(ff.endpoints.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
