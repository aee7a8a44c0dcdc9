"""Azure ML's scoring body for a chat model (the walkthrough's contract) and what it answers.

    {"input_data": {"input_string": [{"role": "user", "content": "..."}],
                    "parameters": {"temperature": 0.7, "top_p": 0.9, "do_sample": true, "max_new_tokens": 128}},
     "params": {}}
    -> {"output": "<assistant text>"}

Generation parameters come in `input_data.parameters` and, as Azure's MLflow-served chat models take them,
in the top-level `params`: both take the same names and are merged; a name set in both places must have the
same value there (else a 400 naming `params.NAME`). `max_tokens` is another name for `max_new_tokens`. A
parameter forgeflow cannot honour, like any other key it does not take, is a 400 naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from forgeflow.chat.request import DEFAULT_MAX_NEW_TOKENS, ChatRequest, Role, sampling_for
from forgeflow.chat.wire import (Closed, Flag, NewTokens, Penalty, Seed, Stops, Temperature, Text, TopK, TopP,
                                 known_fields, parse, refuse, stops)


class ChatMessage(Closed):
    """One chat turn."""

    role: Role
    content: Text


class ScoreParameters(Closed):
    """Generation settings; unset ones take the server's defaults. Sampling is on when `do_sample` is true, or
    when it is not given and `temperature` is above 0."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    do_sample: Flag | None = None
    max_new_tokens: NewTokens | None = None
    max_tokens: NewTokens | None = Field(None, description="another name for max_new_tokens")
    seed: Seed | None = None
    stop: Stops | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    return_full_text: Literal[False] | None = Field(None, description="false only: the answer is the new text")

    @model_validator(mode="before")
    @classmethod
    def _honoured(cls, data: Any) -> Any:
        return known_fields(cls, data, {}, "is not a generation parameter forgeflow can honour; remove it")

    @model_validator(mode="after")
    def _one_length(self) -> ScoreParameters:
        if None not in (self.max_tokens, self.max_new_tokens) and self.max_tokens != self.max_new_tokens:
            raise refuse("differs from max_new_tokens, which it is another name for: set one of them", "max_tokens")
        return self

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class InputData(Closed):
    """The conversation and its generation settings."""

    input_string: Annotated[list[ChatMessage], Field(min_length=1)]
    parameters: ScoreParameters = Field(default_factory=ScoreParameters)


class ScoreRequest(Closed):
    """The body of POST /score; `params` takes the same generation settings as `input_data.parameters`."""

    input_data: InputData
    params: ScoreParameters | None = None

    @model_validator(mode="after")
    def _params_agree(self) -> ScoreRequest:
        inner = self.input_data.parameters.given()
        outer = self.params.given() if self.params else {}
        inner_length = inner.get("max_new_tokens", inner.get("max_tokens"))
        for name, value in outer.items():
            other = inner_length if name in ("max_new_tokens", "max_tokens") else inner.get(name)
            if other is not None and other != value:
                raise refuse(f"is {value!r} but input_data.parameters sets {other!r}: the two are merged, so set "
                             "it in one of them", "params", name)
        return self

    @property
    def model(self) -> None:
        """The scoring body names no model (the gateway routes it by traffic or header)."""
        return None

    def to_request(self, *, default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> ChatRequest:
        p = {**self.input_data.parameters.given(), **(self.params.given() if self.params else {})}
        sampling = sampling_for(p.get("temperature"), p.get("top_p"), p.get("seed"), top_k=p.get("top_k"),
                                frequency_penalty=p.get("frequency_penalty"),
                                presence_penalty=p.get("presence_penalty"),
                                do_sample=p.get("do_sample", bool(p.get("temperature"))))
        length = p.get("max_new_tokens") or p.get("max_tokens") or default_max_new_tokens
        messages = [{"role": m.role, "content": m.content} for m in self.input_data.input_string]
        return ChatRequest(messages, length, sampling, stops(p.get("stop")))


class ScoreResponse(BaseModel):
    """The body POST /score answers."""

    output: str


def parse_score_request(body: Any) -> ScoreRequest:
    """Validate a /score body, raising InvalidInput that names the wrong field."""
    return parse(ScoreRequest, body, list_field="input_string", list_rule="must be a non-empty list of messages")


def score_body(messages: Sequence[Mapping[str, Any]], *, temperature: float | None = None,
               top_p: float | None = None, do_sample: bool | None = None, max_new_tokens: int | None = None,
               **parameters: Any) -> dict[str, Any]:
    """The /score body a client sends for a conversation; parameters left None are left out, so the
    server's defaults apply (`parameters` may add any other of ScoreParameters). The server validates it."""
    given = {"temperature": temperature, "top_p": top_p, "do_sample": do_sample, "max_new_tokens": max_new_tokens,
             **parameters}
    return {"input_data": {"input_string": [dict(m) for m in messages],
                           "parameters": {k: v for k, v in given.items() if v is not None}}}
