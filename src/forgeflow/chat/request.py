"""The one typed request every runtime receives (`ChatRequest` with its `Sampling`, `OutputFormat` and
`Tools`), the generation defaults, and `chat_request`, which builds one from plain Python arguments."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from forgeflow.errors import InvalidInput

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)
DEFAULT_MAX_NEW_TOKENS = 256
MAX_NEW_TOKENS = 4096
MAX_STOPS = 4
STOP_RULE = f"must be a non-empty string or a list of at most {MAX_STOPS} of them"


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
    `developer` arrives as system), content as a string (text parts joined), the participant's `name` when
    the client gave one (for the templates that use it), and for tool turns
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
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not 0 <= temperature < math.inf):  # else it would turn greedy unseen
        raise InvalidInput("temperature must be a finite number >= 0", field="temperature")
    sample = do_sample if do_sample is not None else bool(temperature)
    return ChatRequest(chat, max_new_tokens, sampling_for(temperature, top_p, seed, do_sample=sample),
                       _check_stop(stop))


def sampling_for(temperature: float | None, top_p: float | None, seed: int | None, *, top_k: int | None = None,
             frequency_penalty: float | None = None, presence_penalty: float | None = None,
             logit_bias: tuple[tuple[int, float], ...] | None = None, do_sample: bool | None = None) -> Sampling:
    """The one sampling rule. Unset temperature is OpenAI's default, 1; sampling unless the temperature is 0 or
    `do_sample` is false (the Azure body and `chat_request` pass it, on when a positive temperature is given).
    Top-k -1 and 0 both mean no cut; penalties and bias apply to greedy decoding too."""
    temperature = 1.0 if temperature is None else float(temperature)
    sample = temperature > 0 if do_sample is None else bool(do_sample) and temperature > 0
    return Sampling(
        greedy=not sample,
        temperature=temperature if sample else 1.0,
        top_p=float(top_p) if sample and top_p is not None else 1.0,
        seed=seed,
        top_k=max(top_k or 0, 0) if sample else 0,
        frequency_penalty=frequency_penalty or 0.0,
        presence_penalty=presence_penalty or 0.0,
        logit_bias=logit_bias or (),
    )


def _check_stop(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise InvalidInput(f"stop {STOP_RULE}", field="stop")
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


def per_choice(request: ChatRequest, n: int) -> list[ChatRequest]:
    """The `n` requests of OpenAI's `n` choices: each its own sequence; a seeded request's choice i
    samples with seed + i (kept within 64 bits), so the answer is reproducible and the choices differ."""
    seed = request.sampling.seed
    if seed is None:
        return [request] * n
    return [replace(request, sampling=replace(request.sampling, seed=(seed + i + 2**63) % 2**64 - 2**63))
            for i in range(n)]
