"""Azure AI model inference on an endpoint's base URL (its scoring URI without `/score`), as `azure-ai-inference`'s
`ChatCompletionsClient(endpoint=<base URL>, credential=AzureKeyCredential(key))` calls it:

    POST /endpoints/NAME/chat/completions?api-version=...   OpenAI's chat body and answer, streaming included
    GET  /endpoints/NAME/info?api-version=...               {"model_name", "model_type": "chat_completion",
                                                              "model_provider_name": "forgeflow"}

The key is read as that client sends it (`Authorization: Bearer <key>`, and `api-key: <key>`); any api-version is
taken, as the body is the same in each. Errors are in Azure's shape, which azure-core shows as "(code) message".
A stream that fails after its first chunk ends with OpenAI's error event, and the connection is closed before
the body's end: the client skips an event with no choices, but azure-core raises on an incomplete body.

Parameters. Azure's request has its own set (AZURE_CHAT_PARAMETERS); anything else in the body is an extra
parameter, handled as the `extra-parameters` header says, as Azure does:

    error (no header)  a 400 naming it
    drop               left out before the model sees it: the client asked for that
    pass-through       handed to the model, which must honour it (forgeflow's chat contract takes it), else a
                       400 naming it; the client's `model_extras` sends this

A parameter of Azure's own set that forgeflow cannot honour is a 400 naming it whatever the header says: nothing
is ignored that the client did not ask to have dropped.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from forgeflow.chat import ChatCompletionRequest, parse_chat_completion_request
from forgeflow.errors import ForgeflowError, InvalidInput
from forgeflow.serving import routing
from forgeflow.serving.forwarding import DEPLOYMENT_HEADER, ERRORS, Call, authorized_config, handle
from forgeflow.serving.schemas import AzureError, ChatCompletion, Dialect, ModelInfo, body_of, error_responses

# The chat completions parameters of Azure AI model inference (api-version 2024-05-01-preview).
AZURE_CHAT_PARAMETERS = frozenset({"messages", "model", "stream", "frequency_penalty", "presence_penalty",
                                   "temperature", "top_p", "max_tokens", "response_format", "stop", "tools",
                                   "tool_choice", "seed"})
EXTRA_HEADER = "extra-parameters"
ERROR, DROP, PASS_THROUGH = "error", "drop", "pass-through"
MODEL_TYPE = "chat_completion"  # azure-ai-inference's ModelType.CHAT_COMPLETION
PROVIDER = "forgeflow"

router = APIRouter(tags=["azure"])

_PARAMETERS = [
    {"name": "api-version", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "Any version: the body is the same in each."},
    {"name": EXTRA_HEADER, "in": "header", "required": False,
     "schema": {"type": "string", "enum": [ERROR, DROP, PASS_THROUGH], "default": ERROR},
     "description": "What happens to a body parameter Azure's request does not name: refused (error), left out "
                    "(drop) or handed to the model, which must honour it (pass-through)."},
    {"name": DEPLOYMENT_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
     "description": "The deployment to use, whatever the traffic split."},
]


@router.post("/endpoints/{endpoint}/chat/completions", response_model=ChatCompletion,
             responses=error_responses(AzureError, ERRORS),
             openapi_extra=body_of(ChatCompletionRequest) | {"parameters": _PARAMETERS})
async def chat_completions(endpoint: str, request: Request) -> Response:
    """Azure AI model inference chat completions: OpenAI's chat body and answer (`"stream": true` answers
    server-sent events ending `data: [DONE]`; a failed stream's connection is closed before its end, so the
    client raises), routed like /v1/chat/completions."""
    return await handle(request, endpoint, "/v1/chat/completions", parse_chat_completion_request, Dialect.AZURE,
                        adapt=extra_parameters)


@router.get("/endpoints/{endpoint}/info", response_model=ModelInfo, openapi_extra={"parameters": _PARAMETERS[::2]},
            responses=error_responses(AzureError, {401: ERRORS[401], 404: ERRORS[404]}))
async def info(endpoint: str, request: Request) -> Response:
    """The model behind the endpoint: that of the deployment the header names, else of the one with the most
    traffic. `model_name` is the deployed model (a registered `name:version`, a catalog name or a folder's name; of
    several fine-tunes, the default one)."""
    call = Call(request, endpoint, Dialect.AZURE)
    try:
        cfg = await authorized_config(call)
        call.deployment = routing.main_deployment(cfg, request.headers.get(DEPLOYMENT_HEADER))
        dep = cfg.deployments[call.deployment]
        if dep.serves_flow:
            raise InvalidInput(f"deployment {dep.name!r} serves a flow, not a model: send the flow's inputs to "
                               "/score", field=DEPLOYMENT_HEADER)
    except ForgeflowError as e:
        return call.fail(e)
    # several fine-tunes on one base: the default one (the first), which a request naming none gets
    name = next(iter(dep.adapters)) if dep.adapters else PurePath(dep.model_ref).name
    return JSONResponse({"model_name": name, "model_type": MODEL_TYPE,
                         "model_provider_name": PROVIDER}, headers=call.headers())


def extra_parameters(request: Request, body: Any) -> dict[str, Any] | None:
    """The body as the model gets it under the `extra-parameters` header (None: as it came), or a 400 naming the
    first parameter that cannot be honoured."""
    given = request.headers.get(EXTRA_HEADER)
    mode = (given or ERROR).strip().lower()
    if mode not in (ERROR, DROP, PASS_THROUGH):
        raise InvalidInput(f"header {EXTRA_HEADER} must be {ERROR}, {DROP} or {PASS_THROUGH}, got {given!r}",
                           field=EXTRA_HEADER)
    if not isinstance(body, dict):
        return None  # the contract's parse says what is wrong with it
    honoured = frozenset(ChatCompletionRequest.model_fields)
    dropped = []
    for key in body:
        if key in AZURE_CHAT_PARAMETERS and key not in honoured:
            raise InvalidInput(f"forgeflow cannot honour {key!r} yet: leave it out (of Azure's parameters it takes "
                               f"{', '.join(sorted(AZURE_CHAT_PARAMETERS & honoured))})", field=key)
        if key in AZURE_CHAT_PARAMETERS:
            continue
        if mode == ERROR:
            raise InvalidInput(f"{key!r} is not a parameter of Azure AI model inference's chat completions: send "
                               f"the header '{EXTRA_HEADER}: {PASS_THROUGH}' to hand it to the model (azure-ai-"
                               f"inference's model_extras does), or '{EXTRA_HEADER}: {DROP}' to have it left out",
                               field=key)
        if mode == DROP:
            dropped.append(key)
        elif key not in honoured:
            raise InvalidInput(f"the model cannot honour the extra parameter {key!r}: leave it out, or send "
                               f"'{EXTRA_HEADER}: {DROP}' to have it left out (forgeflow's chat completions take "
                               f"{', '.join(sorted(honoured - AZURE_CHAT_PARAMETERS))} beyond Azure's)", field=key)
    return {k: v for k, v in body.items() if k not in dropped} if dropped else None
