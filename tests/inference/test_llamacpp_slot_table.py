"""The llamacpp runtime's slot table against a model of llama.cpp's unified KV cache (cells held by sets of
sequences, `seq_cp` adding a sequence to the source's cells, a cell free once no sequence holds it, a sequence's
state saved to the host and put back into free cells): only running requests hold cells, a request the table
admits can run to its end beside the running ones, a reused prefix comes back as exactly the positions it covers,
and host copies stay within their bound. No model is needed."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from forgeflow.inference.batching import Sequence
from forgeflow.inference.runtimes.llamacpp_slots import SlotTable

CELL_BYTES = 10  # what the model's host copy of a cell takes


@dataclass(frozen=True)
class Copy:
    tokens: tuple[int, ...]  # the tokens at positions 0.. of the sequence it copies

    def __len__(self) -> int:
        return len(self.tokens) * CELL_BYTES


class UnifiedCells:
    """The bookkeeping of a unified KV cache of `n_ctx` cells, as llama.cpp's `llama_memory_seq_rm`/`seq_cp` and
    `llama_state_seq_get_data`/`set_data` keep it: a cell holds a token and the sequences that hold it."""

    def __init__(self, n_ctx: int) -> None:
        self.n_ctx = n_ctx
        self.holders: dict[int, set[int]] = {}  # cell -> the sequences holding it
        self.token: dict[int, int] = {}  # cell -> its token
        self.cell: dict[tuple[int, int], int] = {}  # (sequence, position) -> cell
        self._next = 0

    def write(self, seq_id: int, tokens: list[int], start: int = 0) -> None:
        """Decode `tokens` at positions `start`.. of `seq_id`."""
        for pos, token in enumerate(tokens, start=start):
            assert (seq_id, pos) not in self.cell, f"sequence {seq_id} already holds position {pos}"
            self.holders[self._next], self.token[self._next] = {seq_id}, token
            self.cell[seq_id, pos] = self._next
            self._next += 1

    def forget(self, seq_id: int, start: int = 0) -> bool:
        for (seq, pos) in [key for key in self.cell if key[0] == seq_id and key[1] >= start]:
            cell = self.cell.pop((seq, pos))
            self.holders[cell].discard(seq)
            if not self.holders[cell]:
                del self.holders[cell], self.token[cell]
        return True

    def share(self, source: int, target: int, length: int) -> None:
        for pos in range(length):
            assert (source, pos) in self.cell, f"the donor {source} does not hold position {pos}"
            self.cell[target, pos] = cell = self.cell[source, pos]
            self.holders[cell].add(target)

    def saved_size(self, seq_id: int) -> int:
        return len(self.tokens(seq_id)) * CELL_BYTES

    def save(self, seq_id: int, size: int) -> Copy:
        copy = Copy(tuple(self.tokens(seq_id)))
        assert len(copy) == size
        return copy

    def restore(self, seq_id: int, copy: Copy) -> bool:
        self.forget(seq_id)
        if self.used() + len(copy.tokens) > self.n_ctx:
            return False
        self.write(seq_id, list(copy.tokens))
        return True

    def holds(self, seq_id: int, length: int) -> bool:
        return self.positions(seq_id) == set(range(length))

    def used(self) -> int:
        return len(self.holders)

    def positions(self, seq_id: int) -> set[int]:
        return {pos for seq, pos in self.cell if seq == seq_id}

    def tokens(self, seq_id: int) -> list[int]:
        held = self.positions(seq_id)
        assert held == set(range(len(held))), "a sequence's positions run from 0"
        return [self.token[self.cell[seq_id, pos]] for pos in range(len(held))]


def table(n_ctx: int, n_slots: int, max_bytes: int = 10**9) -> tuple[SlotTable, UnifiedCells]:
    engine = UnifiedCells(n_ctx)
    return SlotTable(engine, n_slots, prefix_cache=True, max_bytes=max_bytes), engine


def run(slots: SlotTable, engine: UnifiedCells, slot, seq: Sequence, done: int) -> None:
    """`slot` runs `seq`, its first `done` tokens (prompt, then answer) in its cells."""
    slot.seq, slot.adapter = seq, seq.adapter
    slot.cached = (seq.prompt + [7] * seq.max_new_tokens)[:done]
    engine.write(slot.seq_id, slot.cached)


def idle(slots: SlotTable, engine: UnifiedCells, slot, tokens: list[int], *, adapter: str | None = None) -> None:
    """`slot` ran a request whose prompt and answer were `tokens`, and ended."""
    run(slots, engine, slot, Sequence(list(tokens), 1, adapter=adapter), len(tokens))
    slots.release(slot)


def check(slots: SlotTable, engine: UnifiedCells) -> None:
    """Running slots hold exactly their cached positions, idle ones none; the running requests can all reach their
    end; host copies stay within their bound."""
    for slot in slots.slots:  # the tokens in its cells, or in its copy, are the ones it says
        assert engine.tokens(slot.seq_id) == (slot.cached if slot.seq is not None else []), f"slot {slot.seq_id}"
        assert (slot.saved is not None) == (slot.seq is None and bool(slot.cached)), f"slot {slot.seq_id}"
        if slot.saved is not None:
            assert list(slot.saved.tokens) == slot.cached
    assert engine.used() + sum(slot.need - len(slot.cached) for slot in slots.running()) <= engine.n_ctx
    assert sum(len(slot.saved) for slot in slots.idle() if slot.saved is not None) <= slots.max_bytes


def admit(slots: SlotTable, seq: Sequence):
    placement = slots.room_for(seq)
    return None if placement is None else slots.place(seq, placement)


def test_a_chats_next_turn_gets_its_prefix_back_from_the_host_copy():
    slots, engine = table(100, 2)
    history = [1, 2, 3, 4, 5, 6]
    idle(slots, engine, slots.slots[0], history)
    assert engine.used() == 0  # idle: nothing in the context
    slot = admit(slots, Sequence(history + [8, 9], 10))
    assert slot is slots.slots[0] and slot.cached == history and slot.feed == [8, 9]
    assert slots.hits == 1 and slots.reused == 6
    check(slots, engine)


def test_a_prefix_shared_with_a_running_slot_shares_its_cells_and_with_an_idle_one_copies_it_back():
    slots, engine = table(100, 3)
    system = [1, 2, 3, 4]
    run(slots, engine, slots.slots[0], Sequence(system + [5], 20), 5)
    second = admit(slots, Sequence(system + [6], 20))
    assert second.cached == system and engine.used() == 5  # the four cells are shared, not copied
    slots.release(slots.slots[0])
    third = admit(slots, Sequence(system + [5, 9], 20))  # the first's own slot, its copy put back and cut
    assert third is slots.slots[0] and third.cached == system + [5]
    check(slots, engine)


def test_a_copy_that_finds_no_room_is_read_as_a_prompt_and_copies_past_the_bound_go_oldest_first():
    slots, engine = table(23, 3, max_bytes=12 * CELL_BYTES)
    idle(slots, engine, slots.slots[0], [1] * 8)
    idle(slots, engine, slots.slots[1], [2] * 10)  # 18 cells of copies: the older one goes
    assert slots.slots[0].cached == [] and slots.slots[1].cached == [2] * 10
    check(slots, engine)
    run(slots, engine, slots.slots[2], Sequence([3] * 4, 12), 15)  # needs 16 cells in all, holds 15 now
    # it shares 5 of that copy's 10 and needs 7 cells (16 + 7 = 23 fit), but the whole copy cannot come back
    late = admit(slots, Sequence([2] * 5 + [4], 1))
    assert late is slots.slots[1] and late.cached == [] and late.feed == [2] * 5 + [4] and slots.hits == 0
    check(slots, engine)


def test_a_failed_request_leaves_no_copy_and_an_emptied_cache_keeps_the_idle_ones():
    slots, engine = table(100, 2)
    idle(slots, engine, slots.slots[0], [1, 2, 3])
    run(slots, engine, slots.slots[1], Sequence([4, 5], 5), 3)
    slots.release(slots.slots[1], keep=False)
    assert slots.slots[1].cached == [] and slots.slots[1].saved is None and engine.used() == 0
    slots.reset()  # after the engine's cache was emptied
    slot = admit(slots, Sequence([1, 2, 3, 9], 4))
    assert slot is slots.slots[0] and slot.cached == [1, 2, 3]
    check(slots, engine)


def test_a_copy_another_request_reuses_counts_as_used_when_copies_make_room():
    slots, engine = table(100, 3, max_bytes=22 * CELL_BYTES)
    system = [1, 2, 3, 4]
    idle(slots, engine, slots.slots[0], system + [1] * 6)  # the oldest copy...
    idle(slots, engine, slots.slots[1], [2] * 6)
    third = admit(slots, Sequence(system + [5] * 6, 4))  # ...shares its system prompt with a new chat
    assert third is slots.slots[2] and third.cached == system
    engine.write(third.seq_id, third.feed, start=len(system))  # the rest of its prompt decodes
    third.cached += third.feed
    slots.release(third)  # 10 + 6 + 10 cells of copies: one must go, and not the one just used
    assert slots.slots[0].cached == system + [1] * 6 and slots.slots[1].cached == []
    check(slots, engine)


def test_requests_sharing_an_idle_copy_share_one_set_of_cells():
    """The first puts the copy back; the next ones share its cells rather than putting it back again."""
    slots, engine = table(100, 4)
    system = [1, 2, 3, 4, 5]
    idle(slots, engine, slots.slots[0], system + [9] * 8)
    firsts = [admit(slots, Sequence(system + [6 + i], 10)) for i in range(3)]
    assert all(slot.cached == system for slot in firsts)
    assert engine.used() == len(system)  # one set of cells, held by all three
    check(slots, engine)


def test_a_copy_that_cannot_come_back_gives_way_to_a_running_slots_prefix():
    slots, engine = table(40, 3)
    system = [1, 2, 3]
    idle(slots, engine, slots.slots[0], system + [4, 4, 4] + [8] * 24)  # shares 6 of its 30: not taken, a donor
    run(slots, engine, slots.slots[1], Sequence(system + [5] * 6, 10), 9 + 3)  # 12 cells, needs 19
    late = admit(slots, Sequence(system + [4, 4, 4, 6], 10))  # 14 cells: 19 + 14 fit, the 30-cell copy does not
    assert late is slots.slots[2] and late.cached == system and engine.used() == 12  # the running one's, shared
    check(slots, engine)


def test_an_empty_idle_slot_is_taken_before_one_holding_a_copy():
    slots, engine = table(100, 3)
    idle(slots, engine, slots.slots[0], [1, 2, 3])
    run(slots, engine, slots.slots[1], Sequence([5, 5], 4), 2)
    slots.release(slots.slots[1], keep=False)  # ended later, but left nothing
    run(slots, engine, slots.slots[2], Sequence([6, 6], 4), 2)
    assert admit(slots, Sequence([7, 7], 4)) is slots.slots[1]
    assert slots.slots[0].cached == [1, 2, 3]
    check(slots, engine)


@pytest.mark.parametrize("seed", range(4))
def test_whatever_is_admitted_fits_to_its_end(seed):
    """Random tables (running requests part way through, idle prefixes under two adapters, prompts sharing
    prefixes, a small bound on host copies) and a new request each: admitted, it and the running ones reach their
    end within the cells, and every slot holds what it says."""
    rng = random.Random(seed)
    admitted = reused = 0
    for _ in range(400):
        n_ctx = rng.randrange(30, 120)
        slots, engine = table(n_ctx, 4, max_bytes=rng.randrange(20, 80) * CELL_BYTES)

        def tokens(n: int) -> list[int]:  # few distinct tokens: prefixes are often shared
            return [rng.choice((1, 2, 3)) for _ in range(n)]

        for slot in slots.slots:  # earlier requests, ended
            if rng.random() < 0.7:
                idle(slots, engine, slot, tokens(rng.randrange(1, 40)), adapter=rng.choice((None, None, "a")))
        room = n_ctx
        for slot in slots.slots:  # some run again, part way through
            if rng.random() < 0.4 and room > 4:
                prompt = tokens(rng.randrange(2, min(room, 30)))
                new = Sequence(prompt, rng.randrange(1, max(2, min(room - len(prompt), 30))),
                               adapter=rng.choice((None, "a")))
                if len(prompt) + new.max_new_tokens <= room and (placed := admit(slots, new)) is not None:
                    room -= placed.need
        check(slots, engine)
        if not slots.idle():
            continue
        prompt = tokens(rng.randrange(2, 30))
        new = Sequence(prompt, rng.randrange(1, max(2, n_ctx - len(prompt))), adapter=rng.choice((None, "a")))
        if len(prompt) + new.max_new_tokens > n_ctx:
            continue
        before = slots.reused
        if admit(slots, new) is None:
            assert slots.running(), "a request that fits alone was refused with nothing running"
            continue
        admitted += 1
        reused += slots.reused > before
        check(slots, engine)
    assert admitted > 100 and reused > 20
