"""The `llamacpp` runtime's slots: one llama.cpp sequence id each, holding a running request or, once idle, the
tokens of its last request (prompt and answer) with a host copy of their KV cells (llama.cpp's per-sequence state).
An idle slot holds no cells in the context, so the running requests have all of it to grow in and attend over
their own cells only: llama.cpp's CPU attention for a lone sequence shares the context's cells among its threads
by position, and a thread whose share is another sequence's cells has nothing to do (bench/README.md, tenth pass:
11% of a lone stream's speed at two threads). A new request takes the idle slot whose cache shares the longest
prefix with its prompt (a chat's next turn) when that is at least half of the slot's cache, else the least
recently used idle slot, and puts the shared prefix back into its cells; a longer prefix shared with any other
slot (a system prompt many users share) comes from that slot instead: a running slot's cells are shared, an idle
slot's copy is put back (as llama.cpp's own server reuses its slots and keeps prompts in host memory). Host
copies are bounded in bytes (`max_bytes`), least recently used let go first. Cached prefixes are keyed by adapter: KV
computed under one LoRA adapter is not the KV of another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forgeflow.inference.batching import Sequence


@dataclass(eq=False)
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # the tokens at positions 0.. of its KV cells (running), or of
    # its host copy (idle)
    saved: Any = None  # an idle slot's host copy of its cells (None: nothing cached)
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

    def __init__(self, engine: Any, n_slots: int, *, prefix_cache: bool, max_bytes: int) -> None:
        self.engine = engine
        self.slots = [Slot(i) for i in range(n_slots)]
        self.prefix_cache = prefix_cache
        self.max_bytes = max_bytes
        self.reused = 0  # prompt tokens whose KV came from the cache
        self.hits = 0  # requests that reused some
        self._clock = 0
        self._joins = 0

    def running(self) -> list[Slot]:
        return [s for s in self.slots if s.seq is not None]

    def idle(self) -> list[Slot]:
        return [s for s in self.slots if s.seq is None]

    def room_for(self, seq: Sequence) -> Placement | None:
        """Where `seq` goes if it can run to its end beside the running requests without the KV cache running out,
        else None. Only running requests hold cells; cells it shares with a running slot count once."""
        slot, donor, reused = self._choose(seq)
        running = sum(s.need for s in self.running())
        shared = reused if donor is not None and donor.seq is not None else 0
        if running and running + len(seq.prompt) + seq.max_new_tokens - shared > self.engine.n_ctx:
            return None
        return Placement(slot, donor, reused)

    def place(self, seq: Sequence, placement: Placement) -> Slot:
        """Give `seq` the idle slot `room_for` chose, its KV holding the longest cached prefix it can reuse: a
        running donor's cells shared, else a host copy put back and cut to the prefix; a copy that cannot come
        back (no room beside the running requests) gives way to the longest prefix a running slot shares, and
        with none the prompt is read whole."""
        slot, donor, keep = placement.slot, placement.donor, placement.keep
        own = (slot.saved, len(slot.cached))
        slot.cached, slot.saved = [], None  # until the engine holds what the slot says, it says nothing
        self.engine.forget(slot.seq_id)  # (a failed call leaves it so)
        if keep:
            kept = self._put(slot, donor, own, keep)
            if not kept and (donor is None or donor.seq is None):  # the copy could not come back: a running
                runner = max(self.running(), key=lambda s: self._share(s, seq), default=None)  # slot's cells, then
                if runner is not None and self._share(runner, seq):
                    kept = self._put(slot, runner, own, self._share(runner, seq))
            keep = kept
        prompt = seq.prompt
        slot.cached, slot.feed, slot.adapter, slot.seq = prompt[:keep], prompt[keep:], seq.adapter, seq
        self._joins += 1
        slot.joined = self._joins
        self.reused += keep
        self.hits += keep > 0
        return slot

    def _put(self, slot: Slot, donor: Slot | None, own: tuple[Any, int], keep: int) -> int:
        """Give `slot`'s sequence the first `keep` positions: a running donor's cells shared, or a host copy (the
        donor's, else the slot's own) put back and cut; how many it then holds as a decode needs them (0: none,
        its cells let go: no room for the copy beside the running requests, or a cut llama.cpp cannot make)."""
        if donor is not None and donor.seq is not None:
            self.engine.share(donor.seq_id, slot.seq_id, keep)
        else:
            copy, length = own if donor is None else (donor.saved, len(donor.cached))
            if donor is not None:  # a copy in use is not the least recently used
                self._clock += 1
                donor.used = self._clock
            # counted as if no cells were shared: a copy that may not fit is not tried (llama.cpp logs an error)
            if sum(len(s.cached) for s in self.running()) + length <= self.engine.n_ctx and \
                    self.engine.restore(slot.seq_id, copy):
                self.engine.forget(slot.seq_id, keep)
        if self.engine.holds(slot.seq_id, keep):
            return keep
        self.engine.forget(slot.seq_id)
        return 0

    def _choose(self, seq: Sequence) -> tuple[Slot, Slot | None, int]:
        """The idle slot `seq` takes, the other slot it copies a longer shared prefix from (None if none), and
        how many prompt tokens it reuses. The idle slot sharing most is taken only when that share is at least
        half of what it caches (llama.cpp server's rule), so a request that shares a system prompt with another
        chat copies it rather than cutting that chat's history; else the least recently used idle slot."""
        idle = self.idle()

        def share(slot: Slot) -> int:
            return self._share(slot, seq)

        slot = max(idle, key=lambda s: (share(s), -s.used))
        if share(slot) == 0 or share(slot) < len(slot.cached) // 2:  # an empty one before one holding a copy
            slot = min(idle, key=lambda s: (s.saved is not None, s.used))
        keep = share(slot)
        # a running donor before a copy of the same prefix (its own included): its cells are shared, not copied
        # again (requests that arrive together with one system prompt share one set of cells)
        donor = max((s for s in self.slots if s is not slot), key=lambda s: (share(s), s.seq is not None),
                    default=None)
        if donor is not None and (share(donor) > keep or share(donor) == keep > 0 and donor.seq is not None):
            return slot, donor, share(donor)
        return slot, None, keep

    def _share(self, slot: Slot, seq: Sequence) -> int:
        """How many of `seq`'s prompt tokens `slot`'s cache can give it."""
        if not self.prefix_cache or slot.adapter != seq.adapter:
            return 0
        return shared_prefix(slot.cached, seq.prompt)

    def release(self, slot: Slot, *, keep: bool = True) -> None:
        """The slot's request ended: its cells are copied to host memory for a later request (`keep` and the prefix
        cache on, and the copy within the bound: the least recently used copies make room first), then let go,
        and the slot goes idle (last, so whoever sees it idle sees its copy)."""
        copy = None
        if keep and self.prefix_cache and slot.cached:
            size = self.engine.saved_size(slot.seq_id)
            if 0 < size <= self.max_bytes:
                held = sorted((s for s in self.idle() if s.saved is not None), key=lambda s: s.used)
                total = sum(len(s.saved) for s in held)
                for oldest in held:
                    if total + size <= self.max_bytes:
                        break
                    total -= len(oldest.saved)
                    self.drop(oldest)
                copy = self.engine.save(slot.seq_id, size)
        self.engine.forget(slot.seq_id)
        self._clock += 1
        slot.saved, slot.used, slot.feed = copy, self._clock, []
        if copy is None:
            slot.cached = []
        slot.seq = None

    def drop(self, slot: Slot) -> None:
        """Forget a slot's cached tokens (its cells are freed, its host copy let go)."""
        self.engine.forget(slot.seq_id)
        slot.cached, slot.saved = [], None

    def reset(self) -> None:
        """The engine's cache was emptied (the requests running have been ended): slots hold no cells; idle ones'
        host copies are their own, and stay."""
        for slot in self.slots:
            if slot.saved is None:
                slot.cached = []

    def stats(self) -> dict[str, int]:
        return {"slots": len(self.slots), "running": len(self.running()),
                "cached_tokens": sum(len(s.cached) for s in self.idle()),
                "cached_bytes": sum(len(copy) for s in self.idle() if (copy := s.saved) is not None),
                "prefix_hits": self.hits, "prefix_tokens_reused": self.reused}
