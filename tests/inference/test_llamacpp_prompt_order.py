"""The order in which the llamacpp runtime reads prompts (needs the `llamacpp` extra): prompts that arrive together
start in turn, a step's prompt tokens past the first prompt's chunk stay within `prefill_budget`, and a prompt
longer than a step holds no shorter one back for all its steps, nor is it starved by them. Every answer is still
the one its request gets alone."""

from __future__ import annotations

import importlib.util
import threading

import pytest
from llamacpp_requests import TEXTS, chat, ids_of, submit
from waiting import wait_until

from forgeflow.chat import chat_request
from forgeflow.errors import InvalidInput

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python is not installed: pip install 'forgeflow[llamacpp]'")


class Recorder:
    """Wraps the engine's decode: the first step waits until `release()` (so the requests queued meanwhile all join
    before the next step), and every step's entries are kept with which request each sequence id holds."""

    def __init__(self, runtime, monkeypatch) -> None:
        self.runtime, self.steps, self.held = runtime, [], threading.Event()
        self.decode = runtime.engine.decode
        monkeypatch.setattr(runtime.engine, "decode", self.recording)

    def recording(self, entries):
        self.held.wait(30)
        holders = {slot.seq_id: slot.seq for slot in self.runtime.slots.slots if slot.seq is not None}
        self.steps.append([(token, pos, holders[seq_id], logits) for token, pos, seq_id, logits in entries])
        return self.decode(entries)

    def release(self) -> None:
        self.held.set()

    def first_token_step(self, seq) -> int:
        """The step whose logits gave `seq` its first token."""
        return next(i for i, entries in enumerate(self.steps) if any(s is seq and wants for *_, s, wants in entries))

    def prompt_tokens(self, seq) -> list[int]:
        """How many tokens of `seq`'s prompt each step read, up to the one that gave its first token."""
        return [sum(1 for *_, s, _ in entries if s is seq) for entries in self.steps[:self.first_token_step(seq) + 1]]


def test_prompts_that_arrive_together_are_prefilled_in_turn(tools_model_dir, monkeypatch):
    """Prompts that join between the same two steps are prefilled in the order they joined, one prompt's chunk and
    then no more than `prefill_budget` tokens of the next per step: their first tokens come in different steps
    (one long step for all of them would hold every first token back), and each answer is still its solo one."""
    from forgeflow.inference.runtimes import llamacpp

    # no prefix cache: the solo runs would leave every prompt cached but its last token
    runtime = llamacpp.LlamaCppRuntime(tools_model_dir, threads=1, max_batch_size=5, prefill_budget=1,
                                       prefix_cache=False)
    try:
        requests = [chat_request(chat(t), temperature=0, max_new_tokens=6) for t in TEXTS[1:5]]
        solo = [ids_of(submit(runtime, r)[1]) for r in requests]
        recorder = Recorder(runtime, monkeypatch)
        _, blocker = submit(runtime, chat_request(chat(TEXTS[0]), temperature=0, max_new_tokens=40))
        wait_until(lambda: runtime.health()["running"] == 1, 30, "the first request began")
        seqs = [submit(runtime, r)[1] for r in requests]
        recorder.release()
        assert [ids_of(seq) for seq in seqs] == solo
        ids_of(blocker)
        firsts = [recorder.first_token_step(seq) for seq in [blocker, *seqs]]
        per_step = [firsts.count(i) for i in sorted(set(firsts))]
        assert max(per_step) <= 2 and len(per_step) >= 3, firsts
        with pytest.raises(InvalidInput, match="prefill_budget"):
            llamacpp.LlamaCppRuntime(tools_model_dir, threads=1, prefill_budget=0)
    finally:
        runtime.close()


def test_a_prompt_longer_than_a_step_holds_no_short_one_back(tools_model_dir, monkeypatch):
    """A step of 32 tokens: a prompt of many steps, then two short ones that joined after it. Each short one is read
    whole in one step beside the long one's chunk and answers before the long one has been read; the long one is
    read in every step until it is done (at least half of each), and every answer is its solo one."""
    from forgeflow.inference.runtimes import llamacpp

    monkeypatch.setattr(llamacpp, "N_BATCH", 32)
    runtime = llamacpp.LlamaCppRuntime(tools_model_dir, threads=1, max_batch_size=4, prefix_cache=False)
    try:
        long_text = " ".join(f"{word} {n}" for n, word in enumerate(["alpha", "beta", "gamma", "delta"] * 12))
        requests = [chat_request(chat(text), temperature=0, max_new_tokens=6) for text in (long_text, "x", "hi")]
        prompts = [runtime.requests.prepare(r).prompt for r in requests]
        assert len(prompts[0]) > 4 * 32 and all(len(p) <= 15 for p in prompts[1:]), [len(p) for p in prompts]
        solo = [ids_of(submit(runtime, r)[1]) for r in requests]
        recorder = Recorder(runtime, monkeypatch)
        _, blocker = submit(runtime, chat_request(chat(TEXTS[1]), temperature=0, max_new_tokens=60))
        wait_until(lambda: runtime.health()["running"] == 1, 30, "the first request began")
        seqs = [submit(runtime, r)[1] for r in requests]
        recorder.release()
        assert [ids_of(seq) for seq in seqs] == solo
        ids_of(blocker)
        long, shorts = seqs[0], seqs[1:]
        long_steps = recorder.prompt_tokens(long)
        for short in shorts:
            assert recorder.first_token_step(short) < recorder.first_token_step(long)
            read = [n for n in recorder.prompt_tokens(short) if n]
            assert read == [len(short.prompt)], read  # whole, in one step
        assert all(n >= 15 for n in long_steps[1:]), long_steps  # read in every step from the one it joined in
        assert all(len(entries) <= 32 for entries in recorder.steps)
    finally:
        runtime.close()
