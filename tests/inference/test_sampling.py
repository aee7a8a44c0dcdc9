"""Sampling settings and log-probabilities on both runtimes: logit bias and OpenAI's penalties change the answer
exactly as a reference decoding predicts, top-k cuts, log-probabilities are the model's own, every streamed
token's log-probability arrives, raw prompts skip the chat template, and a batch mixing all of these answers
each request as if it ran alone."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import forgeflow
from forgeflow.chat import ChatRequest, OutputFormat, Sampling, chat_request
from forgeflow.errors import InvalidInput
from forgeflow.inference.sampling import CANDIDATES, LOGPROB_FLOOR, Sampler, distribution

CHAT = [{"role": "user", "content": "Who founded Microsoft?"}]
SCHEMA = {"type": "object", "properties": {"founder": {"type": "string", "maxLength": 10},
                                           "year": {"type": "integer", "minimum": 1900, "maximum": 2100}},
          "required": ["founder", "year"], "additionalProperties": False}


def piece(hf, text: str) -> tuple[int, str]:
    """A token of the model's vocabulary and its text."""
    token = hf.tokenizer(text, add_special_tokens=False)["input_ids"][0]
    return token, hf.tokenizer.decode([token])


def reference(hf, prompt: list[int], budget: int, *, bias=(), frequency=0.0, presence=0.0) -> str:
    """Greedy decoding the plain way (the whole sequence through the model at every step), with OpenAI's
    logit bias and penalties applied to the last position's logits."""
    ids, new, counts = list(prompt), [], Counter()
    for _ in range(budget):
        with torch.no_grad():
            logits = hf.model(torch.tensor([ids])).logits[0, -1].double()
        for token, value in bias:
            logits[token] += value
        for token, count in counts.items():
            logits[token] -= count * frequency + presence
        token = int(logits.argmax())
        new.append(token)
        if token in hf.eos_token_ids:
            break
        counts[token] += 1
        ids.append(token)
    return hf.tokenizer.decode(new, skip_special_tokens=True)


def test_the_sampler_applies_penalties_bias_and_top_k():
    logits = np.array([0.0, 2.0, 1.9, -1.0], dtype=np.float32)
    penalized = Sampler(Sampling(presence_penalty=0.5))
    assert penalized.pick(logits)[0] == 1
    penalized.accept(1)
    assert penalized.pick(logits)[0] == 2  # 2.0 - 0.5 < 1.9
    frequent = Sampler(Sampling(frequency_penalty=0.06))
    frequent.accept(1)
    assert frequent.pick(logits)[0] == 1  # 2.0 - 0.06 > 1.9
    frequent.accept(1)
    assert frequent.pick(logits)[0] == 2  # 2.0 - 0.12 < 1.9
    assert Sampler(Sampling(logit_bias=((3, 100.0),))).pick(logits)[0] == 3
    assert Sampler(Sampling(logit_bias=((1, -100.0),))).pick(logits)[0] == 2
    for seed in range(20):  # top-k 1 leaves one candidate whatever the draw
        assert Sampler(Sampling(greedy=False, temperature=2.0, top_k=1, seed=seed)).pick(logits)[0] == 1
    drawn = {Sampler(Sampling(greedy=False, temperature=2.0, top_k=2, seed=seed)).pick(logits)[0]
             for seed in range(40)}
    assert drawn == {1, 2}
    token, (logprob, top) = Sampler(logprobs=2).pick(logits)
    expected = torch.log_softmax(torch.from_numpy(logits), -1)
    assert token == 1 and logprob == pytest.approx(float(expected[1]))
    assert [t for t, _ in top] == [1, 2] and top[1][1] == pytest.approx(float(expected[2]))


def nucleus_by_full_sort(scores: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """A draw's probabilities the plain way: softmax over the whole vocabulary, top-k at the k-th value, and top-p
    over every token sorted (the smallest prefix whose mass reaches top_p)."""
    scores = scores / temperature
    if 0 < top_k < len(scores):
        scores = np.where(scores < np.sort(scores)[-top_k], -np.inf, scores)
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if top_p < 1:
        order = np.argsort(-probs, kind="stable")
        ordered = probs[order]
        probs[order[np.cumsum(ordered) - ordered >= top_p]] = 0.0
    return probs / probs.sum()


def test_top_p_on_a_candidate_set_is_the_full_sorts_distribution():
    """Top-p ranks a bounded candidate set, and the whole vocabulary only when the nucleus is wider: the tokens
    and their probabilities are those of sorting everything, for peaked, flat and grammar-masked logits."""
    rng = np.random.default_rng(0)
    n = 49152
    peaked, flat = rng.normal(size=n) * 4, rng.normal(size=n) * 0.5
    masked = np.where(rng.random(n) < 0.99, -np.inf, rng.normal(size=n))
    widths = []
    for scores in (peaked, flat, masked):
        for temperature, top_k, top_p in ((1.0, 0, 0.9), (0.7, 0, 0.95), (1.0, 50, 0.9), (1.3, 1000, 0.8),
                                          (1.0, 0, 1.0), (0.5, 20, 1.0)):
            ids, weights = distribution(scores, Sampling(greedy=False, temperature=temperature, top_k=top_k,
                                                         top_p=top_p))
            got = np.zeros(n)
            got[slice(None) if ids is None else ids] = weights
            np.testing.assert_allclose(got / got.sum(), nucleus_by_full_sort(scores, temperature, top_k, top_p),
                                       rtol=1e-9, atol=1e-15)
            widths.append(np.count_nonzero(got))
    nuclei = [w for w in widths if w < n]  # every way of finding the nucleus ran: candidates, wider, all
    assert min(nuclei) < CANDIDATES and any(CANDIDATES < w < CANDIDATES * 16 for w in nuclei)
    assert max(nuclei) > CANDIDATES * 16


def test_a_seeded_draw_follows_the_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    drawn = Counter(Sampler(Sampling(greedy=False, seed=seed)).pick(logits)[0] for seed in range(4000))
    assert [drawn[t] / 4000 for t in range(4)] == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.025)
    again = Sampler(Sampling(greedy=False, top_p=0.9, seed=7))
    once = Sampler(Sampling(greedy=False, top_p=0.9, seed=7))
    assert [again.pick(logits)[0] for _ in range(20)] == [once.pick(logits)[0] for _ in range(20)]


def test_picking_a_token_needs_no_torch():
    """The llamacpp runtime's sampling is numpy on its own thread: torch's thread pool, which competed with
    llama.cpp's threads at every token, is never used (here it cannot even be imported)."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from forgeflow.chat import Sampling\n"
        "from forgeflow.inference.sampling import Sampler\n"
        "sampler = Sampler(Sampling(greedy=False, top_p=0.9, top_k=40, frequency_penalty=0.5, presence_penalty=0.2,"
        " logit_bias=((3, 5.0),), seed=1), logprobs=3)\n"
        "logits = np.random.default_rng(0).normal(size=49152).astype(np.float32)\n"
        "for _ in range(3):\n"
        "    token, (logprob, top) = sampler.pick(logits)\n"
        "    sampler.accept(token)\n"
        "assert len(top) == 3 and logprob < 0\n"
    )
    src = str(Path(forgeflow.__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src},
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_logits_that_are_not_finite_never_fail_a_pick():
    """A broken model's NaN is impossible and its +inf certain; logprobs stay JSON numbers (OpenAI's -9999 floor)."""
    logits = np.array([np.nan, 1.0, np.inf, -np.inf, 0.5], dtype=np.float32)
    for sampling in (Sampling(), Sampling(greedy=False, seed=1), Sampling(greedy=False, top_k=2, top_p=0.5, seed=2),
                     Sampling(frequency_penalty=float("inf"), presence_penalty=-1e308)):
        sampler = Sampler(sampling, logprobs=3)
        token, (logprob, top) = sampler.pick(logits)
        assert token == 2
        json.dumps([logprob, top], allow_nan=False)
        sampler.accept(token)
        token, described = sampler.pick(logits)
        assert token in ((1, 2) if sampler.penalized else (2,))
        json.dumps(described, allow_nan=False)
    for sampling in (Sampling(), Sampling(greedy=False, seed=3, top_p=0.5)):
        token, (logprob, top) = Sampler(sampling, logprobs=2).pick(np.full(5, np.nan, dtype=np.float32))
        assert 0 <= token < 5 and logprob == LOGPROB_FLOOR and [lp for _, lp in top] == [LOGPROB_FLOOR] * 2


@pytest.mark.parametrize(("sampling", "field"), [
    (Sampling(greedy=False, seed=2**64), "seed"),
    (Sampling(seed=-(2**63) - 1), "seed"),
    (Sampling(frequency_penalty=1e308), "frequency_penalty"),
    (Sampling(presence_penalty=float("nan")), "presence_penalty"),
    (Sampling(presence_penalty=-2.5), "presence_penalty"),
    (Sampling(logit_bias=((5, 1e6),)), "logit_bias"),
    (Sampling(logit_bias=((5, float("-inf")),)), "logit_bias"),
    (Sampling(greedy=False, temperature=float("inf")), "temperature"),
    (Sampling(greedy=False, temperature=-1.0), "temperature"),
    (Sampling(greedy=False, top_p=0.0), "top_p"),
    (Sampling(greedy=False, top_p=1.5), "top_p"),
    (Sampling(greedy=False, top_k=-1), "top_k"),
])
def test_settings_out_of_range_are_refused_when_queued(transformers_runtime, sampling, field):
    """Python callers build requests without the HTTP contract: the runtime refuses what would overflow the
    sampler or its seed, naming the field, before anything is queued."""
    with pytest.raises(InvalidInput) as refused:
        transformers_runtime.stream(ChatRequest(CHAT, 4, sampling))
    assert refused.value.field == field


def test_chat_request_refuses_what_it_would_turn_greedy():
    for temperature in (-0.5, float("nan"), float("inf")):
        with pytest.raises(InvalidInput) as refused:
            chat_request(CHAT, temperature=temperature)
        assert refused.value.field == "temperature"


def test_logit_bias_and_penalties_change_the_answer_as_predicted(runtime, transformers_runtime):
    hf = transformers_runtime
    prompt = hf.prompts.encode(CHAT)
    paris, text = piece(hf, "Paris")
    plain = runtime.generate(ChatRequest(CHAT, 12))
    assert plain.text == reference(hf, prompt, 12)
    forced = runtime.generate(ChatRequest(CHAT, 6, Sampling(logit_bias=((paris, 100.0),))))
    assert forced.text == (text * 6).strip() and text not in plain.text
    first = hf.tokenizer(plain.text, add_special_tokens=False)["input_ids"][0]
    banned = runtime.generate(ChatRequest(CHAT, 12, Sampling(logit_bias=((first, -100.0),))))
    assert banned.text == reference(hf, prompt, 12, bias=((first, -100.0),)) != plain.text
    for frequency, presence in ((1.5, 0.0), (0.0, 2.0), (0.7, 0.7)):
        penalized = runtime.generate(ChatRequest(CHAT, 12, Sampling(frequency_penalty=frequency,
                                                                    presence_penalty=presence)))
        assert penalized.text == reference(hf, prompt, 12, frequency=frequency, presence=presence) != plain.text
    with pytest.raises(InvalidInput, match="not in this model's vocabulary") as outside:
        runtime.stream(ChatRequest(CHAT, 4, Sampling(logit_bias=((10**6, 5.0),))))
    assert outside.value.field == "logit_bias"


def test_logprobs_are_the_models_own(runtime, transformers_runtime):
    hf = transformers_runtime
    result = runtime.generate(ChatRequest(CHAT, 10, logprobs=5))
    assert result.logprobs is not None and len(result.logprobs) == result.completion_tokens
    for entry in result.logprobs:
        assert len(entry.top) == 5 and entry.logprob <= 0
        assert [lp for _, lp in entry.top] == sorted((lp for _, lp in entry.top), reverse=True)
        assert entry.top[0] == (entry.token, entry.logprob)  # greedy: the token taken is the most likely
        assert sum(math.exp(lp) for _, lp in entry.top) <= 1 + 1e-4
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token
    assert "".join(e.token for e in result.logprobs) == hf.tokenizer.decode(
        hf.tokenizer(result.text, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        first = torch.log_softmax(hf.model(torch.tensor([hf.prompts.encode(CHAT)])).logits[0, -1], -1)
    assert result.logprobs[0].logprob == pytest.approx(float(first.max()), abs=0.05)
    assert runtime.generate(ChatRequest(CHAT, 3, logprobs=0)).logprobs[0].top == ()
    assert runtime.generate(ChatRequest(CHAT, 3)).logprobs is None
    # raw log-probabilities: a bias changes the pick, not what the model said about it
    paris, text = piece(hf, "Paris")
    biased = runtime.generate(ChatRequest(CHAT, 1, Sampling(logit_bias=((paris, 100.0),)), logprobs=1))
    assert biased.logprobs[0].token == text and biased.logprobs[0].logprob == pytest.approx(
        float(first[paris]), abs=0.05)


def test_streamed_logprobs_cover_every_token(runtime):
    """Every token but an end-of-answer one has its log-probability, in the event whose text it wrote (or
    the last event, for text held back); a grammar that completes ends the answer without an end token."""
    end = runtime.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for request, tokens in ((ChatRequest(CHAT, 16, logprobs=2), 16),
                            (ChatRequest(CHAT, 60, output=OutputFormat("json_schema", SCHEMA, "f", True), logprobs=2),
                             None),
                            (ChatRequest(CHAT, 16, Sampling(logit_bias=((end, 100.0),)), logprobs=2), 1)):
        events = list(runtime.stream(request))
        result = events[-1].result
        assert sum((e.logprobs for e in events), ()) == result.logprobs
        if tokens == 1:  # the answer is its end token alone
            assert result.completion_tokens == 1 and result.logprobs == () and result.finish_reason == "stop"
        else:
            assert len(result.logprobs) == result.completion_tokens == (tokens or result.completion_tokens)
        for event in events[:-1]:  # a delta's log-probabilities are those of the tokens that wrote it
            written = b"".join(bytes(e.bytes) for e in event.logprobs).decode("utf-8", errors="replace")
            assert written.strip() == event.text.strip()


def test_a_raw_prompt_skips_the_chat_template(runtime, transformers_runtime):
    hf = transformers_runtime
    text = "The capital of France is"
    prompt = hf.tokenizer(text)["input_ids"]
    result = runtime.generate(ChatRequest([], 8, prompt=text))
    assert result.prompt_tokens == len(prompt)
    assert result.text == reference(hf, prompt, 8)  # not trimmed: a completion's leading space is its own
    assert "".join(e.text for e in runtime.stream(ChatRequest([], 8, prompt=text))) == result.text
    with pytest.raises(InvalidInput) as empty:
        runtime.stream(ChatRequest([], 8, prompt=""))
    assert empty.value.field == "prompt"
    with pytest.raises(InvalidInput) as long:
        runtime.stream(ChatRequest([], 8, prompt="a b " * 2000))
    assert long.value.field == "prompt"


def test_a_mixed_batch_answers_each_request_as_if_alone(transformers_runtime):
    """Constrained, free, biased, penalised and seeded-sampled requests share forward passes, and each
    answer equals the one it gets alone."""
    hf = transformers_runtime
    requests = [
        ChatRequest(CHAT, 60, output=OutputFormat("json_schema", SCHEMA, "f", True)),
        ChatRequest(CHAT, 20),
        ChatRequest([{"role": "user", "content": "hi"}], 20,
                    Sampling(logit_bias=((piece(hf, "Paris")[0], 3.0),)), logprobs=3),
        ChatRequest(CHAT, 20, Sampling(frequency_penalty=1.0, presence_penalty=0.5)),
        ChatRequest(CHAT, 20, Sampling(greedy=False, temperature=0.9, top_k=50, top_p=0.9, seed=5)),
    ]
    alone = [hf.generate(r) for r in requests]
    steps = hf.scheduler.steps
    streams = [hf.stream(r) for r in requests]  # all queued before any is read
    together: list = [None] * len(streams)
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, streams[i].run()))
               for i in range(len(streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # the same tokens; log-probabilities from a batched forward pass may differ in the last float bits
    assert [replace(r, logprobs=None) for r in together] == [replace(r, logprobs=None) for r in alone]
    assert [e.token for e in together[2].logprobs] == [e.token for e in alone[2].logprobs]
    for mixed, single in zip(together[2].logprobs, alone[2].logprobs):
        assert mixed.logprob == pytest.approx(single.logprob, abs=1e-4)
    assert hf.scheduler.steps - steps < sum(r.completion_tokens for r in alone) - len(alone)
