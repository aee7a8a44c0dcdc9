"""Continuous batching: batched output equals one-at-a-time output, budgets and stops are per
request, cancelled sequences leave the batch, back-pressure answers 429, and text assembly."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from faults import first_call_fails, raises

from forgeflow.chat import Sampling, chat_request
from forgeflow.errors import ServerUnavailable
from forgeflow.inference.batching import BatchScheduler, QueueFull, Sequence
from forgeflow.inference.generation import ChatGenerator
from forgeflow.inference.sampling import Sampler
from forgeflow.inference.runtimes.base import TokenStream

PROMPTS = [
    "hi",
    "What is the capital of France? Tell me about Paris and its lighthouses, please.",
    "Who founded Microsoft?",
    "0 1 2 3 4 5 6 7 8 9 a b c d e f g h i j k l m n o p",
]


@pytest.fixture(scope="module")
def chaotic(tiny_model_dir) -> ChatGenerator:
    """The tiny model with large random weights: its greedy answers depend on every detail of
    the prompt and the positions, so a padding or position mistake changes the tokens."""
    generator = ChatGenerator(tiny_model_dir, max_batch_size=8)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in generator.model.named_parameters():
            if "norm" not in name:
                param.normal_(0, 0.3)
    yield generator
    generator.close()


def prompt_ids(generator, text):
    return generator.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                   return_dict=True)["input_ids"]


def tokens(generator, ids, budget, sampling=None):
    return [step[0] for step in generator.scheduler.submit(ids, budget, Sampler(sampling or Sampling())).tokens()]


def hf_greedy(generator, ids, budget):
    out = generator.model.generate(torch.tensor([ids]), max_new_tokens=budget, do_sample=False,
                                   eos_token_id=generator.eos_token_ids, pad_token_id=generator.pad_token_id)
    return out[0, len(ids):].tolist()


def test_batched_greedy_equals_single_and_plain_generate(chaotic):
    prompts = [prompt_ids(chaotic, text) for text in PROMPTS]
    budgets = [24, 10, 17, 30]
    solo = [tokens(chaotic, ids, n) for ids, n in zip(prompts, budgets)]
    assert len({len(ids) for ids in prompts}) == len(prompts)  # different lengths: real left padding
    assert len({tuple(s[:5]) for s in solo}) == len(solo)  # answers that differ, so a mix-up shows
    for ids, n, expected in zip(prompts, budgets, solo):
        assert hf_greedy(chaotic, ids, n) == expected

    # the first request runs alone for a token, the others join it between decode steps
    results: list = [None] * len(prompts)
    first = chaotic.scheduler.submit(prompts[0], budgets[0], Sampler())
    stream = first.tokens()
    head = next(stream)
    seqs = [chaotic.scheduler.submit(ids, n, Sampler()) for ids, n in zip(prompts[1:], budgets[1:])]
    results[0] = [head[0]] + [step[0] for step in stream]
    for i, seq in enumerate(seqs, start=1):
        results[i] = [step[0] for step in seq.tokens()]
    assert results == solo
    assert chaotic.scheduler.largest_batch >= 2


def test_concurrent_generate_calls_share_forward_passes(chaotic):
    chats = [[{"role": "user", "content": text}] for text in PROMPTS]
    solo = [chaotic.generate(chat_request(c, temperature=0, max_new_tokens=12)) for c in chats]
    steps_before = chaotic.scheduler.steps
    results: list = [None] * len(chats)

    def ask(i):
        results[i] = chaotic.generate(chat_request(chats[i], temperature=0, max_new_tokens=12))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(chats))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == solo
    # served one at a time this would take ~4 x 11 decode steps
    assert chaotic.scheduler.steps - steps_before < 4 * 11


def test_seeded_sampling_repeats_inside_a_batch(chaotic):
    ids = prompt_ids(chaotic, PROMPTS[1])
    sampling = Sampling(greedy=False, temperature=0.9, top_p=0.8, seed=7)
    alone = tokens(chaotic, ids, 12, sampling)
    other = chaotic.scheduler.submit(prompt_ids(chaotic, PROMPTS[3]), 20, Sampler())
    assert tokens(chaotic, ids, 12, sampling) == alone
    list(other.tokens())


def test_stop_and_budget_are_per_request(chaotic):
    chat = [{"role": "user", "content": PROMPTS[2]}]
    full = chaotic.generate(chat_request(chat, temperature=0, max_new_tokens=20))
    assert full.finish_reason == "length" and full.completion_tokens == 20
    stop = full.text[len(full.text) // 2:][:2]
    assert stop.strip()
    cut = chaotic.generate(chat_request(chat, temperature=0, max_new_tokens=20, stop=["@@never@@", stop]))
    assert cut.finish_reason == "stop"
    assert full.text.startswith(cut.text) and stop not in cut.text
    assert cut.completion_tokens < 20
    short = chaotic.generate(chat_request(chat, temperature=0, max_new_tokens=3))
    assert short.completion_tokens == 3


def test_stream_deltas_add_up_to_the_answer(chaotic):
    chat = [{"role": "user", "content": PROMPTS[1]}]
    expected = chaotic.generate(chat_request(chat, temperature=0, max_new_tokens=16))
    stream = chaotic.stream(chat_request(chat, temperature=0, max_new_tokens=16))
    events = list(stream)
    assert events[-1].result == expected
    assert "".join(e.text for e in events) == expected.text
    assert stream.prompt_tokens == expected.prompt_tokens


def test_a_consumer_that_leaves_frees_its_place(chaotic):
    stream = chaotic.stream(chat_request([{"role": "user", "content": "hi"}], temperature=0, max_new_tokens=400))
    events = iter(stream)
    next(events)
    events.close()  # as when the HTTP client disconnects
    deadline = time.monotonic() + 10
    while chaotic.scheduler.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert chaotic.scheduler.running == []


def test_a_step_that_fails_once_fails_its_requests_and_the_model_serves_on(chaotic, monkeypatch):
    ids = prompt_ids(chaotic, PROMPTS[2])
    alone = tokens(chaotic, ids, 8)
    monkeypatch.setattr(chaotic.scheduler, "_forward",
                        first_call_fails(chaotic.scheduler._forward, raises("a bug in one step")))
    with pytest.raises(RuntimeError, match="a bug in one step"):
        tokens(chaotic, ids, 8)
    assert tokens(chaotic, ids, 8) == alone  # the one-token check passed: it serves on
    assert chaotic.scheduler.failure is None


class _Fatal(BaseException):
    """What no step's recovery catches (as an interpreter or extension's fatal error would be)."""


class _Stuck:
    """A model whose forward pass waits, then fails with `error`, every time."""

    config = None

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, **kwargs):
        self.entered.set()
        self.release.wait(10)
        raise self.error


@pytest.mark.parametrize("error, running_fails", [
    (RuntimeError("device lost"), (RuntimeError, "device lost")),  # its step fails, then the one-token check
    (_Fatal("device gone for good"), (ServerUnavailable, "_Fatal: device gone for good")),  # nothing catches it
])
def test_back_pressure_and_a_device_that_fails_for_good(monkeypatch, error, running_fails):
    import transformers

    monkeypatch.setattr(transformers, "DynamicCache", lambda config=None: None)
    model = _Stuck(error)
    scheduler = BatchScheduler(model, eos_ids=[2], pad_id=0, device="cpu", max_batch_size=1, max_queue=1)
    try:
        running = scheduler.submit([1, 2, 3], 5, Sampler())
        assert model.entered.wait(10)
        waiting = scheduler.submit([1, 2], 5, Sampler())
        with pytest.raises(QueueFull) as full:
            scheduler.submit([1], 5, Sampler())
        assert full.value.status_code == 429 and scheduler.failure is None
        model.release.set()
        kind, message = running_fails
        with pytest.raises(kind, match=message):
            list(running.tokens())
        why = f"the batch scheduler stopped: {type(error).__name__}: {error}"
        with pytest.raises(ServerUnavailable, match=why):  # the loop stopped: what waited ends, saying why
            list(waiting.tokens())
        assert scheduler.failure == why
        with pytest.raises(ServerUnavailable):  # nothing more is queued on a loop that is gone
            scheduler.submit([1], 5, Sampler())
    finally:
        model.release.set()
        scheduler.close()


class _CancelledBetweenReads(Sequence):
    """A sequence a client cancels just after the scheduler first looks at it."""

    reads = 0

    @property
    def cancelled(self) -> bool:
        self.reads += 1
        return self.reads > 1

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        pass


def test_a_cancel_while_retiring_never_retires_a_sequence_that_stays(monkeypatch):
    """_retire decides once which sequences leave: a sequence it ends (its _DONE sent, its adapter released) is
    never one it keeps in the batch."""
    from types import SimpleNamespace

    import transformers

    monkeypatch.setattr(transformers, "DynamicCache", lambda config=None: None)
    scheduler = BatchScheduler(_Stuck(RuntimeError("never called")), eos_ids=[2], pad_id=0, device="cpu")
    scheduler.close()  # its thread stopped: the test drives _retire itself
    racing, finished = _CancelledBetweenReads([1, 2], 4), Sequence([3, 4], 4, cancelled=True)
    scheduler.running = [racing, finished]
    scheduler.mask = torch.ones(2, 3, dtype=torch.long)
    layer = SimpleNamespace(keys=torch.zeros(2, 1, 3, 2), values=torch.zeros(2, 1, 3, 2))
    scheduler.cache = SimpleNamespace(layers=[layer])
    scheduler._retire()
    ended = [seq for seq in (racing, finished) if not seq.out.empty()]
    assert ended == [finished] and scheduler.running == [racing]


# -- text assembly ---------------------------------------------------------------------------------


def assemble(pieces, stop=(), finish="length"):
    """Run TokenStream over single-character-ish tokens: token i decodes to pieces[i]."""
    pairs = [(i, None, None) for i in range(len(pieces))]
    if pairs:
        pairs[-1] = (len(pieces) - 1, finish, None)
    cancelled = []
    stream = TokenStream(pairs, lambda ids: "".join(pieces[i] for i in ids), 3, list(stop),
                         lambda: cancelled.append(True))
    events = list(stream)
    return [e.text for e in events], stream.result, bool(cancelled)


def test_text_is_trimmed_and_never_taken_back():
    deltas, result, _ = assemble([" ", "Hel", "lo", " ", "world", " ", "\n"])
    assert "".join(deltas) == result.text == "Hello world"
    assert deltas[0] == "Hel"  # leading space dropped, trailing held until decided
    assert result.completion_tokens == 7 and result.prompt_tokens == 3


def test_stop_strings_across_tokens_are_held_back_and_cut():
    deltas, result, cancelled = assemble(["The", " an", "swer", " EN", "D", " more"], stop=["END"])
    assert result.text == "The answer" and result.finish_reason == "stop"
    assert "".join(deltas) == "The answer" and not any("E" in d for d in deltas)
    assert result.completion_tokens == 5 and cancelled
    deltas, result, _ = assemble(["a", "E", "b"], stop=["EN"])
    assert "".join(deltas) == result.text == "aEb"


def test_partial_utf8_waits_for_the_rest():
    # "é" is two bytes in two tokens: decoded alone, the first is a replacement character
    texts = {1: "caf", 2: "caf\ufffd", 3: "café", 4: "café!"}
    stream = TokenStream([(0, None, None), (1, None, None), (2, None, None), (3, "length", None)],
                         lambda ids: texts[len(ids)], 1, [])
    deltas = [e.text for e in stream]
    assert deltas == ["caf", "é", "!"] and stream.result.text == "café!"
