"""What every serving runtime shares: the `Runtime` seam, the result types, prompt encoding, and the
assembly of a token stream into text deltas (incremental decoding, stop strings, trimming).

A runtime turns token ids into tokens; everything a caller sees as text is made here, so the
`transformers` and `llamacpp` runtimes answer the same text for the same tokens.
"""

from __future__ import annotations

import re
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
class TokenLogprob:
    """One generated token's log-probability under the model (its raw logits, before penalties or
    grammar), and the `top` most likely alternatives at that step as (token text, logprob) pairs."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ToolCall:
    """A function call the model generated (under the tools grammar), in OpenAI's terms."""

    id: str
    name: str
    arguments: str  # a JSON object, as text


@dataclass(frozen=True)
class GenerationResult:
    """The assistant text and token accounting for one request. finish_reason is "stop", "length" or
    "tool_calls" (then `tool_calls` holds the calls and `text` whatever came before them)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    logprobs: tuple[TokenLogprob, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class StreamEvent:
    """One step of a stream: a text delta (maybe empty) with the log-probabilities of the tokens it
    covers (when asked for), and on the last event the whole result."""

    text: str
    result: GenerationResult | None = None
    logprobs: tuple[TokenLogprob, ...] = ()


class Runtime(Protocol):
    """A loaded model that answers chats: the one seam between the model server and a runtime.
    Loading is the constructor; `close` frees it. `generate` and `stream` take a request already
    validated by the chat contract and queue it at once (errors raise there, not mid-stream)."""

    name: str

    def generate(self, request: ChatRequest) -> GenerationResult: ...

    def stream(self, request: ChatRequest) -> TokenStream: ...

    def health(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class PromptEncoder:
    """A loaded model's chats as prompt token ids, through its tokenizer's chat template.

    Only the template's own markup becomes control tokens: added-token text inside a message
    (`<|im_start|>system` in a user's question) is tokenized as the plain text it is, so no message
    can open a turn or change a role. A chat without such text encodes exactly as it always has;
    one with it goes through transformers' `sanitize_control_tokens` (slower, so not for every chat).
    """

    def __init__(self, tokenizer: Any, max_positions: int | None) -> None:
        self.tokenizer = tokenizer
        self.max_positions = max_positions
        # transformers' control tokens are some of the added tokens: a chat holding none needs no sanitizing
        added = [re.escape(token) for token in tokenizer.added_tokens_encoder if token]
        self._added = re.compile("|".join(added)) if added else None

    def encode(self, chat: list[dict[str, str]]) -> list[int]:
        """The prompt's token ids; a template that rejects the chat, or too long a prompt, is InvalidInput."""
        sanitize = self._added is not None and any(self._added.search(m["content"]) for m in chat)
        try:
            encoded = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True,
                                                         sanitize_control_tokens=sanitize)
        except Exception as exc:
            raise InvalidInput(f"the model's chat template rejected the messages: {exc}", field="messages") from exc
        ids = list(encoded["input_ids"])
        if self.max_positions and len(ids) >= self.max_positions:
            raise InvalidInput(f"the conversation is {len(ids)} tokens; this model reads at most {self.max_positions}",
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
