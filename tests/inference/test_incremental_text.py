"""A stream's text is read token by token (the tokenizers library's DecodeStream) rather than by decoding the
whole answer at every token, and says exactly what the whole decode says: the same deltas, the same result."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forgeflow.chat.request import chat_request
from forgeflow.inference.runtimes.prepare import RequestPreparer


@pytest.fixture(scope="module")
def preparer(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return RequestPreparer(tokenizer, max_positions=512, vocab_size=len(tokenizer) + 8,
                           eos_ids=[tokenizer.eos_token_id])


def streamed(preparer, ids: list[int], reason: str | None, stop=(), *, whole: bool) -> tuple[list[str], object]:
    """The deltas and result of a stream over `ids` (the last step carries `reason`), read incrementally or,
    with `whole`, by decoding the whole answer at every token as before."""
    prepared = preparer.prepare(chat_request([{"role": "user", "content": "hi"}], stop=list(stop) or None))
    stream = prepared.stream([(t, reason if i == len(ids) - 1 else None) for i, t in enumerate(ids)], lambda: None)
    if whole:
        stream._incremental = None
    events = list(stream)
    return [e.text for e in events], stream.result


# ids over the whole vocabulary (byte tokens that split a character, the chat's special tokens) and a few past it
token_ids = st.lists(st.integers(0, 407), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=token_ids, reason=st.sampled_from([None, "length", "stop"]),
       stop=st.lists(st.sampled_from(["e", "Paris", " t", "is ca", "\n"]), max_size=2))
def test_incremental_text_is_the_whole_decodes_text(preparer, ids, reason, stop):
    deltas, result = streamed(preparer, ids, reason, stop, whole=False)
    assert (deltas, result) == streamed(preparer, ids, reason, stop, whole=True)


def test_a_stream_decodes_the_whole_answer_once(preparer, monkeypatch):
    text = "The capital of France is Paris, and it is a city of light. " * 8
    ids = preparer.tokenizer.encode(text)
    calls = []
    decode = preparer._decode
    monkeypatch.setattr(preparer, "_decode", lambda got: calls.append(len(got)) or decode(got))
    deltas, result = streamed(preparer, ids, "length", whole=False)
    assert "".join(deltas) == result.text == text.strip()
    assert calls == [len(ids)]  # the last token's step only: every other token cost its own text


def test_a_cancelled_stream_keeps_the_whole_decodes_text(preparer):
    # bytes of one character cut by the cancel: its replacement character, as the whole decode gives
    ids = preparer.tokenizer.encode("caf\u00e9 ok")[:-2]
    for partial in (ids, ids[:-1]):
        assert streamed(preparer, partial, None, whole=False) == streamed(preparer, partial, None, whole=True)

