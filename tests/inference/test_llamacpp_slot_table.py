"""The llamacpp runtime's slot table against a model of llama.cpp's unified KV cache (cells held by sets of
sequences, `seq_cp` adding a sequence to the source's cells, a cell free once no sequence holds it): a request the
table admits can run to its end beside the running ones and the idle prefixes left cached, and every slot says
exactly which positions its sequence holds. No model is needed."""

from __future__ import annotations

import random

import pytest

from forgeflow.inference.batching import Sequence
from forgeflow.inference.runtimes.llamacpp_slots import SlotTable


class UnifiedCells:
    """The bookkeeping of a unified KV cache of `n_ctx` cells, as llama.cpp's `llama_memory_seq_rm`/`seq_cp` keep it."""

    def __init__(self, n_ctx: int) -> None:
        self.n_ctx = n_ctx
        self.holders: dict[int, set[int]] = {}  # cell -> the sequences holding it
        self.cell: dict[tuple[int, int], int] = {}  # (sequence, position) -> cell
        self._next = 0

    def write(self, seq_id: int, positions: range) -> None:
        for pos in positions:
            assert (seq_id, pos) not in self.cell, f"sequence {seq_id} already holds position {pos}"
            self.holders[self._next] = {seq_id}
            self.cell[seq_id, pos] = self._next
            self._next += 1

    def forget(self, seq_id: int, start: int = 0) -> bool:
        for (seq, pos) in [key for key in self.cell if key[0] == seq_id and key[1] >= start]:
            cell = self.cell.pop((seq, pos))
            self.holders[cell].discard(seq)
            if not self.holders[cell]:
                del self.holders[cell]
        return True

    def share(self, source: int, target: int, length: int) -> None:
        for pos in range(length):
            assert (source, pos) in self.cell, f"the donor {source} no longer holds position {pos}"
            self.cell[target, pos] = cell = self.cell[source, pos]
            self.holders[cell].add(target)

    def used(self) -> int:
        return len(self.holders)

    def positions(self, seq_id: int) -> set[int]:
        return {pos for seq, pos in self.cell if seq == seq_id}


def table(n_ctx: int, n_slots: int) -> tuple[SlotTable, UnifiedCells]:
    engine = UnifiedCells(n_ctx)
    return SlotTable(engine, n_slots, prefix_cache=True), engine


def cache(engine: UnifiedCells, slot, tokens: list[int], *, used: int, seq: Sequence | None = None) -> None:
    slot.cached, slot.used, slot.seq = list(tokens), used, seq
    engine.write(slot.seq_id, range(len(tokens)))


def check(slots: SlotTable, engine: UnifiedCells) -> None:
    """Every slot's sequence holds exactly its cached positions, and the running requests can all reach their
    end beside what stays cached."""
    for slot in slots.slots:
        assert engine.positions(slot.seq_id) == set(range(len(slot.cached))), f"slot {slot.seq_id}"
    to_come = sum(slot.need - len(slot.cached) for slot in slots.running())
    assert engine.used() + to_come <= engine.n_ctx


def test_the_slot_counted_is_the_slot_taken():
    """A request whose best-sharing idle slot is let go to make room still goes where room was made for it: had
    the table chosen again after letting caches go, a slot sharing 3 of its tokens (half of its 6) would now win
    and the 45 cells of the least recently used slot, counted as let go, would stay: 109 cells of 100 at the end."""
    slots, engine = table(100, 4)
    running, x, y, lru = slots.slots
    common = list(range(1000, 1008))
    cache(engine, running, common + [1, 1], used=0, seq=Sequence(common + [1, 1], 30))  # needs 40 in all
    cache(engine, x, common[:5] + [2] * 29, used=2)  # shares 5 of its 34: less than half, not taken
    cache(engine, y, common[:3] + [3] * 3, used=3)  # shares 3 of its 6: taken only if the others go
    cache(engine, lru, [4] * 45, used=1)
    new = Sequence(common + [9] * 4, 20)  # needs 32, shares 8 with the running request
    placement = slots.room_for(new)
    assert placement is not None
    slot = slots.place(new, placement)
    assert slot is lru and slot.cached == common  # its own cache let go, the running request's prefix copied
    check(slots, engine)


@pytest.mark.parametrize("seed", range(4))
def test_whatever_is_admitted_fits_to_its_end(seed):
    """Random tables (running requests part way through, idle prefixes under two adapters, prompts sharing
    prefixes) and a new request each: admitted, it and the running ones reach their end within the cells."""
    rng = random.Random(seed)
    admitted = 0
    for _ in range(500):
        n_ctx = rng.randrange(30, 120)
        slots, engine = table(n_ctx, 4)

        def tokens(n: int) -> list[int]:  # few distinct tokens: prefixes are often shared
            return [rng.choice((1, 2, 3)) for _ in range(n)]

        room = n_ctx
        for slot in slots.slots:
            adapter = rng.choice((None, None, "a"))
            if rng.random() < 0.4 and room > 4:
                prompt = tokens(rng.randrange(2, min(room, 30)))
                seq = Sequence(prompt, rng.randrange(1, max(2, min(room - len(prompt), 30))), adapter=adapter)
                if seq.max_new_tokens + len(prompt) > room:
                    continue
                room -= len(prompt) + seq.max_new_tokens
                done = rng.randrange(0, len(prompt) + seq.max_new_tokens)  # prompt read part way, or answer begun
                cache(engine, slot, (prompt + tokens(seq.max_new_tokens))[:done], used=0, seq=seq)
                slot.adapter = adapter
            else:
                cache(engine, slot, tokens(rng.randrange(0, 40)), used=rng.randrange(1, 100))
                slot.adapter = adapter
        if not slots.idle():
            continue
        check_room = sum(s.need - len(s.cached) for s in slots.running()) + engine.used() - \
            sum(len(s.cached) for s in slots.idle())
        assert check_room <= n_ctx  # the running requests fit before the new one comes
        prompt = tokens(rng.randrange(2, 30))
        new = Sequence(prompt, rng.randrange(1, max(2, n_ctx - len(prompt))), adapter=rng.choice((None, "a")))
        if len(prompt) + new.max_new_tokens > n_ctx:
            continue
        placement = slots.room_for(new)
        if placement is None:
            assert slots.running(), "a request that fits alone was refused with nothing running"
            continue
        slots.place(new, placement)
        admitted += 1
        check(slots, engine)
    assert admitted > 100
