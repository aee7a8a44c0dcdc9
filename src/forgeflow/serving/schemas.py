"""Response bodies of the endpoint routes, for the OpenAPI document (`/openapi.json`), and the error shape of
each route's dialect.

Requests are validated by the chat contract (`forgeflow.chat`, so a 400 names the field and the body
limit is checked before parsing); these models only describe what the routes answer.

An endpoint speaks three dialects, and every error a route answers (the guard's, the gateway's, one an instance
answered) is in its dialect's shape, so each client shows the message:

    score   Azure ML's /score         {"error": CLASS, "message": ..., "field": ...}        (forgeflow's own)
    openai  /v1/...                   {"error": {"message", "type", "param", "code"}}       (OpenAI's clients)
    azure   /chat/completions, /info  {"error": {"code", "message", "status", "target"?}}  (azure-core's reading)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from forgeflow.chat import ChatCompletionRequest, CompletionRequest, ScoreRequest, ScoreResponse, openai_error
from forgeflow.errors import ForgeflowError

AZURE_PATHS = ("/chat/completions", "/info")  # Azure AI model inference, on the endpoint's base URL


class Dialect(StrEnum):
    """Which API a scoring route speaks, and so the shape of its errors."""

    SCORE = "score"
    OPENAI = "openai"
    AZURE = "azure"


def dialect_of(path: str) -> Dialect:
    """The dialect of a scoring path: `/endpoints/NAME/v1/...` is OpenAI's, `/endpoints/NAME/chat/completions` and
    `/endpoints/NAME/info` Azure AI model inference's, anything else Azure ML's /score. A path without the
    `/endpoints/NAME` prefix (an endpoint reached on a host or port of its own) is read the same way."""
    if path.startswith("/endpoints/"):
        path = "/" + path[len("/endpoints/"):].partition("/")[2]
    if path == "/v1" or path.startswith("/v1/"):
        return Dialect.OPENAI
    if path in AZURE_PATHS:
        return Dialect.AZURE
    return Dialect.SCORE


def error_body(dialect: Dialect, exc: ForgeflowError) -> dict[str, Any]:
    """The JSON body of an error in the dialect's shape."""
    if dialect == Dialect.OPENAI:
        return openai_error(exc)
    if dialect == Dialect.AZURE:
        # azure-core's HttpResponseError reads code and message (shown as "(code) message") and target
        error: dict[str, Any] = {"code": type(exc).__name__, "message": exc.message, "status": exc.status_code}
        if exc.field:
            error["target"] = exc.field
        return {"error": error}
    return exc.to_dict()


class ErrorBody(BaseModel):
    """An error on /score: which kind, a readable message, and the field at fault if any."""

    error: str
    message: str
    field: str | None = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """An error on the OpenAI routes, in OpenAI's shape."""

    error: OpenAIErrorDetail


class AzureErrorDetail(BaseModel):
    code: str
    message: str
    status: int
    target: str | None = None


class AzureError(BaseModel):
    """An error on the Azure AI model inference routes (azure-core shows "(code) message")."""

    error: AzureErrorDetail


class ToolCallFunction(BaseModel):
    name: str
    arguments: str  # a JSON object, as text


class ToolCall(BaseModel):
    id: str
    type: str = "function"
    function: ToolCallFunction


class AssistantMessage(BaseModel):
    role: str = "assistant"
    content: str | None  # null when the answer is tool calls alone (finish_reason "tool_calls")
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None = None  # {"content": [{"token", "logprob", "bytes", "top_logprobs"}]}
    finish_reason: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """A chat completion. With `"stream": true` the answer is instead `text/event-stream` of
    `chat.completion.chunk` objects, one per `data:` line, ending with `data: [DONE]` (a stream that fails
    after its first chunk ends with an `{"error": {...}}` event instead)."""

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class Completion(BaseModel):
    """A text completion (`/v1/completions`: the prompt as it is, no chat template). With `"stream": true`, server-sent
    events of `text_completion` objects ending with `data: [DONE]`."""

    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class ModelCard(BaseModel):
    """A deployment, or a fine-tune one serves on its base, as an OpenAI model: pass its id as `model` to route to
    it."""

    id: str
    object: str = "model"
    created: int
    owned_by: str = "forgeflow"
    root: str | None = None
    parent: str | None = None  # a fine-tune's deployment


class ModelInfo(BaseModel):
    """Azure AI model inference's `GET /info`: the model of the deployment that serves the endpoint's requests."""

    model_name: str
    model_type: str = "chat_completion"  # azure-ai-inference's ModelType.CHAT_COMPLETION
    model_provider_name: str = "forgeflow"


class ModelList(BaseModel):
    """The deployments of an endpoint, as OpenAI models (pass one as `model` to pick it)."""

    object: str = "list"
    data: list[ModelCard]


def body_of(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra that documents a request body the route reads itself."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def error_responses(model: type[BaseModel], codes: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": model, "description": text} for code, text in codes.items()}


def install_openapi(app: FastAPI) -> None:
    """Add the request schemas the gateway routes reference to the app's OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _, defs = models_json_schema([(ScoreRequest, "validation"), (ChatCompletionRequest, "validation"),
                                      (CompletionRequest, "validation"), (ScoreResponse, "serialization")],
                                     ref_template="#/components/schemas/{model}")
        doc.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
