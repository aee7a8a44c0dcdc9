"""Answers sampled at the gateway for a rollout's judge: per deployment a bounded reservoir of (the prompt's
messages, the answer's text), kept in memory only while a rollout with a judge watches that deployment, never
logged nor stored. The leader's rollout controller says which deployments to watch (`watch`, `keep_only`) and
takes each step's sample (`take`); the gateway offers every answered chat request of a watched deployment
(`offer`), and a reservoir keeps a uniform sample of them however many come.
"""

from __future__ import annotations

import random
import threading
from typing import Any

from forgeflow.serving.records import Key


class AnswerSamples:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._size: dict[Key, int] = {}
        self._kept: dict[Key, list[dict[str, Any]]] = {}
        self._seen: dict[Key, int] = {}

    def watch(self, key: Key, size: int) -> None:
        """Sample up to `size` answers of the deployment from now on (until `keep_only` leaves it out)."""
        with self._lock:
            self._size[key] = size
            self._kept.setdefault(key, [])
            self._seen.setdefault(key, 0)

    def keep_only(self, keys: set[Key]) -> None:
        """Stop sampling every deployment but these, dropping what was kept of the others."""
        with self._lock:
            for key in set(self._size) - keys:
                del self._size[key], self._kept[key], self._seen[key]

    def wants(self, key: Key) -> bool:
        return key in self._size  # read on the event loop: one dict lookup

    def offer(self, key: Key, messages: list[dict[str, Any]], answer: str) -> None:
        """One answered request; kept with the reservoir's odds (size / answers seen so far)."""
        with self._lock:
            size = self._size.get(key)
            if size is None:
                return
            seen = self._seen[key] = self._seen[key] + 1
            kept = self._kept[key]
            item = {"messages": messages, "answer": answer}
            if len(kept) < size:
                kept.append(item)
            elif (slot := random.randrange(seen)) < size:
                kept[slot] = item

    def count(self, key: Key) -> int:
        """How many answers the deployment's reservoir holds now."""
        with self._lock:
            return len(self._kept.get(key, ()))

    def take(self, key: Key) -> list[dict[str, Any]]:
        """The sample so far, and a fresh reservoir for the next step."""
        with self._lock:
            kept = self._kept.get(key, [])
            if key in self._size:
                self._kept[key], self._seen[key] = [], 0
            return kept
