"""Request and response bodies of the Azure ML online-endpoint chat contract, and OpenAI's chat API.

    {"input_data": {"input_string": [{"role": "user", "content": "..."}],
                    "parameters": {"temperature": 0.7, "top_p": 0.9, "do_sample": true, "max_new_tokens": 128}},
     "params": {}}
    -> {"output": "<assistant text>"}

Unknown keys are accepted and ignored, as Azure does; known ones are validated and every error
names its field path (`input_data.input_string[1].role`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forgeflow.errors import InvalidInput

MAX_NEW_TOKENS = 4096
ROLES = ("system", "user", "assistant")

Temperature = Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, strict=True, allow_inf_nan=False)]
NewTokens = Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS, strict=True)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    """One chat turn."""

    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(strict=True)]


class ScoreParameters(_Open):
    """Generation settings; unset ones take the server's defaults."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    do_sample: Annotated[bool, Field(strict=True)] | None = None
    max_new_tokens: NewTokens | None = None


class InputData(_Open):
    """The conversation and its generation settings."""

    input_string: Annotated[list[ChatMessage], Field(min_length=1)]
    parameters: ScoreParameters = Field(default_factory=ScoreParameters)


class ScoreRequest(_Open):
    """The body of POST /score; top-level `params` is accepted and ignored."""

    input_data: InputData
    params: dict[str, Any] | None = None

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.input_data.input_string]

    def generation_kwargs(self, *, default_max_new_tokens: int = 256) -> dict[str, Any]:
        """Keyword arguments for ChatGenerator.generate."""
        p = self.input_data.parameters
        return {
            "temperature": p.temperature,
            "top_p": p.top_p,
            "do_sample": p.do_sample,
            "max_new_tokens": p.max_new_tokens or default_max_new_tokens,
        }


class ScoreResponse(BaseModel):
    """The body POST /score answers."""

    output: str


class StreamOptions(_Open):
    """OpenAI's stream_options: include_usage adds a last chunk with the token counts."""

    include_usage: Annotated[bool, Field(strict=True)] = False


class ChatCompletionRequest(_Open):
    """The body of POST /v1/chat/completions (the fields forgeflow uses)."""

    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: NewTokens | None = None
    max_completion_tokens: NewTokens | None = None
    temperature: Annotated[float, Field(ge=0, le=2, strict=True, allow_inf_nan=False)] | None = None
    top_p: TopP | None = None
    seed: Annotated[int, Field(strict=True)] | None = None
    stream: Annotated[bool, Field(strict=True)] = False
    stop: Annotated[str, Field(strict=True, min_length=1)] | Annotated[
        list[Annotated[str, Field(strict=True, min_length=1)]], Field(max_length=4)] | None = None
    stream_options: StreamOptions | None = None

    @property
    def chat(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def generation_kwargs(self, *, default_max_new_tokens: int = 256) -> dict[str, Any]:
        temperature = 1.0 if self.temperature is None else self.temperature
        return {
            "temperature": temperature,
            "top_p": self.top_p,
            "do_sample": temperature > 0,
            "max_new_tokens": self.max_completion_tokens or self.max_tokens or default_max_new_tokens,
            "seed": self.seed,
            "stop": self.stop,
        }

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


_FIELD_RULES = {
    "temperature": "must be a number >= 0",
    "top_p": "must be a number > 0 and <= 1",
    "do_sample": "must be true or false",
    "max_new_tokens": f"must be an integer from 1 to {MAX_NEW_TOKENS}",
    "max_tokens": f"must be an integer from 1 to {MAX_NEW_TOKENS}",
    "max_completion_tokens": f"must be an integer from 1 to {MAX_NEW_TOKENS}",
    "role": f"must be one of {', '.join(ROLES)}",
    "content": "must be a string",
    "params": "must be an object",
    "parameters": "must be an object",
    "input_data": "must be an object",
    "model": "must be a string",
    "seed": "must be an integer",
    "stream": "must be true or false",
    "stop": "must be a non-empty string or a list of at most 4 of them",
    "stream_options": "must be an object",
    "include_usage": "must be true or false",
}


def parse_score_request(body: Any) -> ScoreRequest:
    """Validate a /score body, raising InvalidInput that names the wrong field."""
    return _parse(ScoreRequest, body, list_field="input_string")


def parse_chat_completion_request(body: Any) -> ChatCompletionRequest:
    """Validate a /v1/chat/completions body, raising InvalidInput that names the wrong field."""
    return _parse(ChatCompletionRequest, body, list_field="messages")


def _parse(model: type[BaseModel], body: Any, *, list_field: str) -> Any:
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _translate(exc, list_field) from None


def _translate(exc: ValidationError, list_field: str) -> InvalidInput:
    """Turn pydantic's first error into one sentence naming the field path."""
    error = exc.errors(include_url=False)[0]
    loc = list(error["loc"])
    # Pydantic reports the branch of `X | None` it tried (e.g. "float"); drop those segments.
    loc = [part for part in loc if isinstance(part, int) or not _is_type_tag(part)]
    path = _path(loc)
    if not loc:
        return InvalidInput("the request body must be a JSON object")
    last = loc[-1]
    if last == list_field:
        return InvalidInput(f"{path} must be a non-empty list of messages", field=path)
    if error["type"] == "missing":
        return InvalidInput(f"{path} is required", field=path)
    if isinstance(last, int):
        return InvalidInput(f"{path} must be an object with role and content", field=path)
    if last == "temperature" and "le" in str(error.get("ctx", {})):
        return InvalidInput(f"{path} must be a number from 0 to 2", field=path)
    rule = _FIELD_RULES.get(str(last), "is not valid")
    return InvalidInput(f"{path} {rule}", field=path)


def _is_type_tag(part: Any) -> bool:
    return part in {"float", "int", "bool", "str", "dict[str,any]", "list[ChatMessage]"} or (
        isinstance(part, str) and ("[" in part or part.startswith("constrained-"))
    )


def _path(loc: list) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
