"""The `llamacpp` runtime's slots: one llama.cpp sequence id each, holding a running request or, once idle, the
tokens its KV cells still cache. A new request takes the idle slot whose cache shares the longest prefix with
its prompt (a chat's next turn) when that is at least half of the slot's cache, else the least recently used idle
slot, and copies a longer shared prefix from any other slot (a system prompt many users share), as llama.cpp's own
server reuses its slots. Cached prefixes
are keyed by adapter: KV computed under one LoRA adapter is not the KV of another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forgeflow.inference.batching import Sequence


@dataclass(eq=False)
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # the tokens at positions 0.. of this sequence's KV cells
    adapter: str | None = None
    seq: Sequence | None = None
    feed: list[int] = field(default_factory=list)  # tokens to decode next: the prompt's rest, or the last pick
    used: int = 0  # when it last ended a request (least recently used idle slots are taken first)
    joined: int = 0  # when its request was placed (prompts are prefilled in this order)

    @property
    def need(self) -> int:
        """Cells this slot may hold by its request's end."""
        if self.seq is None:
            return len(self.cached)
        return len(self.seq.prompt) + self.seq.max_new_tokens


@dataclass(frozen=True)
class Placement:
    """Where a request goes: its slot, the slot it copies a longer shared prefix from (or None), and how many prompt
    tokens it reuses."""
    slot: Slot
    donor: Slot | None
    keep: int


def shared_prefix(cached: list[int], prompt: list[int]) -> int:
    """How many leading tokens `prompt` shares with `cached`; the prompt's last token is always left to
    evaluate, for its logits."""
    n = 0
    for a, b in zip(cached, prompt[:-1]):
        if a != b:
            break
        n += 1
    return n


class SlotTable:
    """The slots of one context of `n_ctx` cells, and the prefix cache over them."""

    def __init__(self, engine: Any, n_slots: int, *, prefix_cache: bool) -> None:
        self.engine = engine
        self.slots = [Slot(i) for i in range(n_slots)]
        self.prefix_cache = prefix_cache
        self.reused = 0  # prompt tokens whose KV came from the cache
        self.hits = 0  # requests that reused some
        self._clock = 0
        self._joins = 0

    def running(self) -> list[Slot]:
        return [s for s in self.slots if s.seq is not None]

    def idle(self) -> list[Slot]:
        return [s for s in self.slots if s.seq is None]

    def room_for(self, seq: Sequence) -> Placement | None:
        """Where `seq` goes if it can run beside the running requests without the KV cache running out, else None.
        Cached idle prefixes are let go to make room, least recently used first and the one `seq` would copy last;
        the prefix kept in its own slot counts once, as part of its need. `place` takes exactly this placement:
        choosing again after the drops could pick a slot whose cache was counted as let go but never was."""
        slot, donor, reused = self._choose(seq)
        running = sum(s.need for s in self.running())
        need = len(seq.prompt) + seq.max_new_tokens

        def shared() -> int:  # cells it would share with the donor, while the donor still holds them
            return reused if donor is not None and len(donor.cached) >= reused else 0

        if running and running + need - (shared() if donor is not None and donor.seq is not None else 0) \
                > self.engine.n_ctx:
            return None
        others = [s for s in self.idle() if s is not slot]
        for candidate in sorted(others, key=lambda s: (s is donor, s.used)):
            if running + need - shared() + sum(s.need for s in others) <= self.engine.n_ctx:
                break
            self.drop(candidate)
        if donor is not None and not shared():  # the donor was let go: only the slot's own cache is reused
            return Placement(slot, None, self._share(slot, seq))
        return Placement(slot, donor, reused)

    def place(self, seq: Sequence, placement: Placement) -> Slot:
        """Give `seq` the idle slot `room_for` chose, its KV holding the longest cached prefix it can reuse."""
        slot, donor, keep = placement.slot, placement.donor, placement.keep
        slot.cached = []  # until the engine holds what the slot says, it says nothing (a failed call leaves it so)
        if donor is not None:
            self.engine.forget(slot.seq_id)
            self.engine.share(donor.seq_id, slot.seq_id, keep)
        elif not self.engine.forget(slot.seq_id, keep):  # llama.cpp keeps no partial sequences of this model
            self.engine.forget(slot.seq_id)  # (recurrent): start afresh
            keep = 0
        prompt = seq.prompt
        slot.cached, slot.feed, slot.adapter, slot.seq = prompt[:keep], prompt[keep:], seq.adapter, seq
        self._joins += 1
        slot.joined = self._joins
        self.reused += keep
        self.hits += keep > 0
        return slot

    def _choose(self, seq: Sequence) -> tuple[Slot, Slot | None, int]:
        """The idle slot `seq` takes, the other slot it copies a longer shared prefix from (None if none), and
        how many prompt tokens it reuses. The idle slot sharing most is taken only when that share is at least
        half of what it caches (llama.cpp server's rule), so a request that shares a system prompt with another
        chat copies it rather than cutting that chat's history; else the least recently used idle slot."""
        idle = self.idle()

        def share(slot: Slot) -> int:
            return self._share(slot, seq)

        slot = max(idle, key=lambda s: (share(s), -s.used))
        if share(slot) == 0 or share(slot) < len(slot.cached) // 2:
            slot = min(idle, key=lambda s: s.used)
        keep = share(slot)
        donor = max((s for s in self.slots if s is not slot), key=share, default=None)
        if donor is not None and share(donor) > keep:
            return slot, donor, share(donor)
        return slot, None, keep

    def _share(self, slot: Slot, seq: Sequence) -> int:
        """How many of `seq`'s prompt tokens `slot`'s cache can give it."""
        if not self.prefix_cache or slot.adapter != seq.adapter:
            return 0
        return shared_prefix(slot.cached, seq.prompt)

    def release(self, slot: Slot) -> None:
        """The slot's request ended: it goes idle, its cache kept for a later request."""
        self._clock += 1
        slot.seq, slot.feed, slot.used = None, [], self._clock

    def drop(self, slot: Slot) -> None:
        """Forget a slot's cached tokens (its cells are freed)."""
        self.engine.forget(slot.seq_id)
        slot.cached = []

    def stats(self) -> dict[str, int]:
        return {"slots": len(self.slots), "running": len(self.running()),
                "cached_tokens": sum(len(s.cached) for s in self.idle()),
                "prefix_hits": self.hits, "prefix_tokens_reused": self.reused}
