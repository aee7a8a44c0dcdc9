"""What every serving runtime shares: the `Runtime` seam, the result types, prompt encoding, and the
assembly of a token stream into text deltas (incremental decoding, stop strings, trimming).

A runtime turns token ids into tokens; everything a caller sees as text is made here, so the
`transformers` and `llamacpp` runtimes answer the same text for the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from forgeflow.chat import ChatRequest
from forgeflow.errors import InvalidInput

# Used only when a model folder ships no chat template; it is the template the embedded model uses.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


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


class Runtime(Protocol):
    """A loaded model that answers chats: the one seam between the model server and a runtime.
    Loading is the constructor; `close` frees it. `generate` and `stream` take a request already
    validated by the chat contract and queue it at once (errors raise there, not mid-stream)."""

    name: str

    def generate(self, request: ChatRequest) -> GenerationResult: ...

    def stream(self, request: ChatRequest) -> TokenStream: ...

    def health(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


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
                 prompt_tokens: int, stop: Sequence[str], cancel: Callable[[], None] = lambda: None) -> None:
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
