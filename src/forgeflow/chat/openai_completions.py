"""OpenAI's legacy completions body (POST /v1/completions): a raw prompt in, text out, no chat template.

The prompt is a string (or a list holding exactly one); token-id prompts, `suffix` (fill in the middle) and
`echo: true` are 400s. `logprobs` is an integer from 0 to 5, the alternatives listed per token; `best_of`
is taken only equal to `n` (forgeflow keeps every sequence it generates). `max_tokens` defaults to 16, as
OpenAI's does.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from forgeflow.chat.openai_base import OPENAI_RULES, OpenAIBody
from forgeflow.chat.request import ChatRequest
from forgeflow.chat.wire import NewTokens, parse, refuse, stops

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


class CompletionRequest(OpenAIBody):
    """The body of POST /v1/completions."""

    unsupported: ClassVar[dict[str, str]] = {
        "suffix": "forgeflow does not fill in the middle: put the whole text in prompt",
    }

    prompt: str = Field(description="the text to continue (a list holding one string is taken too)")
    max_tokens: NewTokens = DEFAULT_COMPLETION_TOKENS
    logprobs: Annotated[int, Field(ge=0, le=5, strict=True)] | None = None
    echo: Literal[False] | None = None
    best_of: Annotated[int, Field(strict=True)] | None = Field(None, description="equal to n only")

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_text(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            value = value[0]
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            raise refuse("holds several prompts; send one prompt per request (or use n for several answers)")
        elif isinstance(value, list) and value and not isinstance(value[0], str):
            raise refuse("holds token ids; send the prompt as text")
        if not isinstance(value, str) or not value:
            raise refuse("must be a non-empty string")
        return value

    @model_validator(mode="after")
    def _best_of_is_n(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise refuse(f"must equal n ({self.n}): forgeflow returns every sequence it generates", "best_of")
        return self

    def to_request(self, **_defaults: Any) -> ChatRequest:
        """A raw completion: no messages, the prompt as it is; OpenAI's length default (16), whatever the
        server's default for chats."""
        return ChatRequest([], self.max_tokens, self.sampling(), stops(self.stop), logprobs=self.logprobs,
                           prompt=self.prompt)


def parse_completion_request(body: Any) -> CompletionRequest:
    """Validate a /v1/completions body, raising InvalidInput that names the wrong field."""
    return parse(CompletionRequest, body, rules=OPENAI_RULES | {"logprobs": "must be an integer from 0 to 5",
                                                                "best_of": "must be an integer equal to n"})
