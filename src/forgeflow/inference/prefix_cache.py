"""The prefix cache of the `transformers` runtime: the KV cache of finished sequences, kept so that a later
prompt starting with the same tokens (a chat's next turn, a system prompt shared across users) prefills only
the rest.

Entries are (adapter, tokens, per-layer keys and values), least recently used let go past a bound on the
tokens held. They are found as vLLM finds its blocks: each full block of BLOCK tokens of an entry is indexed
by a hash chained over the blocks before it, a prompt walks its own block hashes as deep as they are indexed,
and the match then extends token by token along the entry found. Tokens are compared, not only hashed, so a
hash collision costs a miss, never a wrong answer. The scheduler's thread is the only caller of `find` and
`add`; `stats` may be read from any thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

BLOCK = 16  # tokens per indexed block: a prompt reuses whole blocks, then whatever of the found entry matches
DEFAULT_MAX_TOKENS = 32768


@dataclass(eq=False)
class _Entry:
    adapter: str | None
    tokens: tuple[int, ...]
    kv: list[tuple[Any, Any]]  # per layer: keys, values as [1, heads, len(tokens), dim]
    keys: list[tuple[str | None, int]]


class PrefixCache:
    """An LRU store of finished sequences' KV, bounded by `max_tokens` tokens in all."""

    def __init__(self, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        self.max_tokens = max(0, int(max_tokens))
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._index: dict[tuple[str | None, int], dict[int, _Entry]] = {}
        self._lock = threading.Lock()
        self.tokens = 0
        self.lookups = self.hits = self.reused_tokens = self.evictions = 0

    def find(self, adapter: str | None, prompt: list[int]) -> tuple[int, list[tuple[Any, Any]]]:
        """The longest stored prefix of `prompt` under `adapter`, leaving at least its last token to run (its
        logits pick the first new token): (its length, per-layer keys and values cut to it), or (0, [])."""
        limit = len(prompt) - 1
        with self._lock:
            self.lookups += 1
            found, length = None, 0
            for key in _block_keys(adapter, prompt[:limit]):
                candidates = self._index.get(key)
                if not candidates:
                    break
                found = candidates
            if found:
                for entry in found.values():
                    common = _common_prefix(entry.tokens, prompt, limit)
                    if common > length:
                        best, length = entry, common
            if length < BLOCK:
                return 0, []
            self._entries.move_to_end(id(best))
            self.hits += 1
            self.reused_tokens += length
            return length, [(k[:, :, :length], v[:, :, :length]) for k, v in best.kv]

    def add(self, adapter: str | None, tokens: list[int], kv: list[tuple[Any, Any]]) -> None:
        """Keep a finished sequence's KV (`kv` per layer as [1, heads, len(tokens), dim], not shared with a
        running batch). An entry that is a prefix of it is dropped; one that already holds it is only
        refreshed."""
        tokens = tuple(tokens[:self.max_tokens])
        if len(tokens) < BLOCK:
            return
        kv = [(k[:, :, :len(tokens)], v[:, :, :len(tokens)]) for k, v in kv]
        keys = _block_keys(adapter, tokens)
        with self._lock:
            for entry in self._index.get(keys[-1], {}).values():
                if entry.tokens[:len(tokens)] == tokens:  # already held, as much or more
                    self._entries.move_to_end(id(entry))
                    return
            seen: set[int] = set()
            for key in keys:
                for entry in list(self._index.get(key, {}).values()):
                    if id(entry) in seen:
                        continue
                    seen.add(id(entry))
                    # a kept prefix of this sequence: its last block is this one's, and its tail matches
                    blocks = len(entry.keys)
                    if (len(entry.tokens) <= len(tokens) and entry.keys[-1] == keys[blocks - 1]
                            and tokens[blocks * BLOCK:len(entry.tokens)] == entry.tokens[blocks * BLOCK:]):
                        self._drop(entry)
            entry = _Entry(adapter, tokens, kv, keys)
            self._entries[id(entry)] = entry
            for key in keys:
                self._index.setdefault(key, {})[id(entry)] = entry
            self.tokens += len(tokens)
            while self.tokens > self.max_tokens and self._entries:
                self._drop(next(iter(self._entries.values())))
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._index.clear()
            self.tokens = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._entries), "tokens": self.tokens, "max_tokens": self.max_tokens,
                    "lookups": self.lookups, "hits": self.hits, "reused_tokens": self.reused_tokens,
                    "evictions": self.evictions}

    def _drop(self, entry: _Entry) -> None:
        del self._entries[id(entry)]
        self.tokens -= len(entry.tokens)
        for key in entry.keys:
            held = self._index.get(key)
            if held is not None:
                held.pop(id(entry), None)
                if not held:
                    del self._index[key]


def _block_keys(adapter: str | None, tokens: tuple[int, ...] | list[int]) -> list[tuple[str | None, int]]:
    """The index key of each full block of `tokens`: a hash chained over every block before it."""
    keys, chained = [], hash(adapter)
    for start in range(0, len(tokens) - BLOCK + 1, BLOCK):
        chained = hash((chained, tuple(tokens[start:start + BLOCK])))
        keys.append((adapter, chained))
    return keys


def _common_prefix(stored: tuple[int, ...], prompt: list[int], limit: int) -> int:
    n = min(len(stored), limit)
    for i in range(n):
        if stored[i] != prompt[i]:
            return i
    return n
