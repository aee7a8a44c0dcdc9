"""What every serving runtime shares: the result types, message checks, sampling options, and the
assembly of a token stream into text deltas (incremental decoding, stop strings, trimming).

A runtime turns token ids into tokens; everything a caller sees as text is made here, so the
`transformers` and `llamacpp` runtimes answer the same text for the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from forgeflow.errors import InvalidInput

ROLES = ("system", "user", "assistant")
# Used only when a model folder ships no chat template; it is the template the embedded model uses.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MAX_STOPS = 4


@dataclass(frozen=True)
class GenerationResult:
    """The assistant text and token accounting for one request."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class StreamEvent:
    """One step of a stream: a text delta (maybe empty), and on the last event the whole result."""

    text: str
    result: GenerationResult | None = None


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked: greedy, or temperature / nucleus sampling with an optional seed."""

    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Request:
    """One validated chat request, as every runtime receives it."""

    messages: list[dict[str, str]]
    max_new_tokens: int
    sampling: Sampling
    stop: list[str] = field(default_factory=list)


class Runtime(Protocol):
    """A loaded model that answers chats. Loading is the constructor; `close` frees it."""

    name: str

    def generate(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> GenerationResult: ...

    def stream(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> TokenStream: ...

    def health(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def make_request(
    messages: Sequence[Mapping[str, Any]],
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    do_sample: bool | None = None,
    max_new_tokens: int = 256,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
) -> Request:
    """Validate generate() keyword arguments. Greedy when temperature is 0 or do_sample is false;
    when do_sample is not given, a positive temperature turns sampling on."""
    chat = check_messages(messages)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidInput("max_new_tokens must be at least 1", field="max_new_tokens")
    sample = bool(do_sample) if do_sample is not None else bool(temperature)
    if temperature is not None and temperature <= 0:
        sample = False
    sampling = Sampling(
        greedy=not sample,
        temperature=float(temperature) if sample and temperature else 1.0,
        top_p=float(top_p) if sample and top_p is not None else 1.0,
        seed=seed,
    )
    return Request(chat, max_new_tokens, sampling, check_stop(stop))


def check_stop(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise InvalidInput(f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them", field="stop")
    return stops


def check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise InvalidInput("messages must be a non-empty list of messages", field="messages")
    chat = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidInput(f"messages[{index}] must be an object with role and content", field=f"messages[{index}]")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidInput(f"messages[{index}].role must be one of {', '.join(ROLES)}", field=f"messages[{index}].role")
        if not isinstance(content, str):
            raise InvalidInput(f"messages[{index}].content must be a string", field=f"messages[{index}].content")
        chat.append({"role": role, "content": content})
    return chat


def encode_chat(tokenizer: Any, chat: list[dict[str, str]], max_positions: int | None) -> list[int]:
    """The prompt's token ids through the tokenizer's chat template; too long is InvalidInput."""
    try:
        encoded = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)
    except Exception as exc:
        raise InvalidInput(f"the model's chat template rejected the messages: {exc}", field="messages") from exc
    ids = list(encoded["input_ids"])
    if max_positions and len(ids) >= max_positions:
        raise InvalidInput(f"the conversation is {len(ids)} tokens; this model reads at most {max_positions}",
                           field="messages")
    return ids


class TokenStream:
    """Text deltas for one request, assembled from (token id, finish reason or None) pairs.

    Iterating yields StreamEvents; the last one carries the GenerationResult. `cancel` is called
    when a stop string ends the answer early or the consumer goes away, so the runtime can free
    the sequence. Emitted text never has to be taken back: trailing whitespace and any tail that
    could begin a stop string are held until the next token decides them.
    """

    def __init__(self, tokens: Iterable[tuple[int, str | None]], decode: Callable[[list[int]], str],
                 prompt_tokens: int, stop: list[str], cancel: Callable[[], None] = lambda: None) -> None:
        self._tokens = tokens
        self._decode = decode
        self.prompt_tokens = prompt_tokens
        self._stop = stop
        self._cancel = cancel
        self.result: GenerationResult | None = None

    def cancel(self) -> None:
        self._cancel()

    def __iter__(self) -> Iterator[StreamEvent]:
        ids: list[int] = []
        sent = ""
        finish = "length"
        try:
            for token, reason in self._tokens:
                ids.append(token)
                raw = self._decode(ids)
                cut = self._find_stop(raw)
                if cut is not None:
                    raw, reason = raw[:cut], "stop"
                    self._cancel()
                if reason is not None:
                    finish = reason
                    break
                if raw.endswith("\ufffd"):
                    continue  # an incomplete UTF-8 sequence: wait for its next byte
                text = raw.lstrip()
                text = text[: max(0, len(text) - self._held_tail(raw))].rstrip()
                if len(text) > len(sent) and text.startswith(sent):
                    yield StreamEvent(text[len(sent):])
                    sent = text
            else:
                raw = self._decode(ids)
        finally:
            self._cancel()  # a no-op for a finished sequence; frees one whose consumer left early
        final = raw.strip() if ids else ""
        self.result = GenerationResult(final, self.prompt_tokens, len(ids), finish)
        yield StreamEvent(final[len(sent):] if final.startswith(sent) else "", self.result)

    def run(self) -> GenerationResult:
        """Consume the stream and return its result (the non-streaming path)."""
        for _event in self:
            pass
        assert self.result is not None
        return self.result

    def _find_stop(self, raw: str) -> int | None:
        found = [i for i in (raw.find(s) for s in self._stop) if i >= 0]
        return min(found) if found else None

    def _held_tail(self, raw: str) -> int:
        """How many trailing characters could be the start of a stop string."""
        held = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(raw)), held, -1):
                if raw.endswith(s[:k]):
                    held = k
                    break
        return held
