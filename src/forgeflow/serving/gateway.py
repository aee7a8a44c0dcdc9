"""The scoring gateway: checks the endpoint key, validates the Azure scoring body, picks a
deployment (header or traffic split) and a ready instance, and forwards the request.

Status codes follow Azure ML online endpoints: 400 bad body, 401 key, 404 no deployment with
traffic, 408 past request_timeout_ms, 413 too large, 424 model server failed, 503 no ready
instance.
"""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from forgeflow.errors import ForgeflowError, InvalidInput, NotFound, Unauthorized
from forgeflow.serving.endpoints import EndpointService

MAX_BODY_BYTES = 1024 * 1024
DEPLOYMENT_HEADER = "azureml-model-deployment"

router = APIRouter()


def _error(status: int, message: str, *, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": {401: "Unauthorized", 404: "NotFound", 408: "RequestTimeout", 413: "PayloadTooLarge",
                                      424: "ModelError", 503: "ServiceUnavailable"}.get(status, "InvalidInput"),
                            "message": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("api-key")


def _choose(svc: EndpointService, endpoint: str, request: Request) -> str:
    wanted = request.headers.get(DEPLOYMENT_HEADER)
    deployments = {d["name"] for d in svc.store.select("deployments", {"endpoint": endpoint})}
    if wanted:
        if wanted not in deployments:
            raise NotFound(f"endpoint {endpoint!r} has no deployment {wanted!r}")
        return wanted
    traffic = {k: v for k, v in svc.show_endpoint(endpoint)["traffic"].items() if v > 0 and k in deployments}
    if not traffic:
        raise NotFound(f"endpoint {endpoint!r} has no deployment with traffic: set it with "
                       f"forgeflow online-endpoint update --name {endpoint} --traffic NAME=100")
    names = list(traffic)
    return random.choices(names, weights=[traffic[n] for n in names])[0]


async def _authorize(request: Request, endpoint: str) -> EndpointService:
    svc: EndpointService = request.app.state.ff.endpoints
    svc._endpoint_row(endpoint)
    if not svc.check_key(endpoint, _presented_key(request)):
        raise Unauthorized("missing or wrong key: send 'Authorization: Bearer <key>' "
                           f"(see: forgeflow online-endpoint get-credentials --name {endpoint})")
    return svc


async def _read_json(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _TooLarge()
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise _TooLarge()
    try:
        return json.loads(raw or b"null")
    except ValueError as e:
        raise InvalidInput(f"the body is not valid JSON: {e}") from None


class _TooLarge(Exception):
    pass


async def _forward(request: Request, endpoint: str, path: str, body: Any) -> Response:
    svc: EndpointService = request.app.state.ff.endpoints
    deployment = _choose(svc, endpoint, request)
    dep = svc.store.get("deployments", endpoint=endpoint, name=deployment)
    headers = {DEPLOYMENT_HEADER: deployment}
    ready = svc.supervisor.ready_instances(endpoint, deployment)
    if not ready:
        return _error(503, f"deployment {deployment!r} has no ready instance (state {dep['state']})", headers=headers)
    inst = min(ready, key=lambda i: i.inflight)
    timeout_s = dep["request_settings"].get("request_timeout_ms", 90_000) / 1000
    client: httpx.AsyncClient = request.app.state.ff.http
    inst.inflight += 1
    try:
        resp = await client.post(f"{inst.url}{path}", json=body, timeout=timeout_s)
    except httpx.TimeoutException:
        return _error(408, f"the model did not answer within request_timeout_ms={int(timeout_s * 1000)}", headers=headers)
    except httpx.HTTPError as e:
        headers["ms-azureml-model-error-reason"] = "model_server_unreachable"
        return _error(424, f"the model server of deployment {deployment!r} failed: {type(e).__name__}", headers=headers)
    finally:
        inst.inflight -= 1
    if resp.status_code >= 500:
        headers["ms-azureml-model-error-reason"] = "model_error"
        try:
            reason = resp.json().get("message", resp.text)
        except ValueError:
            reason = resp.text
        return _error(424, f"the model server failed: {reason}"[:1000], headers=headers)
    for h in ("x-forgeflow-prompt-tokens", "x-forgeflow-completion-tokens"):
        if h in resp.headers:
            headers[h] = resp.headers[h]
    return Response(resp.content, status_code=resp.status_code, media_type="application/json", headers=headers)


async def _handle(request: Request, endpoint: str, path: str, validate) -> Response:
    try:
        await _authorize(request, endpoint)
        body = await _read_json(request)
        validate(body)
        return await _forward(request, endpoint, path, body)
    except _TooLarge:
        return _error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    except ForgeflowError as e:
        return _error(e.status_code, e.message, field=e.field)


def _validate_score(body: Any) -> None:
    from forgeflow.serving.scoring import parse_score_request

    parse_score_request(body)


def _validate_chat(body: Any) -> None:
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise InvalidInput("messages must be a non-empty list", field="messages")


@router.post("/endpoints/{endpoint}/score", tags=["scoring"])
async def score(endpoint: str, request: Request) -> Response:
    """Azure ML online-endpoint scoring: `{"input_data": {"input_string": [...], "parameters": {...}}}`."""
    return await _handle(request, endpoint, "/score", _validate_score)


@router.post("/endpoints/{endpoint}/v1/chat/completions", tags=["scoring"])
async def chat_completions(endpoint: str, request: Request) -> Response:
    """OpenAI-compatible chat completions on the same endpoint and key."""
    return await _handle(request, endpoint, "/v1/chat/completions", _validate_chat)


@router.get("/endpoints/{endpoint}/v1/models", tags=["scoring"])
async def models(endpoint: str, request: Request) -> Response:
    try:
        svc = await _authorize(request, endpoint)
    except ForgeflowError as e:
        return _error(e.status_code, e.message, field=e.field)
    data = [{"id": d["name"], "object": "model", "owned_by": "forgeflow", "root": d["model"]}
            for d in svc.list_deployments(endpoint)]
    return JSONResponse({"object": "list", "data": data})
