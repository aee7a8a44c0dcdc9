"""Many LoRA adapters on one base in the `transformers` runtime: a batch mixing adapters gives each request
what PEFT gives with its adapter alone, adapters load on first use, are let go past the limit (never while in
use) and reload with the same answers, and an adapter the instance does not serve is a 400 naming `model`."""

from __future__ import annotations

import threading

import pytest
import torch
from faults import first_call_fails, raises
from tiny import build_tiny_adapter

from forgeflow.chat import Sampling, chat_request
from forgeflow.errors import InvalidInput
from forgeflow.inference.generation import ChatGenerator
from forgeflow.inference.sampling import Sampler

BUDGET = 12
QUESTION = "Which adapter answers this question?"


@pytest.fixture(scope="module")
def adapter_dirs(tools_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"tuned-a:1": build_tiny_adapter(tools_model_dir, root / "a", seed=1),
            "tuned-b:1": build_tiny_adapter(tools_model_dir, root / "b", seed=2)}


def prompt_ids(tokenizer, text):
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         return_dict=True)["input_ids"]


@pytest.fixture(scope="module")
def expected(tools_model_dir, adapter_dirs):
    """What PEFT's own generate answers (greedy) with each adapter alone, and the base model alone."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tools_model_dir)
    ids = torch.tensor([prompt_ids(tokenizer, QUESTION)])
    answers = {}
    for name in [None, *adapter_dirs]:
        model = AutoModelForCausalLM.from_pretrained(tools_model_dir).eval()
        if name is not None:
            model = PeftModel.from_pretrained(model, adapter_dirs[name]).eval()
        eos = model.generation_config.eos_token_id
        out = model.generate(ids, max_new_tokens=BUDGET, do_sample=False, eos_token_id=eos,
                             pad_token_id=model.generation_config.pad_token_id)
        answers[name] = out[0, ids.shape[1]:].tolist()
    assert len({tuple(a) for a in answers.values()}) == 3  # the three answer differently, so a mix-up shows
    return answers


def run_together(generator, names):
    """Submit one request per name at once (so they share the running batch) and collect their tokens."""
    ids = prompt_ids(generator.tokenizer, QUESTION)
    seqs = [generator.scheduler.submit(ids, BUDGET, Sampler(Sampling()), adapter=name) for name in names]
    return [[step[0] for step in seq.tokens()] for seq in seqs]


@pytest.mark.parametrize("max_adapters", [8, 1])
def test_a_mixed_batch_gives_each_request_its_adapters_answer(tools_model_dir, adapter_dirs, expected, max_adapters):
    generator = ChatGenerator(tools_model_dir, adapters=adapter_dirs, max_adapters=max_adapters, prefix_cache=False)
    try:
        names = ["tuned-a:1", "tuned-b:1", None, "tuned-a:1"]
        for _ in range(2):  # the second round reuses the adapters loaded by the first
            answers = run_together(generator, names)
            assert answers == [expected[name] for name in names]
        health = generator.health()
        assert health["largest_batch"] >= 2
        stats = health["adapters"]
        assert stats["served"] == ["tuned-a:1", "tuned-b:1"] and stats["in_use"] == {}
        assert len(stats["loaded"]) <= max_adapters
    finally:
        generator.close()


def test_one_adapter_at_a_time_evicts_and_reloads_with_the_same_answers(tools_model_dir, adapter_dirs, expected):
    generator = ChatGenerator(tools_model_dir, adapters=adapter_dirs, max_adapters=1, prefix_cache=False)
    try:
        for name in ["tuned-a:1", "tuned-b:1", "tuned-a:1", None]:
            assert run_together(generator, [name]) == [expected[name]]
        stats = generator.health()["adapters"]
        assert stats["loads"] == 3 and stats["evictions"] == 2 and stats["loaded"] == ["tuned-a:1"]
    finally:
        generator.close()


def test_an_adapter_in_use_is_not_evicted(tools_model_dir, adapter_dirs, expected):
    generator = ChatGenerator(tools_model_dir, adapters=adapter_dirs, max_adapters=1, prefix_cache=False)
    try:
        ids = prompt_ids(generator.tokenizer, QUESTION)
        endless = Sampling(logit_bias=tuple((eos, -100.0) for eos in generator.eos_token_ids))
        long_a = generator.scheduler.submit(ids, 10_000, Sampler(endless), adapter="tuned-a:1")
        steps = long_a.tokens()
        next(steps)  # a is running, and runs on while b comes and goes
        b = [step[0] for step in generator.scheduler.submit(ids, BUDGET, Sampler(Sampling()),
                                                                adapter="tuned-b:1").tokens()]
        assert b == expected["tuned-b:1"]
        during = generator.health()["adapters"]
        # b loaded beside a (over the limit) and was the one let go when it finished
        assert during["loaded"] == ["tuned-a:1"] and during["loads"] == 2 and during["evictions"] == 1
        long_a.cancel()
        list(steps)
        after = generator.health()
        assert after["adapters"]["in_use"] == {} and after["running"] == 0
    finally:
        generator.close()


def test_generate_picks_the_adapter_and_refuses_one_not_served(tools_model_dir, adapter_dirs):
    generator = ChatGenerator(tools_model_dir, adapters=adapter_dirs, prefix_cache=False)
    try:
        request = chat_request([{"role": "user", "content": QUESTION}], max_new_tokens=BUDGET, temperature=0)
        texts = {name: generator.generate(request, adapter=name).text for name in ["tuned-a:1", "tuned-b:1", None]}
        assert len(set(texts.values())) == 3
        with pytest.raises(InvalidInput) as err:
            generator.stream(request, adapter="tuned-c:1")
        assert err.value.field == "model" and "tuned-a:1" in str(err.value)
    finally:
        generator.close()


def test_a_runtime_without_adapters_refuses_one(transformers_runtime):
    request = chat_request([{"role": "user", "content": "hi"}], max_new_tokens=2)
    with pytest.raises(InvalidInput) as err:
        transformers_runtime.generate(request, adapter="tuned-a:1")
    assert err.value.field == "model"
    assert "adapters" not in transformers_runtime.health()


def test_concurrent_streams_with_adapters_all_finish(tools_model_dir, adapter_dirs, expected):
    generator = ChatGenerator(tools_model_dir, adapters=adapter_dirs, max_adapters=1)
    results, names = {}, ["tuned-a:1", "tuned-b:1", None] * 2

    def ask(i, name):
        results[i] = run_together(generator, [name])[0]

    try:
        threads = [threading.Thread(target=ask, args=(i, name)) for i, name in enumerate(names)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [results[i] for i in range(len(names))] == [expected[name] for name in names]
        assert generator.health()["adapters"]["in_use"] == {}
    finally:
        generator.close()


def test_the_prefix_cache_keeps_each_adapters_kv_apart(tools_model_dir, adapter_dirs, expected):
    generator = ChatGenerator(tools_model_dir, adapters=adapter_dirs, prefix_cache=True)
    try:
        names = ["tuned-a:1", "tuned-b:1", None, "tuned-a:1", "tuned-b:1", None]
        assert [run_together(generator, [name])[0] for name in names] == [expected[name] for name in names]
        stats = generator.health()["prefix_cache"]
        assert stats["hits"] == 3 and stats["entries"] == 3  # each repeat reuses its own adapter's prompt
    finally:
        generator.close()


def test_batched_lora_gives_peft_mixed_batch_logits(tools_model_dir, tmp_path):
    """Batched LoRA (adapters of different ranks, a row without one) equals PEFT's own mixed-batch forward,
    also after an adapter is evicted and another loads in its place."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgeflow.inference.peft_adapters import BASE, PeftAdapters

    dirs = {name: build_tiny_adapter(tools_model_dir, tmp_path / name, seed=seed, r=r)
            for name, seed, r in [("a:1", 1, 4), ("b:1", 2, 8), ("c:1", 3, 2)]}
    tokenizer = AutoTokenizer.from_pretrained(tools_model_dir)
    batch = tokenizer([QUESTION, "An unrelated prompt, of another kind", "hello " * 6], return_tensors="pt",
                      padding=True)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tools_model_dir), dirs["a:1"],
                                          adapter_name="a:1").eval()
    for name in ["b:1", "c:1"]:
        reference.load_adapter(dirs[name], adapter_name=name)
    reference.eval()
    served = PeftAdapters(AutoModelForCausalLM.from_pretrained(tools_model_dir).eval(), dirs, max_loaded=2)
    with torch.no_grad():
        for rows in (["a:1", "b:1", None], ["c:1", "b:1", None], ["b:1"] * 3, [None] * 3):
            for name in rows:  # the second batch evicts a:1 to load c:1
                if name is not None:
                    served.loaded.acquire(name)
            expected_logits = reference(**batch, adapter_names=[r or BASE for r in rows]).logits
            got = served.forward(rows, **batch).logits
            assert served.lora is not None
            torch.testing.assert_close(got, expected_logits, atol=1e-5, rtol=0)
            for name in rows:
                if name is not None:
                    served.loaded.release(name)
        assert sorted(served.loaded.loaded()) == ["b:1", "c:1"]
    served.close()


def broken_copy(adapter_dir, out):
    """The adapter with its first layer's k_proj lora_B twice as tall as the base model's k_proj."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter_dir, out)
    weights = load_file(str(out / "adapter_model.safetensors"))
    key = next(k for k in weights if "layers.0.self_attn.k_proj.lora_B" in k)
    weights[key] = weights[key].repeat(2, 1)
    save_file(weights, str(out / "adapter_model.safetensors"))
    return out


def test_an_adapter_that_does_not_fit_the_base_stops_the_start(tools_model_dir, adapter_dirs, tmp_path):
    bad = broken_copy(adapter_dirs["tuned-b:1"], tmp_path / "bad")
    with pytest.raises(InvalidInput, match="k_proj.*not trained on this base model") as refused:
        ChatGenerator(tools_model_dir, adapters={"tuned-a:1": adapter_dirs["tuned-a:1"], "bad:1": bad})
    assert refused.value.field == "adapter"


def test_a_failed_first_load_leaves_the_base_as_it_was(tools_model_dir, adapter_dirs, expected, tmp_path):
    """An adapter damaged after the start fails its requests, and the base model answers as before: PEFT's
    half-done wrapping is taken off."""
    import shutil

    from peft.tuners.tuners_utils import BaseTunerLayer

    later = tmp_path / "later"
    shutil.copytree(adapter_dirs["tuned-a:1"], later)
    generator = ChatGenerator(tools_model_dir, adapters={"later:1": later})
    try:
        broken_copy(adapter_dirs["tuned-a:1"], tmp_path / "broken")
        shutil.copy(tmp_path / "broken" / "adapter_model.safetensors", later / "adapter_model.safetensors")
        with pytest.raises(RuntimeError, match="size mismatch"):
            run_together(generator, ["later:1"])
        assert not any(isinstance(m, BaseTunerLayer) for m in generator.model.modules())
        assert run_together(generator, [None]) == [expected[None]]
    finally:
        generator.close()


def test_a_failed_step_with_adapters_loaded_fails_its_requests_and_each_adapter_serves_on(tools_model_dir,
                                                                                         adapter_dirs, expected,
                                                                                         monkeypatch):
    """The one-token check after a failed step runs on the base with the adapters' layers in it: it passes."""
    generator = ChatGenerator(tools_model_dir, adapters=adapter_dirs)
    try:
        assert run_together(generator, ["tuned-a:1", "tuned-b:1"]) == [expected["tuned-a:1"], expected["tuned-b:1"]]
        monkeypatch.setattr(generator.scheduler, "_forward",
                            first_call_fails(generator.scheduler._forward, raises("a bug in one step")))
        with pytest.raises(RuntimeError, match="a bug in one step"):
            run_together(generator, ["tuned-a:1", "tuned-b:1"])
        assert run_together(generator, ["tuned-a:1", "tuned-b:1", None]) == [
            expected["tuned-a:1"], expected["tuned-b:1"], expected[None]]
        assert generator.scheduler.failure is None
    finally:
        generator.close()
