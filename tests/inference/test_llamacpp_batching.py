"""The llamacpp runtime's continuous batching, prefix cache and LoRA adapters (needs the `llamacpp` extra): batched
greedy answers equal the ones each request gets alone, a request that leaves frees its slot, a cached prefix gives
the answer a cold prompt gives, and each adapter answers as transformers with PEFT does."""

from __future__ import annotations

import importlib.util
import threading

import pytest
from faults import first_call_fails, raises
from llamacpp_requests import TEXTS, chat, ids_of, submit
from tiny import build_tiny_adapter
from waiting import wait_until

from forgeflow.chat import ChatRequest, Sampling, chat_request
from forgeflow.errors import InvalidInput, ServerUnavailable

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python is not installed: pip install 'forgeflow[llamacpp]'")
def test_concurrent_greedy_answers_equal_solo_ones(llamacpp_runtime):
    runtime = llamacpp_runtime
    requests = [chat_request(chat(t), temperature=0, max_new_tokens=24) for t in TEXTS]
    solo = [ids_of(submit(runtime, r)[1]) for r in requests]
    assert len({tuple(s) for s in solo}) > 2  # the prompts give different answers
    together = [submit(runtime, r)[1] for r in requests]  # all queued before any is read: they run together
    assert [ids_of(s) for s in together] == solo
    assert runtime.health()["largest_batch"] > 1


def test_a_request_joining_midway_gets_its_solo_answer(llamacpp_runtime):
    runtime = llamacpp_runtime
    never_end = Sampling(logit_bias=tuple((eos, -100.0) for eos in runtime.eos_token_ids))
    late = chat_request(chat(TEXTS[1]), temperature=0, max_new_tokens=20)
    long = [ChatRequest(chat(t), 60, never_end) for t in TEXTS[2:5]]
    alone = ids_of(submit(runtime, late)[1])
    long_alone = [ids_of(submit(runtime, r)[1]) for r in long]
    running = [submit(runtime, r)[1] for r in long]
    wait_until(lambda: all(s.generated >= 5 for s in running), 30, "began answering")
    assert ids_of(submit(runtime, late)[1]) == alone
    assert [ids_of(s) for s in running] == long_alone


def test_a_consumer_that_leaves_frees_its_slot(llamacpp_runtime):
    runtime = llamacpp_runtime
    never_end = Sampling(logit_bias=tuple((eos, -100.0) for eos in runtime.eos_token_ids))
    events = iter(runtime.stream(ChatRequest(chat("tell me a story"), 1000, never_end)))
    next(events)
    assert runtime.health()["running"] >= 1
    served = runtime.health()["served"]
    events.close()  # the client went away
    wait_until(lambda: runtime.health()["running"] == 0, 30, "freed the slot")
    request = chat_request(chat("hi"), temperature=0, max_new_tokens=5)
    assert runtime.generate(request).completion_tokens > 0
    assert runtime.health()["served"] == served + 1  # the answer that ended, not the one left


def test_a_chats_next_turn_reuses_its_prefix_with_the_same_answer(llamacpp_runtime, tools_model_dir):
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime

    cold = LlamaCppRuntime(tools_model_dir, threads=1, max_batch_size=2, prefix_cache=False)
    try:
        warm = llamacpp_runtime
        turns = chat("What is the capital of France?")
        for question in ("and of Italy?", "why?", "0 1 2 3"):
            request = chat_request(turns, temperature=0, max_new_tokens=16)
            before = warm.health()["prefix_tokens_reused"]
            answer = warm.generate(request)
            assert answer == cold.generate(request)
            if len(turns) > 1:
                assert warm.health()["prefix_tokens_reused"] > before + len(warm.prompts.encode(turns[:1]))
            wait_until(lambda: warm.health()["running"] == 0, 10, "the slot let go")
            # what an idle slot caches is a host copy: its sequence holds no cells in the context
            assert warm.health()["cached_bytes"] > 0 and all(
                warm.engine.lc.llama_memory_seq_pos_max(warm.engine.memory, slot.seq_id) == -1
                for slot in warm.slots.idle())
            turns = [*turns, {"role": "assistant", "content": answer.text}, {"role": "user", "content": question}]
        assert cold.health()["prefix_tokens_reused"] == 0
    finally:
        cold.close()


def test_a_shared_system_prompt_is_copied_from_another_slot(llamacpp_runtime):
    runtime = llamacpp_runtime
    system = {"role": "system", "content": "You answer in riddles about the sea and ships and stars " * 3}
    first = chat_request([system, *chat("hi")], temperature=0, max_new_tokens=6)
    second = chat_request([system, *chat("x")], temperature=0, max_new_tokens=6)
    runtime.generate(first)
    before = runtime.health()["prefix_tokens_reused"]
    never_end = Sampling(logit_bias=tuple((eos, -100.0) for eos in runtime.eos_token_ids))
    # a running request holds the slot the first one used, so the second reuses the system prompt by copying it
    busy = iter(runtime.stream(ChatRequest([system, *chat("hi")], 200, never_end)))
    next(busy)
    got = runtime.generate(second)
    busy.close()
    assert runtime.health()["prefix_tokens_reused"] - before >= len(runtime.prompts.encode([system]))
    assert got == runtime.generate(second)


def test_another_chat_sharing_a_little_copies_it_and_leaves_the_first_chats_history(tools_model_dir):
    """Chat B shares only the template's opening with chat A's idle slot: it takes the other slot (copying what
    it shares), so A's next turn still reuses all of A's history."""
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime

    runtime = LlamaCppRuntime(tools_model_dir, threads=1, max_batch_size=2)
    try:
        turns = chat("What is the capital of France? Tell me about its rivers, bridges and old streets.")
        answer = runtime.generate(chat_request(turns, temperature=0, max_new_tokens=12))
        runtime.generate(chat_request(chat("What is"), temperature=0, max_new_tokens=4))  # chat B
        turns = [*turns, {"role": "assistant", "content": answer.text}, {"role": "user", "content": "why?"}]
        before = runtime.health()["prefix_tokens_reused"]
        runtime.generate(chat_request(turns, temperature=0, max_new_tokens=4))
        assert runtime.health()["prefix_tokens_reused"] - before > len(runtime.prompts.encode(turns[:1]))
    finally:
        runtime.close()


def test_a_turn_whose_cache_and_answer_fill_the_context_still_reuses_its_prefix(tools_model_dir, monkeypatch):
    """The prefix the request itself reuses comes back from its slot's host copy and counts once, as part of its
    own need, even when that need is the whole context."""
    from forgeflow.inference.runtimes import llamacpp

    monkeypatch.setattr(llamacpp, "MAX_SHARED_CONTEXT", 0)  # the cells of one longest request only
    runtime = llamacpp.LlamaCppRuntime(tools_model_dir, threads=1, max_batch_size=2)
    try:
        turns = chat("What is the capital of France?")
        answer = runtime.generate(chat_request(turns, temperature=0, max_new_tokens=8))
        turns = [*turns, {"role": "assistant", "content": answer.text}, {"role": "user", "content": "why?"}]
        before = runtime.health()["prefix_tokens_reused"]
        events = iter(runtime.stream(chat_request(turns, temperature=0, max_new_tokens=100000)))  # all the rest
        next(events)
        events.close()
        assert runtime.health()["prefix_tokens_reused"] - before >= len(runtime.prompts.encode(turns[:1]))
    finally:
        runtime.close()


def test_close_ends_running_requests(tools_model_dir):
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime

    runtime = LlamaCppRuntime(tools_model_dir, threads=1, max_batch_size=4)
    never_end = Sampling(logit_bias=tuple((eos, -100.0) for eos in runtime.eos_token_ids))
    streams = [iter(runtime.stream(ChatRequest(chat(t), 1000, never_end))) for t in TEXTS[:3]]
    for events in streams:
        next(events)
    runtime.close()
    for events in streams:
        with pytest.raises(ServerUnavailable):
            list(events)


# -- adapters --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapters(tools_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters")
    return {f"tuned-{seed}:1": build_tiny_adapter(tools_model_dir, out / f"a{seed}", seed=seed) for seed in (1, 2)}


@pytest.fixture(scope="module")
def peft_answers(tools_model_dir, adapters):
    """Greedy token ids transformers with PEFT gives each adapter (and the base, None) for a prompt's ids."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    models = {None: AutoModelForCausalLM.from_pretrained(tools_model_dir).eval()}
    for name, path in adapters.items():
        models[name] = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tools_model_dir), path).eval()
    cache: dict = {}

    def answer(adapter, prompt: list[int], n: int) -> list[int]:
        key = (adapter, tuple(prompt), n)
        if key not in cache:
            model = models[adapter]
            with torch.no_grad():
                out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                     dtype=torch.long), max_new_tokens=n, do_sample=False,
                                     eos_token_id=model.generation_config.eos_token_id, pad_token_id=0)
            cache[key] = out[0, len(prompt):].tolist()
        return cache[key]

    return answer


@pytest.fixture(scope="module")
def adapter_runtime(tools_model_dir, adapters):
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime

    runtime = LlamaCppRuntime(tools_model_dir, threads=1, adapters=adapters)
    yield runtime
    runtime.close()


def test_gguf_lora_file_names_and_permutes_like_the_base(tools_model_dir, adapters):
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from forgeflow.inference.gguf_export import _rope_permute
    from forgeflow.inference.gguf_lora import cached_gguf_lora

    path = cached_gguf_lora(adapters["tuned-1:1"], tools_model_dir)
    assert path.name == "forgeflow-lora.gguf" and path.parent == adapters["tuned-1:1"]
    assert cached_gguf_lora(adapters["tuned-1:1"], tools_model_dir).stat().st_mtime_ns == path.stat().st_mtime_ns
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 16.0
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert {"blk.0.attn_q.weight.lora_a", "blk.1.ffn_down.weight.lora_b"} <= set(tensors)
    peft = load_file(str(adapters["tuned-1:1"] / "adapter_model.safetensors"))
    b = next(v for k, v in peft.items() if "layers.0.self_attn.k_proj.lora_B" in k)
    a = next(v for k, v in peft.items() if "layers.0.self_attn.k_proj.lora_A" in k)
    assert np.array_equal(tensors["blk.0.attn_k.weight.lora_b"], _rope_permute(b, 2))
    assert np.array_equal(tensors["blk.0.attn_k.weight.lora_a"], a)


def test_each_adapter_answers_as_peft_does(adapter_runtime, peft_answers):
    runtime = adapter_runtime
    answers = {}
    for adapter in (None, "tuned-1:1", "tuned-2:1"):
        prompt, seq = submit(runtime, chat_request(chat(TEXTS[1]), temperature=0, max_new_tokens=12), adapter)
        answers[adapter] = ids_of(seq)
        assert answers[adapter] == peft_answers(adapter, prompt, 12), adapter
    assert len({tuple(a) for a in answers.values()}) == 3  # each adapter answers its own way
    with pytest.raises(InvalidInput) as unknown:
        runtime.stream(chat_request(chat("hi")), adapter="tuned-9:1")
    assert unknown.value.field == "model"


def test_a_mixed_batch_gives_each_request_its_adapters_answer(adapter_runtime, peft_answers):
    runtime = adapter_runtime
    jobs = [(adapter, text) for text in TEXTS[:3] for adapter in (None, "tuned-1:1", "tuned-2:1")]
    queued = [(adapter, *submit(runtime, chat_request(chat(text), temperature=0, max_new_tokens=10), adapter))
              for adapter, text in jobs]
    for adapter, prompt, seq in queued:
        assert ids_of(seq) == peft_answers(adapter, prompt, 10), adapter
    stats = runtime.health()["adapters"]
    assert set(stats["loaded"]) == {"tuned-1:1", "tuned-2:1"} and stats["in_use"] == {}


def test_adapters_past_the_limit_are_evicted_and_reloaded(tools_model_dir, adapters, peft_answers):
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime

    runtime = LlamaCppRuntime(tools_model_dir, threads=1, adapters=adapters, max_adapters=1)
    try:
        for adapter in ("tuned-1:1", "tuned-2:1", "tuned-1:1"):
            prompt, seq = submit(runtime, chat_request(chat(TEXTS[2]), temperature=0, max_new_tokens=10), adapter)
            assert ids_of(seq) == peft_answers(adapter, prompt, 10)
        stats = runtime.health()["adapters"]
        assert stats["loads"] == 3 and stats["evictions"] == 2 and stats["loaded"] == ["tuned-1:1"]
        # both at once: the one in use is kept past the limit, and each still gets its own answer
        both = [(a, *submit(runtime, chat_request(chat(TEXTS[3]), temperature=0, max_new_tokens=10), a))
                for a in ("tuned-1:1", "tuned-2:1")]
        for adapter, prompt, seq in both:
            assert ids_of(seq) == peft_answers(adapter, prompt, 10)
    finally:
        runtime.close()


def test_a_stream_read_in_a_thread_sees_its_adapter(adapter_runtime):
    """stream(request, adapter) is the runtime seam the servers call."""
    runtime = adapter_runtime
    request = chat_request(chat("hi"), temperature=0, max_new_tokens=8)
    results = {}

    def read(adapter):
        results[adapter] = runtime.generate(request, adapter)

    threads = [threading.Thread(target=read, args=(a,)) for a in ("tuned-1:1", "tuned-2:1")]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert results["tuned-1:1"] == runtime.generate(request, "tuned-1:1")
    assert results["tuned-2:1"] == runtime.generate(request, "tuned-2:1")


def test_a_request_the_kv_cache_has_no_room_for_waits_its_turn(tools_model_dir, monkeypatch):
    """Requests share the context's cells: one that could run out of them beside the running ones waits until
    they end, and then gets its solo answer, as do they."""
    from forgeflow.inference.runtimes import llamacpp

    monkeypatch.setattr(llamacpp, "MAX_SHARED_CONTEXT", 0)  # the cells of one longest request only
    runtime = llamacpp.LlamaCppRuntime(tools_model_dir, threads=1, max_batch_size=2)
    try:
        assert runtime.engine.n_ctx < 2 * runtime.max_positions
        never_end = Sampling(logit_bias=tuple((eos, -100.0) for eos in runtime.eos_token_ids))
        requests = [ChatRequest(chat(t), 1100, never_end) for t in TEXTS[:2]]
        solo = [ids_of(submit(runtime, r)[1]) for r in requests]
        first, second = (submit(runtime, r)[1] for r in requests)
        wait_until(lambda: first.generated > 0, 30, "began the first")
        assert runtime.health()["waiting"] == 1 and runtime.health()["running"] == 1
        assert [ids_of(first), ids_of(second)] == solo
    finally:
        runtime.close()


@pytest.mark.parametrize("failure, error", [
    (lambda entries: -1, "llama.cpp failed to decode"),  # llama.cpp's "invalid batch"
    (raises("context lost"), "context lost"),  # then the one-token check passes: the context serves on
])
def test_a_failed_decode_fails_its_requests_and_the_context_recovers(llamacpp_runtime, monkeypatch, failure, error):
    runtime = llamacpp_runtime
    request = chat_request(chat(TEXTS[3]), temperature=0, max_new_tokens=12)
    alone = ids_of(submit(runtime, request)[1])
    monkeypatch.setattr(runtime.engine, "decode", first_call_fails(runtime.engine.decode, failure))
    with pytest.raises(Exception, match=error):
        ids_of(submit(runtime, request)[1])
    assert ids_of(submit(runtime, request)[1]) == alone
    wait_until(lambda: runtime.health()["running"] == 0, 10, "the slot let go")  # just after its end
    assert runtime.failure is None


@pytest.mark.parametrize("decode, step_error, why", [
    (raises("context lost"), "context lost", "RuntimeError: context lost"),
    (lambda entries: -3, "failed to decode \\(status -3\\)",  # llama.cpp's "compute failed", at every decode
     "ForgeflowError: llama.cpp cannot decode a single token after a failed step \\(status -3\\)"),
])
def test_a_context_that_cannot_decode_at_all_fails_every_request_and_says_why(tools_model_dir, monkeypatch, decode,
                                                                             step_error, why):
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime

    runtime = LlamaCppRuntime(tools_model_dir, threads=1, max_batch_size=1)
    try:
        never_end = Sampling(logit_bias=tuple((eos, -100.0) for eos in runtime.eos_token_ids))
        running = runtime.stream(ChatRequest(chat(TEXTS[0]), 1000, never_end))
        waiting = runtime.stream(ChatRequest(chat(TEXTS[1]), 8, never_end))  # one slot: it waits for the first
        assert runtime.failure is None
        monkeypatch.setattr(runtime.engine, "decode", decode)  # the context is broken for good
        with pytest.raises(Exception, match=step_error):
            running.run()
        with pytest.raises(ServerUnavailable, match=f"worker stopped: {why}"):
            waiting.run()
        assert runtime.failure.startswith("the llama.cpp worker stopped: ")
        with pytest.raises(ServerUnavailable):  # nothing more is queued on a worker that is gone
            runtime.stream(ChatRequest(chat(TEXTS[2]), 4, never_end))
        assert runtime.health()["running"] == 0
    finally:
        runtime.close()


def test_an_adapter_llama_cpp_cannot_carry_is_refused_by_name(tools_model_dir, adapters, tmp_path):
    import json
    import shutil

    from forgeflow.inference.gguf_lora import cached_gguf_lora

    dora = tmp_path / "dora"
    shutil.copytree(adapters["tuned-1:1"], dora, ignore=shutil.ignore_patterns("forgeflow-*", ".forgeflow-*"))
    spec = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**spec, "use_dora": True}))
    with pytest.raises(InvalidInput, match="use_dora.*transformers") as refused:
        cached_gguf_lora(dora, tools_model_dir)
    assert refused.value.field == "runtime" and not list(dora.glob("forgeflow-lora.gguf*"))


def test_a_request_whose_admission_fails_ends_with_the_error_and_releases_its_adapter(adapter_runtime,
                                                                                     monkeypatch):

    from forgeflow.inference.batching import _DONE

    runtime, place = adapter_runtime, adapter_runtime.slots.place

    def fails_once(seq, placement):
        monkeypatch.setattr(runtime.slots, "place", place)
        raise RuntimeError("no slot")

    monkeypatch.setattr(runtime.slots, "place", fails_once)
    _, seq = submit(runtime, chat_request(chat("hi"), temperature=0, max_new_tokens=4), "tuned-1:1")
    steps = [seq.out.get(timeout=60), seq.out.get(timeout=60)]  # never blocks forever, as its client would
    assert isinstance(steps[0], RuntimeError) and steps[1] is _DONE
    assert runtime.health()["adapters"]["in_use"] == {}
    assert runtime.generate(chat_request(chat("hi"), temperature=0, max_new_tokens=4), "tuned-1:1").text


def test_health_lists_the_adapters_served(adapter_runtime):
    assert adapter_runtime.health()["adapters"]["served"] == ["tuned-1:1", "tuned-2:1"]


def test_a_failed_start_frees_the_engine_and_closing_twice_is_safe(tools_model_dir, monkeypatch):
    from forgeflow.inference.runtimes import llamacpp
    from forgeflow.inference.runtimes.llamacpp_engine import LlamaEngine

    closed, close = [], LlamaEngine.close

    def counted(engine):
        closed.append(engine)
        close(engine)

    def broken(*args, **kwargs):
        raise RuntimeError("slots")

    monkeypatch.setattr(LlamaEngine, "close", counted)
    monkeypatch.setattr(llamacpp, "SlotTable", broken)
    with pytest.raises(RuntimeError, match="slots"):
        llamacpp.LlamaCppRuntime(tools_model_dir, threads=1, max_batch_size=1)
    assert len(closed) == 1
    closed[0].close()  # freed already: nothing happens (a second free would crash the process)
    assert closed[0].ctx is None


def test_more_sequences_than_llama_cpp_has_is_refused_by_name(tools_model_dir):
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime

    with pytest.raises(InvalidInput, match="max_batch_size") as refused:
        LlamaCppRuntime(tools_model_dir, max_batch_size=257)
    assert refused.value.field == "max_batch_size"


def edited_adapter(source, out, config=None, tensors=None):
    """A copy of the adapter in `source` with adapter_config.json keys set (None: removed) and tensors changed."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, out, ignore=shutil.ignore_patterns("forgeflow-*", ".forgeflow-*"))
    spec = json.loads((out / "adapter_config.json").read_text())
    for key, value in (config or {}).items():
        spec.pop(key) if value is None else spec.__setitem__(key, value)
    (out / "adapter_config.json").write_text(json.dumps(spec))
    weights = load_file(str(out / "adapter_model.safetensors"))
    for part, change in (tensors or {}).items():
        key = next(k for k in weights if part in k)
        weights[key] = change(weights[key])
    save_file(weights, str(out / "adapter_model.safetensors"))
    return out


@pytest.mark.parametrize("config, tensors, refused", [
    ({"lora_alpha": 0}, None, "lora_alpha 0"),
    ({"r": None}, None, "rank r"),
    ({"fan_in_fan_out": True}, None, "fan_in_fan_out"),
    ({"layer_replication": [[0, 2]]}, None, "layer_replication"),
    (None, {"layers.0.self_attn.k_proj.lora_B": lambda b: b.repeat(2, 1)}, "k_proj has lora_A"),
    (None, {"layers.1.mlp.down_proj.lora_A": lambda a: a[:, :-1].contiguous()}, "down_proj has lora_A"),
])
def test_an_adapter_that_does_not_fit_the_base_is_refused_when_converted(tools_model_dir, adapters, tmp_path,
                                                                        config, tensors, refused):
    from forgeflow.inference.gguf_lora import cached_gguf_lora

    bad = edited_adapter(adapters["tuned-1:1"], tmp_path / "bad", config, tensors)
    with pytest.raises(InvalidInput, match=refused) as error:
        cached_gguf_lora(bad, tools_model_dir)
    assert error.value.field == "adapter"


def test_an_adapter_without_lora_alpha_gets_peft_default(tools_model_dir, adapters, tmp_path):
    import gguf

    from forgeflow.inference.gguf_lora import cached_gguf_lora

    rank_4 = build_tiny_adapter(tools_model_dir, tmp_path / "rank-4", seed=1, r=4)
    plain = edited_adapter(rank_4, tmp_path / "plain", {"lora_alpha": None})
    reader = gguf.GGUFReader(str(cached_gguf_lora(plain, tools_model_dir)))
    assert reader.fields["adapter.lora.alpha"].contents() == 8.0


def test_an_edited_adapter_config_converts_again(tools_model_dir, adapters, tmp_path):
    import json
    import os

    import gguf

    from forgeflow.inference.gguf_lora import cached_gguf_lora

    adapter = edited_adapter(adapters["tuned-1:1"], tmp_path / "edited")
    cached_gguf_lora(adapter, tools_model_dir)
    config = adapter / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "lora_alpha": 4}))
    later = max(p.stat().st_mtime_ns for p in adapter.iterdir()) + 10**9
    os.utime(config, ns=(later, later))
    reader = gguf.GGUFReader(str(cached_gguf_lora(adapter, tools_model_dir)))
    assert reader.fields["adapter.lora.alpha"].contents() == 4.0
