"""Requests queued straight into a `llamacpp` runtime, as its stream queues them, keeping their raw steps (token
ids) for the tests of its batching and prompt order."""

from __future__ import annotations

from forgeflow.chat import ChatRequest, Sampling
from forgeflow.inference.batching import Sequence, enqueue

TEXTS = ["hi", "What is the capital of France?", "0 1 2 3 4 5 a b c", "tell me a story", "x", "yy zz",
         "abc def", "what is the weather in Rome?"]


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def submit(runtime, request: ChatRequest, adapter: str | None = None) -> tuple[list[int], Sequence]:
    """Queue a request as the runtime's stream does; its prompt's token ids and its sequence."""
    prepared = runtime.requests.prepare(request)
    seq = Sequence(prepared.prompt, prepared.budget, prepared.sampler, adapter=adapter)
    enqueue(runtime.waiting, seq, runtime._accepting, runtime._stop)
    return prepared.prompt, seq


def ids_of(seq: Sequence) -> list[int]:
    return [token for token, _, _ in seq.tokens()]


def never_ending(runtime, text: str = TEXTS[1], tokens: int = 60) -> ChatRequest:
    """A greedy request whose end-of-sequence tokens are banned: it runs to its `tokens`."""
    return ChatRequest(chat(text), tokens, Sampling(logit_bias=tuple((eos, -100.0) for eos in runtime.eos_token_ids)))
