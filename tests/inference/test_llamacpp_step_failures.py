"""What a failure inside a llamacpp step costs, and what it must not: a full KV cache fails a request still reading
its prompt, not the request already answering beside it in the same llama_decode; an adapter the context could
not apply is given back like any other use (it can still be evicted); a ServerUnavailable raised by a step while
the runtime is not closing fails that step's requests and the worker serves on."""

from __future__ import annotations

import importlib.util
import queue

import pytest
from llamacpp_requests import TEXTS, ids_of, never_ending, submit
from tiny import build_tiny_adapter
from waiting import wait_until

from forgeflow.errors import ForgeflowError, ServerUnavailable
from forgeflow.inference.batching import Sequence

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python is not installed: pip install 'forgeflow[llamacpp]'")

A = "tuned-1:1"


@pytest.fixture(scope="module")
def runtime(tools_model_dir, tmp_path_factory):
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime

    adapter = build_tiny_adapter(tools_model_dir, tmp_path_factory.mktemp("adapter") / "a1", seed=1)
    runtime = LlamaCppRuntime(tools_model_dir, threads=1, adapters={A: adapter})
    yield runtime
    runtime.close()


def within(seq: Sequence, seconds: float = 60) -> list[int]:
    """The sequence's token ids; fails rather than hangs when its end does not come."""
    ids = []
    while True:
        try:
            item = seq.out.get(timeout=seconds)
        except queue.Empty:
            pytest.fail(f"no end of the request within {seconds} s: the worker stopped serving")
        if isinstance(item, BaseException):
            raise item
        if not isinstance(item, tuple):  # the end marker
            return ids
        ids.append(item[0])


def idle(runtime) -> None:
    wait_until(lambda: runtime.health()["running"] == 0, 10, "every slot let go")


def given_back(runtime) -> None:
    """Every adapter use ended (a request's ends just after its slot is let go)."""
    wait_until(lambda: runtime.adapters.stats()["in_use"] == {}, 10, "no adapter in use")


def test_a_full_kv_cache_fails_the_prompt_being_read_not_the_answer_beside_it(runtime, monkeypatch):
    solo = ids_of(submit(runtime, never_ending(runtime))[1])
    prepared = runtime.requests.prepare(never_ending(runtime, TEXTS[3]))
    late = Sequence(prepared.prompt, prepared.budget, prepared.sampler)
    decode, calls = runtime.engine.decode, []

    def decode_or_fail(entries):  # on the worker: the second request joins once the first is answering
        running = runtime.slots.running()
        if not calls and len(running) == 1 and running[0].seq.generated == 3:
            runtime.waiting.put_nowait(late)
        if not calls and len(running) == 2 and late.generated == 0:
            calls.append(len(entries))
            return 1  # llama.cpp found no room for the batch
        return decode(entries)

    monkeypatch.setattr(runtime.engine, "decode", decode_or_fail)
    first = submit(runtime, never_ending(runtime))[1]
    with pytest.raises(ServerUnavailable, match="KV cache is full"):
        within(late)
    assert calls and calls[0] > 2  # the failed call held the first's token and the late prompt
    assert within(first) == solo  # decoded on, without the late prompt, to its own answer
    idle(runtime)
    assert runtime.failure is None


def test_an_adapter_the_context_could_not_apply_is_given_back(runtime, monkeypatch):
    solo = ids_of(submit(runtime, never_ending(runtime), A)[1])
    idle(runtime)
    use, failed = runtime.engine.use_adapter, []

    def use_or_fail(handle):
        if handle is not None and not failed:
            failed.append(handle)
            raise ForgeflowError("llama.cpp could not apply the LoRA adapter to its context")
        return use(handle)

    monkeypatch.setattr(runtime.engine, "use_adapter", use_or_fail)
    with pytest.raises(ForgeflowError, match="could not apply"):
        within(submit(runtime, never_ending(runtime), A)[1])
    assert failed
    given_back(runtime)  # nothing holds it: it can be evicted
    assert within(submit(runtime, never_ending(runtime), A)[1]) == solo
    given_back(runtime)


def test_server_unavailable_from_a_step_while_open_fails_the_step_and_the_worker_serves_on(runtime, monkeypatch):
    solo = ids_of(submit(runtime, never_ending(runtime))[1])
    decode, raised = runtime.engine.decode, []

    def decode_or_raise(entries):
        if not raised:
            raised.append(True)
            raise ServerUnavailable("an instance-level refusal from inside a step")
        return decode(entries)

    monkeypatch.setattr(runtime.engine, "decode", decode_or_raise)
    with pytest.raises(ServerUnavailable, match="instance-level refusal"):
        within(submit(runtime, never_ending(runtime))[1])
    assert within(submit(runtime, never_ending(runtime))[1], 30) == solo  # not left queued behind a stopped worker
    assert runtime.failure is None
