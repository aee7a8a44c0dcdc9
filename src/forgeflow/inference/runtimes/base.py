"""What every serving runtime shares: the `Runtime` seam, the result types, prompt encoding (chats with
their tools through the chat template, raw prompts as they are), and the assembly of a token stream
into text deltas (incremental decoding, stop strings, trimming, held-back tool calls, log-probabilities).

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
    validated by the chat contract and queue it at once (errors raise there, not mid-stream).
    `adapter` names one of the LoRA adapters the runtime was loaded with (inference/adapters.py); None is the
    model itself (an instance with adapters resolves every request to one of them first). `failure` says why
    the runtime can serve no more (its worker stopped: the model server then exits, to be replaced), else None."""

    name: str
    failure: str | None

    def generate(self, request: ChatRequest, adapter: str | None = None) -> GenerationResult: ...

    def stream(self, request: ChatRequest, adapter: str | None = None) -> TokenStream: ...

    def health(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class PromptEncoder:
    """A loaded model's prompts as token ids: chats (and the tools they may call) through the tokenizer's
    chat template, raw prompts as they are.

    Only the template's own markup becomes control tokens: added-token text inside a message or a tool
    definition (`<|im_start|>system` in a user's question) is tokenized as the plain text it is, so no
    message can open a turn or change a role. A chat without such text encodes exactly as it always has;
    one with it goes through transformers' `sanitize_control_tokens` (slower, so not for every chat).
    Object keys are not sanitized by transformers, so a key holding such text is refused.
    """

    def __init__(self, tokenizer: Any, max_positions: int | None) -> None:
        self.tokenizer = tokenizer
        self.max_positions = max_positions
        # transformers' control tokens are some of the added tokens: a chat holding none needs no sanitizing
        added = [re.escape(token) for token in tokenizer.added_tokens_encoder if token]
        self._added = re.compile("|".join(added)) if added else None

    def encode(self, chat: list[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None) -> list[int]:
        """The prompt's token ids; a template that rejects the chat, or too long a prompt, is InvalidInput."""
        sanitize = False
        if self._added is not None:
            for index, message in enumerate(chat):
                self._refuse_control_keys(message, f"messages[{index}]")
            self._refuse_control_keys(tools, "tools")
            sanitize = any(self._added.search(text) for text in _strings([chat, tools]))
        extra = {"tools": list(tools)} if tools else {}
        try:
            encoded = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True,
                                                         sanitize_control_tokens=sanitize, **extra)
        except Exception as exc:
            raise InvalidInput(f"the model's chat template rejected the messages: {exc}", field="messages") from exc
        return self._fits(list(encoded["input_ids"]), "messages", "the conversation")

    def encode_prompt(self, text: str) -> list[int]:
        """A raw prompt's token ids, with no chat template: the text is the whole prompt, its markup included
        (the caller writes every turn, so there is no turn of someone else's to forge)."""
        ids = list(self.tokenizer(text)["input_ids"])
        if not ids:
            raise InvalidInput("prompt must not be empty", field="prompt")
        return self._fits(ids, "prompt", "the prompt")

    def _fits(self, ids: list[int], field: str, what: str) -> list[int]:
        if self.max_positions and len(ids) >= self.max_positions:
            raise InvalidInput(f"{what} is {len(ids)} tokens; this model reads at most {self.max_positions}",
                               field=field)
        return ids

    def _refuse_control_keys(self, value: Any, field: str) -> None:
        assert self._added is not None
        for key in _keys(value):
            if self._added.search(key):
                raise InvalidInput(f"{field} has a key holding the model's control-token text ({key!r}): "
                                   "rename it", field=field)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _keys(item)


# A runtime's step: (token id, finish reason or None, the token's raw log-probability and the top
# alternatives as (token id, logprob) pairs, or None when none were asked for); TokenStream also takes
# (token id, finish reason) pairs
RawLogprob = tuple[float, tuple[tuple[int, float], ...]]
Step = tuple[int, str | None, RawLogprob | None]
# a stream's incremental decoding: a token -> the text it adds for good and the text after that which later tokens
# may still change (a whole decode's own reading of it so far), None while it adds none yet
TextStep = Callable[[int], tuple[str, str] | None]
IncrementalDecoder = Callable[[], TextStep]


class TokenStream:
    """Text deltas for one request, assembled from a runtime's steps.

    Iterating yields StreamEvents; the last one carries the GenerationResult. `cancel` is called
    when a stop string ends the answer early or the consumer goes away, so the runtime can free
    the sequence. Emitted text never has to be taken back: any tail that could begin a stop string
    is held until the next token decides it, and so is trailing whitespace when `trim` (a chat's
    answer is trimmed; a raw completion is not).

    A stream whose answer may hold tool calls (`tool_tag`) sends no text from that tag on, nor a
    tail that could begin it, and its stop strings apply only to the text before the tag (a stop
    string never cuts a call). At the end `read_calls` splits the text into what came before the
    calls, the complete calls, and whether they end cleanly. The answer's text is only what came
    before the tag: call markup is never text. All calls complete: finish reason "tool_calls".
    A call cut short by the token budget: the complete calls before it, finish reason "length"
    (as OpenAI reports a call cut by max_tokens; clients that act on `tool_calls` get the complete
    ones, and "length" tells them the answer was cut). With `describe` (token id and raw logprob to
    TokenLogprob, None for a token left out such as EOS) each event carries the log-probabilities
    of the tokens its text covers; the last event carries those of any text held back.

    `decode` reads a whole answer's ids; with `incremental` (a new stream's own `TextStep`) each token
    costs its own text rather than a decode of the whole answer so far (text that may still change is
    read for stop strings but not sent), and the last token's step decodes the whole answer once, so
    the result is exactly `decode`'s.
    """

    def __init__(self, steps: Iterable[Step], decode: Callable[[list[int]], str], prompt_tokens: int,
                 stop: Sequence[str], cancel: Callable[[], None] = lambda: None, *, trim: bool = True,
                 tool_tag: str | None = None,
                 read_calls: Callable[[str], tuple[str, tuple[ToolCall, ...], bool]] | None = None,
                 describe: Callable[[int, RawLogprob], TokenLogprob | None] | None = None,
                 incremental: IncrementalDecoder | None = None) -> None:
        self._steps = steps
        self._decode = decode
        self._incremental = incremental
        self.prompt_tokens = prompt_tokens
        self._stop = stop
        self._cancel = cancel
        self._trim = trim
        self._tool_tag = tool_tag
        self._read_calls = read_calls
        self._describe = describe
        self.result: GenerationResult | None = None

    def cancel(self) -> None:
        self._cancel()

    def __iter__(self) -> Iterator[StreamEvent]:
        ids: list[int] = []
        ends: list[int] = []  # the decoded text's length after each token: which tokens a delta covers
        described: list[TokenLogprob | None] = []
        sent, given, raw = "", 0, ""
        unsure = 0  # how many of raw's last characters later tokens may still change (never sent)
        finish = "length"
        step = self._incremental() if self._incremental is not None else None
        try:
            for token, reason, *rest in self._steps:  # a step without a logprob may be a pair
                logprob = rest[0] if rest else None
                ids.append(token)
                if step is not None and reason is None:
                    try:
                        got = step(token)
                    except Exception:  # the library's decoder cannot read on from its window (a decoder whose
                        step = None  # text changes further back): whole decodes from here on
                    else:
                        waiting = got is None
                        if got is not None and (unsure or got[1]):
                            raw, unsure = raw[:len(raw) - unsure] + got[0] + got[1], len(got[1])
                        elif got is not None:
                            raw += got[0]
                if step is None or reason is not None:
                    raw, unsure = self._decode(ids), 0
                    waiting = raw.endswith("\ufffd")  # an incomplete UTF-8 sequence: wait for its next byte
                    ends.append(len(raw))
                else:  # a token whose character is not complete yet ends past the text (as its U+FFFD would)
                    ends.append(len(raw) + waiting)
                if self._describe is not None:
                    described.append(self._describe(token, logprob) if logprob is not None else None)
                cut = self._find_stop(raw, final=reason is not None)
                if cut is not None:
                    raw, reason = raw[:cut], "stop"
                    self._cancel()
                if reason is not None:
                    finish = reason
                    break
                if waiting:
                    continue
                text, lead = self._sendable(raw, unsure)
                if len(text) > len(sent) and text.startswith(sent):
                    covered = given
                    while covered < len(ends) and ends[covered] <= lead + len(text):
                        covered += 1
                    yield StreamEvent(text[len(sent):], logprobs=_present(described[given:covered]))
                    sent, given = text, covered
            else:  # the steps ended without a reason (cancelled): the answer so far, decoded whole
                if step is not None and ids:
                    raw = self._decode(ids)
        finally:
            self._cancel()  # a no-op for a finished sequence; frees one whose consumer left early
        calls: tuple[ToolCall, ...] = ()
        if self._tool_tag is not None and self._read_calls is not None and self._tool_tag in raw:
            raw, calls, whole = self._read_calls(raw)
            if calls and whole:
                finish = "tool_calls"
        final = (raw.strip() if self._trim else raw) if ids else ""
        logprobs = _present(described) if self._describe is not None else None
        self.result = GenerationResult(final, self.prompt_tokens, len(ids), finish, logprobs, calls)
        yield StreamEvent(final[len(sent):] if final.startswith(sent) else "", self.result,
                          _present(described[given:]))

    def run(self) -> GenerationResult:
        """Consume the stream and return its result (the non-streaming path)."""
        for _event in self:
            pass
        assert self.result is not None
        return self.result

    def _sendable(self, raw: str, unsure: int) -> tuple[str, int]:
        """The text that can be sent now (not the last `unsure` characters), and where it starts in `raw` (after
        leading whitespace)."""
        raw = raw[:len(raw) - unsure]
        if self._tool_tag is not None and (at := raw.find(self._tool_tag)) >= 0:
            raw = raw[:at]
        raw = raw[: len(raw) - self._held_tail(raw)]
        if not self._trim:
            return raw, 0
        text = raw.lstrip()
        return text.rstrip(), len(raw) - len(text)

    def _find_stop(self, raw: str, *, final: bool) -> int | None:
        """Where the first stop string starts in the text before the tool tag (before a tail that may still
        become the tag, unless no token follows)."""
        end = len(raw)
        if self._tool_tag is not None:
            at = raw.find(self._tool_tag)
            if at >= 0:
                end = at
            elif not final:
                end -= self._partial_tag(raw)
        found = [i for i in (raw.find(s, 0, end) for s in self._stop) if i >= 0]
        return min(found) if found else None

    def _partial_tag(self, raw: str) -> int:
        assert self._tool_tag is not None
        for k in range(min(len(self._tool_tag) - 1, len(raw)), 0, -1):
            if raw.endswith(self._tool_tag[:k]):
                return k
        return 0

    def _held_tail(self, raw: str) -> int:
        """How many trailing characters could be the start of a stop string (or of the tool-call tag)."""
        held = 0
        for s in (*self._stop, *((self._tool_tag,) if self._tool_tag else ())):
            for k in range(min(len(s) - 1, len(raw)), held, -1):
                if raw.endswith(s[:k]):
                    held = k
                    break
        return held


def _present(logprobs: Sequence[TokenLogprob | None]) -> tuple[TokenLogprob, ...]:
    return tuple(lp for lp in logprobs if lp is not None)
