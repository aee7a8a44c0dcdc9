"""A llamacpp step that holds requests of two LoRA adapters decodes each adapter's requests in a llama_decode of
their own; when one of those calls fails, what happens to the other adapter's requests depends on why: a full KV
cache fails only the requests of that call (the others go on to their own answers), a failed decode fails every
running request (the context starts afresh) and the next requests get their answers again."""

from __future__ import annotations

import importlib.util

import pytest
from llamacpp_requests import ids_of, never_ending, submit
from tiny import build_tiny_adapter
from waiting import wait_until

from forgeflow.errors import ServerUnavailable

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python is not installed: pip install 'forgeflow[llamacpp]'")

A, B = "tuned-1:1", "tuned-2:1"


@pytest.fixture(scope="module")
def runtime(tools_model_dir, tmp_path_factory):
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime

    out = tmp_path_factory.mktemp("adapters")
    adapters = {name: build_tiny_adapter(tools_model_dir, out / f"a{seed}", seed=seed)
                for seed, name in ((1, A), (2, B))}
    runtime = LlamaCppRuntime(tools_model_dir, threads=1, adapters=adapters)
    yield runtime
    runtime.close()


def fail_once_for(runtime, adapter: str, status: int):
    """The engine's decode, returning `status` once: at the first call for `adapter`'s requests while two requests
    run, each past its third token (checked on the worker, so no step is missed)."""
    decode, failed = runtime.engine.decode, []

    def decode_or_fail(entries):
        running = runtime.slots.running()
        if not failed and runtime._current == adapter and len(running) == 2 and \
                all(slot.seq.generated > 2 for slot in running):
            failed.append(len(entries))
            return status
        return decode(entries)

    return decode_or_fail, failed


def both_running(runtime):
    """Each adapter's answer alone, then a request of each adapter, queued together."""
    solo = {name: ids_of(submit(runtime, never_ending(runtime), name)[1]) for name in (A, B)}
    return solo, {name: submit(runtime, never_ending(runtime), name)[1] for name in (A, B)}


def test_a_full_kv_cache_for_one_adapter_fails_only_its_requests(runtime, monkeypatch):
    decode, failed = fail_once_for(runtime, B, 1)  # 1: llama.cpp found no room for the batch
    monkeypatch.setattr(runtime.engine, "decode", decode)
    solo, seqs = both_running(runtime)
    with pytest.raises(ServerUnavailable, match="KV cache is full"):
        ids_of(seqs[B])
    assert failed == [1]  # B's request alone, in a llama_decode of its own
    assert ids_of(seqs[A]) == solo[A]  # the other adapter's request decoded on to its own answer
    wait_until(lambda: runtime.health()["running"] == 0, 10, "both slots let go")
    assert runtime.failure is None


def test_a_failed_decode_for_one_adapter_fails_every_running_request_and_the_context_recovers(runtime, monkeypatch):
    decode, failed = fail_once_for(runtime, B, -1)  # llama.cpp's "invalid batch": the context starts afresh
    monkeypatch.setattr(runtime.engine, "decode", decode)
    solo, seqs = both_running(runtime)
    for name in (A, B):  # A's KV went with the cache: it cannot go on either
        with pytest.raises(Exception, match="failed to decode"):
            ids_of(seqs[name])
    assert failed == [1] and runtime.failure is None
    for name in (A, B):  # the next requests get their answers again
        assert ids_of(submit(runtime, never_ending(runtime), name)[1]) == solo[name]
