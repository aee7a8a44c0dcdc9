"""Response bodies of the endpoint routes, for the OpenAPI document (`/openapi.json`).

Requests are validated by the chat contract (`forgeflow.chat`, so a 400 names the field and the body
limit is checked before parsing); these models only describe what the routes answer.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from forgeflow.chat import ChatCompletionRequest, ScoreRequest, ScoreResponse


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
    `chat.completion.chunk` objects, one per `data:` line, ending with `data: [DONE]`."""

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "forgeflow"
    root: str | None = None


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
                                      (ScoreResponse, "serialization")],
                                     ref_template="#/components/schemas/{model}")
        doc.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
