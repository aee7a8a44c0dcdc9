"""The prefix cache of the `transformers` runtime: the KV cache of finished sequences, kept so that a later
prompt starting with the same tokens (a chat's next turn, a system prompt shared across users) prefills only
the rest.

Entries are (adapter, tokens, per-layer keys and values), least recently used let go past a bound on the
bytes their keys and values hold (DEFAULT_MAX_BYTES, 256 MiB: a bound in tokens would mean 1.5 GB for 32k
tokens of SmolLM2-135M's float32 KV and 13 GB of SmolLM2-1.7B's). They are found as vLLM finds its blocks: each
full block of BLOCK tokens of an entry is indexed by a hash chained over the blocks before it, a prompt walks its
own block hashes as deep as they are indexed, and the match then extends token by token along the entry found. Tokens are compared, not only hashed, so a
hash collision costs a miss, never a wrong answer. The scheduler's thread is the only caller of `find` and
`add`; `stats` may be read from any thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

BLOCK = 16  # tokens per indexed block: a prompt reuses whole blocks, then whatever of the found entry matches
DEFAULT_MAX_BYTES = 256 * 2**20  # ~5,800 tokens of SmolLM2-135M's float32 KV, ~680 of SmolLM2-1.7B's


@dataclass(eq=False)
class _Entry:
    adapter: str | None
    tokens: tuple[int, ...]
    kv: list[tuple[Any, Any]]  # per layer: keys, values as [1, heads, len(tokens), dim]
    keys: list[tuple[str | None, int]]
    nbytes: int


class PrefixCache:
    """An LRU store of finished sequences' KV, bounded by `max_bytes` bytes of keys and values in all."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._index: dict[tuple[str | None, int], dict[int, _Entry]] = {}
        self._lock = threading.Lock()
        self.tokens = self.bytes = 0
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
        running batch), cut to the bound if it is longer. An entry that is a prefix of it is dropped; one that
        already holds it is only refreshed."""
        per_token = sum(_nbytes(k[:, :, :1]) + _nbytes(v[:, :, :1]) for k, v in kv)
        tokens = tuple(tokens[:self.max_bytes // per_token if per_token else 0])
        if len(tokens) < BLOCK:
            return
        if any(k.shape[2] > len(tokens) for k, _ in kv):  # copies: a view would hold on to all of it
            kv = [(k[:, :, :len(tokens)].clone(), v[:, :, :len(tokens)].clone()) for k, v in kv]
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
            entry = _Entry(adapter, tokens, kv, keys, per_token * len(tokens))
            self._entries[id(entry)] = entry
            for key in keys:
                self._index.setdefault(key, {})[id(entry)] = entry
            self.tokens += len(tokens)
            self.bytes += entry.nbytes
            while self.bytes > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries.values())))
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._index.clear()
            self.tokens = self.bytes = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._entries), "tokens": self.tokens, "bytes": self.bytes,
                    "max_bytes": self.max_bytes,
                    "lookups": self.lookups, "hits": self.hits, "reused_tokens": self.reused_tokens,
                    "evictions": self.evictions}

    def _drop(self, entry: _Entry) -> None:
        del self._entries[id(entry)]
        self.tokens -= len(entry.tokens)
        self.bytes -= entry.nbytes
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


def _nbytes(tensor: Any) -> int:
    return tensor.numel() * tensor.element_size()
