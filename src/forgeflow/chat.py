"""The chat contract every hop speaks: messages and roles, generation parameters with one set of
defaults, Azure ML's scoring body, OpenAI's chat body, and the one typed `ChatRequest` each becomes.

    {"input_data": {"input_string": [{"role": "user", "content": "..."}],
                    "parameters": {"temperature": 0.7, "top_p": 0.9, "do_sample": true, "max_new_tokens": 128}},
     "params": {}}
    -> {"output": "<assistant text>"}

A body is validated once, where it arrives (`parse_score_request`, `parse_chat_completion_request`),
and converted once (`to_request`); runtimes take the `ChatRequest` as it is. Unknown keys are
accepted and ignored, as Azure does; known ones are validated and every error names its field path
(`input_data.input_string[1].role`). Python callers without a body build the request with
`chat_request`, clients build the scoring body with `score_body`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forgeflow.errors import InvalidInput

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)
DEFAULT_MAX_NEW_TOKENS = 256
MAX_NEW_TOKENS = 4096
MAX_STOPS = 4
_STOP_RULE = f"must be a non-empty string or a list of at most {MAX_STOPS} of them"


# -- the typed request ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked: greedy, or temperature / nucleus / top-k sampling with an optional seed;
    OpenAI's penalties and logit bias apply either way (to the logits before the pick)."""

    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    top_k: int = 0  # 0: no top-k cut
    frequency_penalty: float = 0.0  # minus penalty x (times the token was generated so far)
    presence_penalty: float = 0.0  # minus penalty once a token was generated at all
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit), bias in [-100, 100]


@dataclass(frozen=True)
class OutputFormat:
    """OpenAI's `response_format`: the answer is JSON (`json_object`) or JSON matching `schema`
    (`json_schema`), enforced by a grammar while decoding, never checked afterwards."""

    kind: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool = False


@dataclass(frozen=True)
class Tools:
    """OpenAI's `tools` and `tool_choice`: function definitions (`{"type": "function", "function": {...}}`)
    rendered through the model's chat template; `choice` is "auto", "required", "none" or a function's name.
    A call is generated under a grammar built from the chosen functions' parameter schemas."""

    definitions: tuple[dict[str, Any], ...]
    choice: str = "auto"
    parallel: bool = True


@dataclass(frozen=True)
class ChatRequest:
    """One validated chat request, as every runtime receives it.

    `messages` are chat turns for the model's template: role (system, user, assistant, tool; OpenAI's
    `developer` arrives as system), content as a string (text parts joined), and for tool turns
    `tool_calls` (an assistant's calls, OpenAI's shape) or `tool_call_id` (a tool's result).
    `prompt` is set instead of messages for a raw completion (`/v1/completions`): the text is encoded
    as it is, with no chat template. `logprobs` None asks for none; k >= 0 asks for each generated
    token's log-probability and the k most likely alternatives."""

    messages: list[dict[str, Any]]
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()
    output: OutputFormat | None = None
    tools: Tools | None = None
    logprobs: int | None = None
    prompt: str | None = None


def chat_request(
    messages: Sequence[Mapping[str, Any]],
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    do_sample: bool | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
) -> ChatRequest:
    """The request for plain Python arguments (no HTTP body), validated. Greedy when temperature is 0
    or do_sample is false; when do_sample is not given, a positive temperature turns sampling on."""
    chat = _check_messages(messages)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidInput("max_new_tokens must be at least 1", field="max_new_tokens")
    return ChatRequest(chat, max_new_tokens, _sampling(temperature, top_p, do_sample, seed), _check_stop(stop))


def _sampling(temperature: float | None, top_p: float | None, do_sample: bool | None, seed: int | None) -> Sampling:
    sample = bool(do_sample) if do_sample is not None else bool(temperature)
    if temperature is not None and temperature <= 0:
        sample = False
    return Sampling(
        greedy=not sample,
        temperature=float(temperature) if sample and temperature else 1.0,
        top_p=float(top_p) if sample and top_p is not None else 1.0,
        seed=seed,
    )


def _check_stop(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise InvalidInput(f"stop {_STOP_RULE}", field="stop")
    return stops


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise InvalidInput("messages must be a non-empty list of messages", field="messages")
    chat = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidInput(f"messages[{index}] must be an object with role and content", field=f"messages[{index}]")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidInput(f"messages[{index}].role must be one of {', '.join(ROLES)}",
                               field=f"messages[{index}].role")
        if not isinstance(content, str):
            raise InvalidInput(f"messages[{index}].content must be a string", field=f"messages[{index}].content")
        chat.append({"role": role, "content": content})
    return chat


# -- the bodies on the wire -------------------------------------------------------------------------

Temperature = Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, strict=True, allow_inf_nan=False)]
NewTokens = Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS, strict=True)]
Stop = Annotated[str, Field(strict=True, min_length=1)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    """One chat turn."""

    role: Role
    content: Annotated[str, Field(strict=True)]


def _plain(messages: list[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


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

    def to_request(self, *, default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> ChatRequest:
        p = self.input_data.parameters
        return ChatRequest(_plain(self.input_data.input_string), p.max_new_tokens or default_max_new_tokens,
                           _sampling(p.temperature, p.top_p, p.do_sample, None))


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
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOPS)] | None = None
    stream_options: StreamOptions | None = None

    def to_request(self, *, default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> ChatRequest:
        """OpenAI's defaults: temperature 1, so sampling unless asked for temperature 0."""
        temperature = 1.0 if self.temperature is None else self.temperature
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return ChatRequest(_plain(self.messages),
                           self.max_completion_tokens or self.max_tokens or default_max_new_tokens,
                           _sampling(temperature, self.top_p, temperature > 0, self.seed), stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def score_body(messages: Sequence[Mapping[str, Any]], *, temperature: float | None = None,
               top_p: float | None = None, do_sample: bool | None = None,
               max_new_tokens: int | None = None) -> dict[str, Any]:
    """The /score body a client sends for a conversation; parameters left None are left out, so the
    server's defaults apply. The server validates it."""
    given = {"temperature": temperature, "top_p": top_p, "do_sample": do_sample, "max_new_tokens": max_new_tokens}
    return {"input_data": {"input_string": [dict(m) for m in messages],
                           "parameters": {k: v for k, v in given.items() if v is not None}}}


# -- validation errors that name the field ----------------------------------------------------------

_NEW_TOKENS_RULE = f"must be an integer from 1 to {MAX_NEW_TOKENS}"
_FIELD_RULES = {
    "temperature": "must be a number >= 0",
    "top_p": "must be a number > 0 and <= 1",
    "do_sample": "must be true or false",
    "max_new_tokens": _NEW_TOKENS_RULE,
    "max_tokens": _NEW_TOKENS_RULE,
    "max_completion_tokens": _NEW_TOKENS_RULE,
    "role": f"must be one of {', '.join(ROLES)}",
    "content": "must be a string",
    "params": "must be an object",
    "parameters": "must be an object",
    "input_data": "must be an object",
    "model": "must be a string",
    "seed": "must be an integer",
    "stream": "must be true or false",
    "stop": _STOP_RULE,
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
