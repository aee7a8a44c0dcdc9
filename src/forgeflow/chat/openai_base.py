"""What OpenAI's chat and completions bodies share: the sampling fields, `n`, streaming options, and the rule
that every field forgeflow cannot honour is refused by name, as OpenAI refuses an "Unrecognized request
argument". A field OpenAI defines but forgeflow cannot honour is taken only as null (its "not set"), and the
400 says why; a name OpenAI does not define is refused whatever its value. Null is "not set" for every field
(openai-python sends null for an explicit None), so a null field takes its default.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from forgeflow.chat.request import ChatRequest, Sampling, per_choice, sampling_for
from forgeflow.chat.wire import (Closed, Flag, Penalty, Seed, Stops, Text, TopK, TopP, check_logit_bias,
                                 known_fields, refuse)

MAX_CHOICES = 8
MAX_MODEL_NAME = 256  # `model` is echoed in every chunk of a stream: a long one would multiply the answer
OPENAI_RULES = {"temperature": "must be a number from 0 to 2",  # OpenAI's range, narrower than the Azure body's
                "model": f"must be a string of at most {MAX_MODEL_NAME} characters"}


class StreamOptions(Closed):
    """OpenAI's stream_options: include_usage adds a last chunk with the token counts."""

    include_usage: Flag | None = False
    include_obfuscation: Literal[False] | None = Field(None, description="false only: no obfuscation padding")


class OpenAIBody(Closed):
    """The fields OpenAI's chat and completions bodies share."""

    unsupported: ClassVar[dict[str, str]] = {}  # OpenAI's fields forgeflow cannot honour: why, for the 400

    model: Annotated[str, Field(strict=True, max_length=MAX_MODEL_NAME)] | None = Field(
        None, description="a deployment of the endpoint; any other name is served by the endpoint's traffic split")
    temperature: Annotated[float, Field(ge=0, le=2, strict=True, allow_inf_nan=False)] | None = None
    top_p: TopP | None = None
    top_k: TopK | None = Field(None, description="sample from the k most likely tokens (0 or -1: all)")
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES, strict=True)] = Field(1, description="choices, each its own "
                                                                                          "sequence")
    seed: Seed | None = Field(None, description="choice i samples with seed + i")
    stop: Stops | None = None
    stream: Flag | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = Field(None, description="token id (a string) -> bias from -100 to 100")
    user: Text | None = Field(None, description="an opaque id of the end user; accepted, not used")

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        known = known_fields(cls, data, cls.unsupported, "is not a parameter forgeflow takes here (OpenAI answers "
                                                         "'Unrecognized request argument'); remove it")
        return {k: v for k, v in known.items() if v is not None} if isinstance(known, dict) else known

    @model_validator(mode="after")
    def _stream_options_with_stream(self) -> OpenAIBody:
        if self.stream_options is not None and not self.stream:
            raise refuse("is only allowed when stream is true", "stream_options")
        return self

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias(cls, value: Any) -> Any:
        check_logit_bias(value)
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self) -> Sampling:
        """OpenAI's defaults: temperature 1, so sampling unless asked for temperature 0."""
        return sampling_for(self.temperature, self.top_p, self.seed, top_k=self.top_k,
                            frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
                            logit_bias=check_logit_bias(self.logit_bias))

    def to_requests(self, **defaults: Any) -> list[ChatRequest]:
        """One request per choice (`n`), each its own sequence; seeded ones with seed + i."""
        return per_choice(self.to_request(**defaults), self.n)  # type: ignore[attr-defined]
