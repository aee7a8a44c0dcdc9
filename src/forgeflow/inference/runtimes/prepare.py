"""What both runtimes do to a request before queuing it: its prompt (a chat and its tools through the chat
template, or a raw prompt as it is), its sampler (penalties, logit bias, grammar, log-probabilities), and
how its stream reads the tokens back into text, tool calls and log-probabilities.

Everything a request can be refused for is refused here, when it is queued (a 400 naming the field), so
a stream never fails for its request's sake.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from forgeflow.chat import ChatRequest
from forgeflow.errors import InvalidInput
from forgeflow.inference.grammar import Grammars, Matcher, output_rule
from forgeflow.inference.runtimes.base import (IncrementalDecoder, PromptEncoder, RawLogprob, Step, TextStep,
                                               TokenLogprob, TokenStream)
from forgeflow.inference.sampling import Sampler
from forgeflow.inference.tools import ToolTemplate

MAX_TOP_LOGPROBS = 20


@dataclass
class Prepared:
    """A request ready to queue: prompt ids, token budget, sampler, and its stream's settings."""

    prompt: list[int]
    budget: int
    sampler: Sampler
    make_stream: Callable[[Iterable[Step], Callable[[], None]], TokenStream]

    def stream(self, steps: Iterable[Step], cancel: Callable[[], None]) -> TokenStream:
        """The request's TokenStream over the runtime's steps for it."""
        return self.make_stream(steps, cancel)


class RequestPreparer:
    """One loaded model's way to prepare requests: its prompt encoder, grammar compiler (llguidance's view
    of the tokenizer, built once here) and chat template's tool support."""

    def __init__(self, tokenizer: Any, *, max_positions: int | None, vocab_size: int,
                 eos_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.max_positions = max_positions
        self.vocab_size = vocab_size
        self.eos = frozenset(eos_ids)
        self.prompts = PromptEncoder(tokenizer, max_positions)
        self.grammars = Grammars(tokenizer, list(eos_ids), vocab_size)
        self.tools = ToolTemplate(tokenizer, self.grammars)
        self._texts: dict[int, tuple[str, tuple[int, ...]]] = {}
        self._drop = self._dropped()
        self._decode_tags = self._tag_decoder()
        self._incremental = incremental_decoder(tokenizer)
        self._incremental_tags = (incremental_decoder(tokenizer, keep_special=True, drop=self._drop)
                                  if self._decode_tags else None)

    def prepare(self, request: ChatRequest) -> Prepared:
        """The request's prompt, budget and sampler; InvalidInput names whatever this model cannot honour."""
        self._check_sampling(request)
        self.tools.check(request)
        if request.prompt is not None:
            prompt = self.prompts.encode_prompt(request.prompt)
        else:
            prompt = self.prompts.encode(self.tools.chat(request.messages),
                                         request.tools.definitions if request.tools else None)
        budget = request.max_new_tokens
        if self.max_positions:
            budget = min(budget, self.max_positions - len(prompt))
        matcher, tag = self._grammar(request)
        sampler = Sampler(request.sampling, matcher=matcher, logprobs=request.logprobs)
        tags = bool(tag and self._decode_tags)
        decode = self._decode_tags if tags else self._decode
        incremental = self._incremental_tags if tags else self._incremental

        def make_stream(steps: Iterable[Step], cancel: Callable[[], None]) -> TokenStream:
            return TokenStream(steps, decode, len(prompt), request.stop, cancel, trim=request.prompt is None,
                               tool_tag=tag, read_calls=self.tools.parse if tag else None,
                               describe=self._describe if request.logprobs is not None else None,
                               incremental=incremental)

        return Prepared(prompt, budget, sampler, make_stream)

    def _check_sampling(self, request: ChatRequest) -> None:
        """The bounds of the HTTP contract (chat/wire.py), again for requests built in Python: a value out of
        range would overflow the sampler's arithmetic or its generator's seed."""
        if request.logprobs is not None and not 0 <= request.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidInput(f"top_logprobs must be from 0 to {MAX_TOP_LOGPROBS}", field="top_logprobs")
        s = request.sampling
        if not s.greedy:
            _number(s.temperature, "temperature", 0, math.inf, "a finite number >= 0")
            _number(s.top_p, "top_p", 0, 1, "a number > 0 and <= 1")
            if s.top_p <= 0:
                raise InvalidInput("top_p must be a number > 0 and <= 1", field="top_p")
            if not _integer(s.top_k) or s.top_k < 0:
                raise InvalidInput("top_k must be an integer >= 0 (0: no top-k cut)", field="top_k")
        if s.seed is not None and (not _integer(s.seed) or not -(2**63) <= s.seed < 2**63):
            raise InvalidInput("seed must be an integer that fits in 64 bits (signed)", field="seed")
        _number(s.frequency_penalty, "frequency_penalty", -2, 2, "a number from -2 to 2")
        _number(s.presence_penalty, "presence_penalty", -2, 2, "a number from -2 to 2")
        for token, bias in s.logit_bias:
            if not _integer(token) or not 0 <= token < self.vocab_size:
                raise InvalidInput(f"logit_bias names token {token}, which is not in this model's vocabulary "
                                   f"(ids 0 to {self.vocab_size - 1})", field="logit_bias")
            _number(bias, "logit_bias", -100, 100, f"a map of token ids to biases from -100 to 100 (token {token})")

    def _grammar(self, request: ChatRequest) -> tuple[Matcher | None, str | None]:
        """The request's matcher (for its response_format and tools) and the tag its stream holds text at."""
        answer = output_rule(request.output) if request.output is not None else None
        alone = f"start: answer\nanswer: {answer}\n"
        hint = (" (with strict false, keywords forgeflow cannot enforce are ignored)"
                if request.output is not None and request.output.strict else "")
        if answer is not None and request.tools is None:
            return self.grammars.matcher(alone, field="response_format", hint=hint), None
        if answer is not None and (why := self.grammars.check(alone)):
            raise InvalidInput(f"response_format cannot be enforced: {why}{hint}", field="response_format")
        if request.tools is None:
            return None, None
        lark, tag = self.tools.grammar(request.tools, answer)
        try:
            return self.grammars.matcher(lark, field="tools"), tag
        except InvalidInput as exc:
            field = self.tools.locate(request.tools) if self.grammars.tokenizer is not None else None
            if field is None:
                raise
            raise InvalidInput(f"{field} cannot be enforced: {self.grammars.check(lark)}", field=field) from exc

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _tag_decoder(self) -> Callable[[list[int]], str] | None:
        """A decoder that keeps the tool-call tags when the tokenizer has them as special tokens (which the
        plain decoder drops), so the calls can be read back; None when the tags are ordinary text."""
        drop = self._drop
        if drop is None:
            return None
        return lambda ids: self.tokenizer.decode([i for i in ids if i not in drop], skip_special_tokens=False)

    def _dropped(self) -> frozenset[int] | None:
        """The special tokens the tag decoder leaves out (all but the tool-call tags); None without one."""
        fmt = self.tools.format
        if fmt is None:
            return None
        special = {i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special}
        tags = {i for i, t in self.tokenizer.added_tokens_decoder.items() if t.content in (fmt.open, fmt.close)}
        return frozenset(special - tags) if tags & special else None

    def _describe(self, token: int, raw: RawLogprob) -> TokenLogprob | None:
        """The TokenLogprob of a generated token (None for an end-of-answer token, which OpenAI never shows)."""
        if token in self.eos:
            return None
        text, data = self._text(token)
        logprob, top = raw
        return TokenLogprob(text, logprob, data, tuple((self._text(i)[0], lp) for i, lp in top))

    def _text(self, token: int) -> tuple[str, tuple[int, ...]]:
        known = self._texts.get(token)
        if known is None:
            data = self.grammars.token_bytes(token)
            if data is None:
                data = self.tokenizer.decode([token]).encode()
            known = self._texts[token] = (data.decode("utf-8", errors="replace"), tuple(data))
        return known


def incremental_decoder(tokenizer: Any, *, keep_special: bool = False,
                        drop: frozenset[int] | None = None) -> IncrementalDecoder | None:
    """A new stream's incremental decoder (`base.TextStep`: a token -> the text it adds for good and the text after
    that which later tokens may still change, None while it adds none yet), from the tokenizers library
    (`DecodeStream`, which reads a token's text in the window of the tokens before it), where it gives what the
    tokenizer's `decode` gives: a fast tokenizer. `drop`: tokens read as no text. None for other tokenizers: their
    streams decode the whole answer at each token."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    clean = None
    if _cleans_up(tokenizer, backend):
        from transformers import PreTrainedTokenizerBase

        if getattr(type(tokenizer), "clean_up_tokenization", None) is not PreTrainedTokenizerBase.clean_up_tokenization:
            return None  # a clean-up of its own, which may reach further back than transformers' does
        clean = tokenizer.clean_up_tokenization
    from tokenizers.decoders import DecodeStream

    def start() -> TextStep:
        stream = DecodeStream(skip_special_tokens=not keep_special)

        def read(token: int) -> str | None:
            return "" if drop is not None and token in drop else stream.step(backend, token)

        if clean is not None:
            return _cleaning(read, clean)

        def step(token: int) -> tuple[str, str] | None:
            piece = read(token)
            return None if piece is None else (piece, "")

        return step

    return start


def _cleans_up(tokenizer: Any, backend: Any) -> bool:
    """Whether the tokenizer's `decode` cleans up spaces after the library's decoder: transformers does it in
    Python, over the whole text, when the tokenizer says so, for models other than BPE unless told to for BPE too."""
    if not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return False
    return type(backend.model).__name__ != "BPE" or bool(getattr(
        tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))


# the texts transformers' clean-up of spaces replaces, in its order (PreTrainedTokenizerBase.clean_up_tokenization)
CLEAN_UPS = (" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're")
_CLEAN_UP_CHARS = frozenset("".join(CLEAN_UPS))
_CLEAN_UP_REACH = max(len(c) for c in CLEAN_UPS) - 1  # how far a clean-up reaches past its space


def _cleaning(read: Callable[[int], str | None], clean: Callable[[str], str]) -> TextStep:
    """`read` (a token -> the text it adds, None while it adds none yet) with transformers' clean-up of spaces, text
    by text. Each clean-up starts at a space and only removes spaces, so text cut where no clean-up can reach across
    the cut (`_can_cut`) cleans up alone as it does within the whole text. What follows the last such cut is the
    step's text that may still change: cleaned as if the answer ended there, which is what a whole decode of the
    answer so far says."""
    before, pending = "", ""  # the last characters given for good (as decoded, before cleaning), and the rest

    def cleaned(token: int) -> tuple[str, str] | None:
        nonlocal before, pending
        piece = read(token)
        if piece is None:
            return None
        text = before + pending + piece
        cut, known = len(text), len(before) + len(pending)  # the cuts up to `known` were refused already
        while cut > known and not _can_cut(text, cut):
            cut -= 1
        cut = len(before) if cut == known else cut
        given = text[len(before):cut]
        before, pending = text[max(0, cut - _CLEAN_UP_REACH):cut], text[cut:]
        return (clean(given) if given else ""), (clean(pending) if pending else "")

    return cleaned


def _can_cut(text: str, at: int) -> bool:
    """Whether no clean-up can reach across `at` whatever follows it: none of the characters a clean-up reaches
    past its space is a space, or after the last space comes a character that no clean-up has. (Removing spaces
    only brings a clean-up's space nearer what follows it; the characters after the last space all stay.)"""
    if " " not in text[max(0, at - _CLEAN_UP_REACH):at]:
        return True
    return any(c not in _CLEAN_UP_CHARS for c in text[text.rfind(" ", 0, at) + 1:at])


def _number(value: Any, field: str, low: float, high: float, rule: str) -> None:
    """Refuse a value that is not a finite number from `low` to `high`, naming the field."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not low <= value <= high):
        raise InvalidInput(f"{field} must be {rule}", field=field)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
