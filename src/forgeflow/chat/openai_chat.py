"""OpenAI's chat body (POST /v1/chat/completions) as forgeflow takes it.

Messages: roles system, developer (a system turn), user, assistant (with `tool_calls`, content then may be
null) and tool (a result, naming its call by `tool_call_id`); content is a string or a list of text parts,
joined with newlines. `response_format` (`text`, `json_object`, `json_schema`) and `tools` / `tool_choice`
become the request's `OutputFormat` and `Tools`, which the runtime enforces with a grammar. A message's `name`
goes into the turn the chat template renders (a template that uses it shows it to the model, as vLLM does). Image,
audio and file parts, and OpenAI's fields no runtime here can honour are 400s naming the field.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, StringConstraints, ValidationError, field_validator, model_validator

from forgeflow.chat.openai_base import OPENAI_RULES, OpenAIBody
from forgeflow.chat.request import DEFAULT_MAX_NEW_TOKENS, ChatRequest, OutputFormat, Tools
from forgeflow.chat.wire import Closed, Flag, NewTokens, Text, nested, parse, refuse, stops

Name = Annotated[str, StringConstraints(strict=True, pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
MAX_TOOLS = 128
TOOL_CHOICES = ("none", "auto", "required")
_TEXT_ONLY = "it serves text models; send the content as a string or as text parts"
_PARTS = {"image_url": _TEXT_ONLY, "input_audio": _TEXT_ONLY, "file": _TEXT_ONLY,
          "refusal": "send the assistant's text as a string"}
_MESSAGE_FIELDS = {  # OpenAI's message fields forgeflow cannot honour (null is taken as not set)
    "refusal": "send the assistant's text as content",
    "audio": "forgeflow serves text models",
    "function_call": "OpenAI deprecated it: send tool_calls",
}


class FunctionCall(Closed):
    """The function an assistant called, and its arguments as a JSON object in a string."""

    name: Name
    arguments: Text

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):  # nested past the parser's depth: no object either
            parsed = None
        if not isinstance(parsed, dict):
            raise refuse('must be a JSON object written as a string, e.g. "{\\"city\\": \\"Paris\\"}"')
        return value


class ToolCallIn(Closed):
    """A call an earlier assistant turn made (OpenAI's shape)."""

    id: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=256)]
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(Closed):
    """A part of a message's content; text is the only kind forgeflow's models read."""

    type: Literal["text"]
    text: Text


class OpenAIMessage(Closed):
    """One chat turn. `content` arrives as a string or a list of text parts, joined with newlines on arrival
    (so it is a string from then on)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: Annotated[str, StringConstraints(strict=True, min_length=1)] | None = None
    name: Name | None = Field(None, description="the participant's name, given to the chat template")

    @model_validator(mode="before")
    @classmethod
    def _openai_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("role") == "function":
            raise refuse("is function, which OpenAI deprecated: send a tool's result as role tool with its "
                         "tool_call_id", "role")
        for name, why in _MESSAGE_FIELDS.items():
            if data.get(name) is not None:
                raise refuse(f"is not supported by forgeflow: {why}", name)
        return {k: v for k, v in data.items() if k not in _MESSAGE_FIELDS}

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list) or not value:
            raise refuse("must be a string or a non-empty list of text parts")
        texts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict):
                raise refuse('must be a text part, {"type": "text", "text": "..."}', index)
            kind = part.get("type")
            if kind != "text":
                why = _PARTS.get(kind) if isinstance(kind, str) else None
                raise refuse(f"is {kind}, which forgeflow cannot take: {why}" if why else "must be text", index, "type")
            for key in part:
                if key not in ("type", "text"):
                    raise refuse("is not a field of a text part; remove it", index, key)
            if not isinstance(part.get("text"), str):
                raise refuse("must be a string", index, "text")
            texts.append(part["text"])
        return "\n".join(texts)

    @model_validator(mode="after")
    def _by_role(self) -> OpenAIMessage:
        if self.role != "assistant" and self.tool_calls is not None:
            raise refuse("only an assistant message carries tool_calls", "tool_calls")
        if self.role != "tool" and self.tool_call_id is not None:
            raise refuse("only a tool message carries tool_call_id", "tool_call_id")
        if self.role == "tool" and self.name is not None:
            raise refuse("is not taken on a tool message (its tool_call_id names the call it answers)", "name")
        if self.role == "tool" and self.tool_call_id is None:
            raise refuse("is required: the id of the call this message answers", "tool_call_id")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise refuse("is required (null only on an assistant message with tool_calls)", "content")
        return self

    def plain(self) -> dict[str, Any]:
        """The turn as the chat template gets it (developer is a system turn)."""
        content = self.content if isinstance(self.content, str) else ""  # parts were joined on arrival
        turn: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.tool_calls:
            turn["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            turn["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            turn["name"] = self.name
        return turn


class JsonSchema(Closed):
    """`response_format.json_schema`: the schema the answer must match."""

    name: Name
    description: Text | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: Flag | None = None


class ResponseFormat(Closed):
    """`{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {...}}`."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise refuse("is required when type is json_schema", "json_schema")
        if self.type != "json_schema" and self.json_schema is not None:
            raise refuse("is only taken when type is json_schema", "json_schema")
        return self

    def output(self) -> OutputFormat | None:
        spec = self.json_schema
        if self.type == "text":
            return None
        if spec is None or spec.schema_ is None:  # a json_schema without a schema: any JSON object
            return OutputFormat("json_object", name=spec.name if spec else None)
        return OutputFormat("json_schema", spec.schema_, spec.name, bool(spec.strict))


class FunctionDef(Closed):
    """A function the model may call; `parameters` is a JSON schema of type object (none: no arguments)."""

    name: Name
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: Flag | None = None

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and value.get("type") != "object":
            raise refuse('must be a JSON schema of type object, e.g. {"type": "object", "properties": {...}}')
        return value


class ToolDef(Closed):
    """`{"type": "function", "function": {...}}`."""

    type: Literal["function"]
    function: FunctionDef

    @model_validator(mode="before")
    @classmethod
    def _functions_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") == "custom":
            raise refuse("custom tools are not supported: define a function tool", "type")
        return data

    def definition(self) -> dict[str, Any]:
        function = self.function.model_dump(exclude_none=True)
        function["parameters"] = self.function.parameters or {"type": "object", "properties": {}}
        return {"type": "function", "function": function}


class ChosenFunction(Closed):
    name: Name


class NamedToolChoice(Closed):
    """`{"type": "function", "function": {"name": ...}}`: the model must call that function."""

    type: Literal["function"]
    function: ChosenFunction

    @model_validator(mode="before")
    @classmethod
    def _functions_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") in ("allowed_tools", "custom"):
            raise refuse(f"{data['type']} is not supported: name one function, or use auto or required", "type")
        return data


class ChatCompletionRequest(OpenAIBody):
    """The body of POST /v1/chat/completions."""

    unsupported: ClassVar[dict[str, str]] = {
        "audio": "forgeflow serves text models",
        "prediction": "predicted outputs are not supported",
        "web_search_options": "forgeflow's models do not search the web",
        "functions": "OpenAI deprecated it: pass the functions as tools, [{\"type\": \"function\", \"function\": "
                     "{...}}]",
        "function_call": "OpenAI deprecated it: use tool_choice",
        "reasoning_effort": "forgeflow's models have no reasoning effort to set",
        "verbosity": "forgeflow's models have no verbosity to set",
        "metadata": "forgeflow does not store completions, so there is nothing to tag",
        "moderation": "forgeflow does not moderate completions",
        "prompt_cache_key": "forgeflow keeps no prompt cache between requests",
        "prompt_cache_retention": "forgeflow keeps no prompt cache between requests",
        "prompt_cache_options": "forgeflow keeps no prompt cache between requests",
    }

    messages: Annotated[list[OpenAIMessage], Field(min_length=1)]
    max_tokens: NewTokens | None = None
    max_completion_tokens: NewTokens | None = None
    logprobs: Flag | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20, strict=True)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ToolDef], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: Flag | None = None
    safety_identifier: Text | None = Field(None, description="an opaque id of the end user; accepted, not used")
    service_tier: Literal["auto", "default"] | None = None
    store: Literal[False] | None = None
    modalities: list[Literal["text"]] | None = None

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _choice(cls, value: Any) -> Any:
        if isinstance(value, dict):
            try:
                return NamedToolChoice.model_validate(value)
            except ValidationError as exc:
                raise nested(exc) from None
        if value is not None and value not in TOOL_CHOICES:
            raise refuse('must be none, auto, required or {"type": "function", "function": {"name": ...}}')
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise refuse("differs from max_completion_tokens, which replaces it: set one of them", "max_tokens")
        if self.top_logprobs is not None and not self.logprobs:
            raise refuse("needs logprobs: true", "top_logprobs")
        self._check_tools()
        answered: set[str] = set()
        for index, message in enumerate(self.messages):
            answered.update(call.id for call in message.tool_calls or ())
            if message.tool_call_id is not None and message.tool_call_id not in answered:
                raise refuse("names no tool call of an earlier assistant message", "messages", index, "tool_call_id")
        return self

    def _check_tools(self) -> None:
        names = set()
        for index, tool in enumerate(self.tools or ()):
            if tool.function.name in names:
                raise refuse("is defined twice", "tools", index, "function", "name")
            names.add(tool.function.name)
        choice = self.tool_choice
        if not names:  # OpenAI refuses both without tools, rather than ignoring them
            for field in ("tool_choice", "parallel_tool_calls"):
                if getattr(self, field) is not None:
                    raise refuse("is only allowed when tools are given: define the functions in tools, or leave "
                                 f"{field} out", field)
        if isinstance(choice, NamedToolChoice):
            if choice.function.name not in names:
                raise refuse("names no function in tools", "tool_choice", "function", "name")
            if choice.function.name in TOOL_CHOICES:
                raise refuse("cannot be chosen by name, as it reads as that tool_choice: rename the function",
                             "tool_choice", "function", "name")

    def to_request(self, *, default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> ChatRequest:
        tools = None
        if self.tools:
            choice = self.tool_choice or "auto"
            tools = Tools(tuple(t.definition() for t in self.tools),
                          choice if isinstance(choice, str) else choice.function.name,
                          self.parallel_tool_calls is not False)
        return ChatRequest(
            [m.plain() for m in self.messages],
            self.max_completion_tokens or self.max_tokens or default_max_new_tokens,
            self.sampling(),
            stops(self.stop),
            self.response_format.output() if self.response_format else None,
            tools,
            (self.top_logprobs or 0) if self.logprobs else None,
        )


def parse_chat_completion_request(body: Any) -> ChatCompletionRequest:
    """Validate a /v1/chat/completions body, raising InvalidInput that names the wrong field."""
    return parse(ChatCompletionRequest, body, list_field="messages", list_rule="must be a non-empty list of messages",
                 rules=OPENAI_RULES | {"tools": f"must be a list of at most {MAX_TOOLS} function tools"})
