"""llama.cpp decodes only on the llamacpp runtime's worker thread, its start included: a decode on another thread
(the one that builds the runtime) leaves OpenMP a second team of threads, and the worker's decodes then ran ~25%
slower (bench/README.md, tenth pass)."""

from __future__ import annotations

import importlib.util
import threading

import pytest

from forgeflow.chat import chat_request

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python is not installed: pip install 'forgeflow[llamacpp]'")


def test_only_the_worker_thread_decodes(tools_model_dir, monkeypatch):
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime
    from forgeflow.inference.runtimes.llamacpp_engine import LlamaEngine

    threads, decode = [], LlamaEngine.decode

    def recorded(self, entries):
        threads.append(threading.current_thread().name)
        return decode(self, entries)

    monkeypatch.setattr(LlamaEngine, "decode", recorded)
    runtime = LlamaCppRuntime(tools_model_dir, threads=1, max_batch_size=2)
    try:
        assert runtime.generate(chat_request([{"role": "user", "content": "hi"}], temperature=0,
                                             max_new_tokens=3)).completion_tokens == 3
        assert runtime.slots.max_bytes > 0  # the worker measured the host copies' bound before serving
    finally:
        runtime.close()
    assert threads and set(threads) == {"forgeflow-llamacpp"}


def test_a_context_that_cannot_be_measured_fails_the_start(tools_model_dir, monkeypatch):
    """The worker's first act decodes; a context that cannot fails the runtime's start (a load failure the model
    server reports before it is ready), not the first requests after it said it was ready."""
    from forgeflow.errors import ForgeflowError
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime
    from forgeflow.inference.runtimes.llamacpp_engine import LlamaEngine

    def cannot(self, n_seq):
        raise ForgeflowError("llama.cpp could not decode a token in a fresh context")

    closed, close = [], LlamaEngine.close
    monkeypatch.setattr(LlamaEngine, "measure_kv", cannot)
    monkeypatch.setattr(LlamaEngine, "close", lambda self: closed.append(True) or close(self))
    with pytest.raises(ForgeflowError, match="worker stopped: ForgeflowError: llama.cpp could not decode"):
        LlamaCppRuntime(tools_model_dir, threads=1, max_batch_size=2)
    assert closed  # the engine was freed once the worker had stopped
