"""Constrained decoding: OpenAI's `response_format` (and the tool-call grammar of inference/tools.py) as an
llguidance grammar, matched token by token while a runtime decodes, so the output always parses.

A runtime builds one `Grammars` when it loads: llguidance's view of the tokenizer (every token's bytes,
which tokens are special, the EOS tokens). Each constrained request gets its own `Matcher` when it is
queued, so a schema llguidance cannot enforce is that request's 400, never a failure mid-stream. Each
step the matcher says which tokens may come next (EOS only where the grammar is complete) and then
consumes the token that was picked.

Every grammar is written in llguidance's Lark dialect, a JSON schema as a `%json` rule, so an answer
format and tool calls combine into one grammar. Between JSON tokens the grammar allows one space, or a
newline and at most 20 spaces or tabs of indentation (enough for pretty printing), so a model cannot
loop on whitespace until its budget runs out.

`strict: true` is a guarantee: a schema with anything llguidance cannot enforce is refused (a 400
naming the field) when the request is queued. `strict: false` is best effort, as OpenAI's non-strict
mode guarantees nothing: the schema is compiled leniently, keywords llguidance does not support are
not enforced, and the rest is. The schema `false` matches nothing and is refused either way.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from forgeflow.chat import OutputFormat
from forgeflow.errors import InvalidInput

log = logging.getLogger("forgeflow.grammar")

WHITESPACE = r"(?:\x20|\n[\x20\t]{0,20})?"
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def json_rule(schema: Any, *, strict: bool) -> str:
    """A Lark `%json` fragment that matches JSON valid against `schema` (an object, or `true`: any JSON)."""
    options: dict[str, Any] = {"whitespace_pattern": WHITESPACE}
    if not strict:
        options["lenient"] = True
    if schema is True:
        schema = {}
    return "%json " + json.dumps({**schema, "x-guidance": options})


def output_rule(output: OutputFormat) -> str:
    """The Lark fragment for a `response_format`: any JSON object, or JSON matching the schema."""
    if output.kind == "json_object":
        return json_rule(ANY_OBJECT, strict=True)
    if output.schema is False:
        raise InvalidInput("response_format.json_schema.schema is `false`, which no answer can match: send a "
                           "schema an answer can satisfy (`true` or {} allows any JSON)", field="response_format")
    return json_rule(output.schema if output.schema is not None else {}, strict=output.strict)


class Grammars:
    """A runtime's grammar compiler: llguidance's tokenizer, built once per loaded model (it walks the
    whole vocabulary), and a `Matcher` per constrained request."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int], vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.unavailable: str | None = None
        self.tokenizer: Any = None
        try:
            import llguidance.hf

            n_vocab = vocab_size if vocab_size > len(tokenizer) else None
            self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=list(eos_ids))
        except Exception as exc:  # a slow (Python) tokenizer, or one llguidance cannot read
            self.unavailable = f"{type(exc).__name__}: {exc}"
            log.warning("constrained decoding is unavailable for this tokenizer: %s", self.unavailable)

    def matcher(self, lark: str, *, field: str, hint: str = "") -> Matcher:
        """A fresh matcher for the grammar; a grammar llguidance rejects is InvalidInput naming `field`
        (its message ending with `hint`)."""
        from llguidance import LLMatcher

        if self.tokenizer is None:
            raise InvalidInput(f"{field} needs constrained decoding, which this model's tokenizer does not support "
                               f"({self.unavailable}): use a model with a fast (tokenizers) tokenizer", field=field)
        matcher = LLMatcher(self.tokenizer, LLMatcher.grammar_from_lark(lark), log_level=0)
        if not matcher.is_error():
            matcher.compute_bitmask()  # a grammar that compiles but no answer can begin (`{"$ref": "#"}`) fails here
        if matcher.is_error():
            raise InvalidInput(f"{field} cannot be enforced: {_first_line(matcher.get_error())}{hint}", field=field)
        return Matcher(matcher, self.vocab_size, field)

    def check(self, lark: str) -> str | None:
        """Why llguidance rejects the grammar, or None when it accepts it (used to find which part is at fault)."""
        from llguidance import LLMatcher

        if self.tokenizer is None:
            return self.unavailable
        is_error, messages = LLMatcher.validate_grammar_with_warnings(LLMatcher.grammar_from_lark(lark),
                                                                       self.tokenizer)
        return _first_line(messages[0]) if is_error and messages else None

    def is_special(self, text: str) -> bool:
        """Whether llguidance reads `text` as one special token (so a grammar names it as `<text>`)."""
        if self.tokenizer is None:
            return False
        ids = self.tokenizer.tokenize_str(text, parse_special=True)
        return len(ids) == 1 and self.tokenizer.is_special_token(ids[0])

    def token_bytes(self, token: int) -> bytes | None:
        """The exact bytes a token stands for (None when llguidance is unavailable)."""
        if self.tokenizer is None or token >= self.tokenizer.vocab_size:
            return None
        return self.tokenizer.decode_bytes([token])


class Matcher:
    """One request's grammar state: which tokens may come next, advanced by each token picked."""

    def __init__(self, matcher: Any, vocab_size: int, field: str = "response_format") -> None:
        self._matcher = matcher
        self.vocab_size = vocab_size
        self.field = field

    def allowed(self) -> np.ndarray:
        """A boolean mask over the model's vocabulary of the tokens the grammar allows next. A grammar that
        reaches a state no answer can leave (a schema that recurses without end) is the request's 400."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        mask = np.unpackbits(bits, bitorder="little").astype(bool)
        if self._matcher.is_error():
            raise InvalidInput(f"{self.field} cannot be satisfied: {_first_line(self._matcher.get_error())}",
                               field=self.field)
        if len(mask) >= self.vocab_size:
            return mask[: self.vocab_size]
        return np.concatenate([mask, np.zeros(self.vocab_size - len(mask), dtype=bool)])

    def consume(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {_first_line(self._matcher.get_error())}")

    @property
    def finished(self) -> bool:
        """Whether nothing but the end of the answer can follow."""
        return self._matcher.is_stopped()


def _first_line(message: str) -> str:
    """llguidance's message without its grammar listing or the position in a grammar the caller never wrote."""
    line = message.strip().splitlines()[0] if message.strip() else "the grammar is not valid"
    return re.sub(r"^at \d+\(\d+\): ", "", line)
