"""The scoring gateway's routes: what each client of an endpoint calls, on top of the forwarding core
(serving/forwarding.py), which checks the key, validates, routes, admits and forwards.

    POST /endpoints/NAME/score                  Azure ML online endpoint scoring (and a flow deployment's inputs)
    POST /endpoints/NAME/v1/chat/completions    OpenAI chat completions, streaming included
    POST /endpoints/NAME/v1/completions         OpenAI text completions (the prompt as it is, no chat template)
    GET  /endpoints/NAME/v1/models[/ID]         the endpoint's deployments and the fine-tunes they serve, as OpenAI
                                                models
    POST /endpoints/NAME/chat/completions       Azure AI model inference (serving/azure_inference.py)
    GET  /endpoints/NAME/info                   Azure AI model inference's model info

A deployment is picked by the `azureml-model-deployment` header, else by a request's `model` when it names a
deployment or a fine-tune exactly one deployment serves (when the body names none, as /score's never does, the `x-forgeflow-model` header, on any route), else by the
endpoint's traffic split: a `model` that names no deployment (Prompt flow files name
models such as gpt-4) is served by the traffic split, not refused. Every error on /v1 is in OpenAI's shape, on the
Azure AI model inference routes in Azure's, on /score in forgeflow's own (`schemas.error_body`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from forgeflow.chat import (ChatCompletionRequest, CompletionRequest, ScoreRequest, ScoreResponse,
                            parse_chat_completion_request, parse_completion_request, parse_score_request)
from forgeflow.errors import ForgeflowError, InvalidInput, NotFound
from forgeflow.serving import azure_inference, routing
from forgeflow.serving.forwarding import ERRORS, Call, authorized_config, handle
from forgeflow.serving.records import EndpointConfig
from forgeflow.serving.schemas import (ChatCompletion, Completion, Dialect, ErrorBody, ModelCard, ModelList,
                                       OpenAIError, body_of, dialect_of, error_body, error_responses)

router = APIRouter()

_SCORE_DOC = {"responses": error_responses(ErrorBody, ERRORS), "openapi_extra": body_of(ScoreRequest)}
_CHAT_DOC = {"responses": error_responses(OpenAIError, ERRORS), "openapi_extra": body_of(ChatCompletionRequest)}
_MODELS_DOC = {"responses": error_responses(OpenAIError, {401: ERRORS[401], 404: "no such deployment"})}


@router.post("/endpoints/{endpoint}/score", tags=["scoring"], response_model=ScoreResponse, **_SCORE_DOC)
async def score(endpoint: str, request: Request) -> Response:
    """Azure ML online-endpoint scoring: `{"input_data": {"input_string": [...], "parameters": {...}}}`
    answers `{"output": "..."}`. Send `azureml-model-deployment: NAME` to pick a deployment."""
    return await handle(request, endpoint, "/score", parse_score_request, Dialect.SCORE)


@router.post("/endpoints/{endpoint}/v1/chat/completions", tags=["openai"], response_model=ChatCompletion, **_CHAT_DOC)
async def chat_completions(endpoint: str, request: Request) -> Response:
    """OpenAI chat completions on the same endpoint and key; `"stream": true` answers server-sent
    events ending `data: [DONE]`. A `model` naming a deployment routes to it; any other `model` is served by
    the endpoint's traffic split."""
    return await handle(request, endpoint, "/v1/chat/completions", parse_chat_completion_request, Dialect.OPENAI)


@router.post("/endpoints/{endpoint}/v1/completions", tags=["openai"], response_model=Completion,
             responses=error_responses(OpenAIError, ERRORS), openapi_extra=body_of(CompletionRequest))
async def completions(endpoint: str, request: Request) -> Response:
    """OpenAI text completions: the `prompt` is encoded as it is, without the chat template (llama-index's
    `OpenAILike` and lm-eval's `local-completions` call it). Routed like chat completions."""
    return await handle(request, endpoint, "/v1/completions", parse_completion_request, Dialect.OPENAI)


@router.get("/endpoints/{endpoint}/v1/models", tags=["openai"], response_model=ModelList, **_MODELS_DOC)
async def models(endpoint: str, request: Request) -> Response:
    """The endpoint's deployments, and the fine-tunes each serves on its base, as OpenAI models."""
    call = Call(request, endpoint, Dialect.OPENAI)
    try:
        cfg = await authorized_config(call)
    except ForgeflowError as e:
        return call.fail(e)
    return JSONResponse({"object": "list", "data": _cards(cfg)})


@router.get("/endpoints/{endpoint}/v1/models/{model:path}", tags=["openai"], response_model=ModelCard, **_MODELS_DOC)
async def model(endpoint: str, model: str, request: Request) -> Response:
    """One deployment or fine-tune, as an OpenAI model; a name the endpoint does not serve is a 404."""
    call = Call(request, endpoint, Dialect.OPENAI)
    try:
        cfg = await authorized_config(call)
        cards = {card["id"]: card for card in _cards(cfg)}
        if model not in cards:
            raise NotFound(f"endpoint {endpoint!r} serves no model {model!r}; its models are its deployments and "
                           f"the fine-tunes they serve: {', '.join(cards) or 'none yet'} (a request's `model` that "
                           "names none is served by the traffic split)", field="model")
    except ForgeflowError as e:
        return call.fail(e)
    return JSONResponse(cards[model])


router.include_router(azure_inference.router)

# the scoring routes by their path under /endpoints/NAME, for the short path past FastAPI (api/scoring_path.py)
SCORING_ROUTES = {"/score": score, "/v1/chat/completions": chat_completions, "/v1/completions": completions,
                  "/chat/completions": azure_inference.chat_completions}

_ROUTES = {"/score": "POST", "/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/models": "GET",
           "/chat/completions": "POST", "/info": "GET"}


@router.api_route("/endpoints/{endpoint}/{rest:path}", include_in_schema=False,
                  methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def unknown(endpoint: str, rest: str, request: Request) -> Response:
    """What no route above serves: a 404, or a 405 for a known route asked with another method, in the dialect
    of the path (OpenAI's shape under /v1, so its clients show the message)."""
    path = f"/{rest}"
    method = _ROUTES.get(path) or ("GET" if path.startswith("/v1/models/") else None)
    if method:
        exc: ForgeflowError = InvalidInput(f"{request.method} is not allowed on {path}: use {method}",
                                           status_code=405)
        return JSONResponse(error_body(dialect_of(path), exc), status_code=405, headers={"Allow": method})
    exc = NotFound(f"endpoint {endpoint!r} serves no {path}: its routes are {', '.join(_ROUTES)} and "
                   "/v1/models/{id}")
    return JSONResponse(error_body(dialect_of(path), exc), status_code=404)


def _cards(cfg: EndpointConfig) -> list[dict[str, Any]]:
    """The endpoint's deployments as OpenAI models (by name), then each registered fine-tune they serve, once (id
    NAME:VERSION; `parent` the deployment a request naming it goes to, left out when several serve it and the
    traffic split decides)."""
    deployments = [d for _, d in sorted(cfg.deployments.items())]
    cards = [{"id": d.name, "object": "model", "created": _unix(d.created_at), "owned_by": "forgeflow",
              "root": d.model_ref} for d in deployments]
    listed = {d.name for d in deployments}
    for dep in deployments:
        for ref in dep.registered_models:
            if ref in listed:
                continue
            listed.add(ref)
            parent = routing.serving_model(cfg, ref)
            cards.append({"id": ref, "object": "model", "created": _unix(dep.created_at), "owned_by": "forgeflow",
                          "root": dep.model_ref, **({"parent": parent} if parent else {})})
    return cards


def _unix(stamp: str) -> int:
    try:
        return int(datetime.fromisoformat(stamp).timestamp())
    except (TypeError, ValueError):
        return 0
