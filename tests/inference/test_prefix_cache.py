"""The prefix cache: a prompt that starts like an earlier sequence (a chat's next turn, a shared system
prompt) prefills only the rest and answers exactly as without the cache; the store finds the longest kept
prefix under the same adapter, leaves the last prompt token to run, and keeps to its bound in bytes."""

from __future__ import annotations

import threading

import pytest
import torch

from forgeflow.chat import Sampling, chat_request
from forgeflow.inference.generation import ChatGenerator
from forgeflow.inference.prefix_cache import BLOCK, PrefixCache
from forgeflow.inference.sampling import Sampler

SYSTEM = "You are the assistant of a small shop. Answer in one short sentence and name the shop when you can."


TOKEN_BYTES = 2 * 2 * 4  # kv_for's keys and values per token: 2 layers, float32


def kv_for(tokens, layers=2):
    """Per-layer keys and values whose entries record their token, so a cut or a mix-up shows."""
    t = torch.tensor(tokens, dtype=torch.float32).view(1, 1, -1, 1)
    return [(t.clone() + layer, -t.clone() - layer) for layer in range(layers)]


# -- the store ---------------------------------------------------------------------------------------------


def test_finds_the_longest_kept_prefix_and_leaves_the_last_token():
    cache = PrefixCache(max_bytes=1000 * TOKEN_BYTES)
    short, long = list(range(40)), list(range(40)) + list(range(100, 140))
    cache.add(None, short, kv_for(short))
    cache.add("a:1", long, kv_for(long))
    length, kv = cache.find(None, long + [7])
    assert length == 40 and kv[1][0].flatten().tolist() == [x + 1 for x in short]
    length, kv = cache.find("a:1", long + [7])
    assert length == 80 and kv[0][1].flatten().tolist() == [-x for x in long]
    length, _ = cache.find("a:1", long)  # the whole prompt is kept: its last token still runs
    assert length == 79
    length, _ = cache.find("a:1", long[:50] + [999] + long[51:])  # diverges inside a block
    assert length == 50
    assert cache.find("b:1", long + [7]) == (0, [])  # another adapter's KV is another KV
    assert cache.find(None, list(range(1, 40))) == (0, [])
    assert cache.find(None, short[:BLOCK - 1] + [5]) == (0, [])  # under one block: not worth it
    stats = cache.stats()
    assert stats["hits"] == 4 and stats["reused_tokens"] == 40 + 80 + 79 + 50 and stats["lookups"] == 7


def test_a_longer_sequence_replaces_its_prefix_and_a_held_one_is_not_added_twice():
    cache = PrefixCache(max_bytes=1000 * TOKEN_BYTES)
    turn1, turn2 = list(range(32)), list(range(64))
    cache.add(None, turn1, kv_for(turn1))
    cache.add(None, turn2, kv_for(turn2))
    assert cache.stats()["entries"] == 1 and cache.stats()["tokens"] == 64
    cache.add(None, turn1, kv_for(turn1))  # already inside turn 2's entry
    assert cache.stats()["entries"] == 1 and cache.stats()["tokens"] == 64
    other = list(range(40)) + [500] * 30  # shares 2.5 blocks with turn 2 but is no prefix of it, nor it of this
    cache.add(None, other, kv_for(other))
    assert cache.stats()["entries"] == 2
    longer = other + [600] * 10
    cache.add(None, longer, kv_for(longer))  # replaces `other` (not block-aligned), keeps turn 2
    assert cache.stats()["entries"] == 2 and cache.stats()["tokens"] == 64 + 80


def test_the_bound_in_bytes_is_kept_least_recently_used_first():
    cache = PrefixCache(max_bytes=100 * TOKEN_BYTES)
    seqs = [[n * 1000 + i for i in range(40)] for n in range(3)]
    cache.add(None, seqs[0], kv_for(seqs[0]))
    cache.add(None, seqs[1], kv_for(seqs[1]))
    assert cache.find(None, seqs[0] + [1])[0] == 40  # seqs[0] is now the most recently used
    cache.add(None, seqs[2], kv_for(seqs[2]))
    stats = cache.stats()
    assert stats["bytes"] <= 100 * TOKEN_BYTES and stats["entries"] == 2 and stats["evictions"] == 1
    assert stats["bytes"] == stats["tokens"] * TOKEN_BYTES
    assert cache.find(None, seqs[1] + [1]) == (0, [])
    assert cache.find(None, seqs[0] + [1])[0] == 40 and cache.find(None, seqs[2] + [1])[0] == 40
    too_long = list(range(5000, 5300))
    cache.add(None, too_long, kv_for(too_long))  # kept cut to the bound
    assert cache.stats()["bytes"] <= 100 * TOKEN_BYTES and cache.find(None, too_long)[0] == 100


# -- the runtime -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cached(tools_model_dir):
    generator = ChatGenerator(tools_model_dir, prefix_cache=True)
    yield generator
    generator.close()


@pytest.fixture(scope="module")
def uncached(tools_model_dir):
    generator = ChatGenerator(tools_model_dir, prefix_cache=False)
    yield generator
    generator.close()


def ask(generator, messages, budget=16):
    return generator.generate(chat_request(messages, max_new_tokens=budget, temperature=0))


def test_turn_two_of_a_chat_answers_as_without_the_cache(cached, uncached):
    assert uncached.health()["prefix_cache"] is None
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Do you sell lamps?"}]
    for turn in range(3):
        with_cache, without = ask(cached, chat), ask(uncached, chat)
        assert with_cache.text == without.text and with_cache.completion_tokens == without.completion_tokens
        chat += [{"role": "assistant", "content": with_cache.text},
                 {"role": "user", "content": f"And question {turn} about the lamps?"}]
    stats = cached.health()["prefix_cache"]
    system = len(cached.tokenizer.apply_chat_template(chat[:1], return_dict=True)["input_ids"])
    assert stats["hits"] >= 2 and stats["reused_tokens"] >= 2 * system  # turns 2 and 3 reused at least that


def test_token_for_token_with_the_kept_answer(cached, uncached):
    """The next prompt extends the kept prompt + answer exactly: it reuses all of it and answers as a full
    prefill does."""
    ids = cached.tokenizer.apply_chat_template([{"role": "user", "content": "Tell me a long story " * 3}],
                                               add_generation_prompt=True, return_dict=True)["input_ids"]
    first = [s[0] for s in cached.scheduler.submit(ids, 20, Sampler(Sampling())).tokens()]
    follow = ids + first[:-1] + [7, 8, 9]
    before = cached.health()["prefix_cache"]["reused_tokens"]
    again = [s[0] for s in cached.scheduler.submit(follow, 20, Sampler(Sampling())).tokens()]
    assert cached.health()["prefix_cache"]["reused_tokens"] - before >= len(ids) + len(first) - 2
    assert again == [s[0] for s in uncached.scheduler.submit(follow, 20, Sampler(Sampling())).tokens()]


def test_a_system_prompt_shared_by_concurrent_requests(cached, uncached):
    questions = ["Where is the shop?", "When do you open?", "Can I pay by card?", "Do you deliver?"]
    ask(cached, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello!"}])  # keeps the system prompt
    before = cached.health()["prefix_cache"]["hits"]
    results = {}

    def one(i):
        results[i] = ask(cached, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": questions[i]}])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert cached.health()["prefix_cache"]["hits"] - before >= len(questions)
    for i, question in enumerate(questions):
        expected = ask(uncached, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
        assert results[i].text == expected.text


def test_cancel_mid_stream_frees_the_sequence_and_keeps_what_it_computed(cached):
    ids = cached.tokenizer.apply_chat_template([{"role": "user", "content": "Count slowly " * 4}],
                                               add_generation_prompt=True, return_dict=True)["input_ids"]
    endless = Sampling(logit_bias=tuple((eos, -100.0) for eos in cached.eos_token_ids))
    seq = cached.scheduler.submit(ids, 10_000, Sampler(endless))
    steps = seq.tokens()
    got = [next(steps)[0] for _ in range(5)]
    seq.cancel()
    list(steps)
    health = cached.health()
    assert health["running"] == 0 and health["waiting"] == 0
    reused, _ = cached.prefix_cache.find(None, ids + got + [1])
    assert reused >= len(ids) + 4  # its prompt and at least the tokens fed back before it left
