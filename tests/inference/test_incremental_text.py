"""A stream's text is read token by token (the tokenizers library's DecodeStream) rather than by decoding the
whole answer at every token, and says exactly what the whole decode says: the same deltas, the same result (for a
tokenizer that cleans up spaces, which rewrites text a whole decode has sent, the same result and deltas that never
take text back)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forgeflow.chat.request import chat_request
from forgeflow.inference.runtimes.base import TokenLogprob, TokenStream
from forgeflow.inference.runtimes.prepare import CLEAN_UPS, RequestPreparer, _can_cut, _cleaning, incremental_decoder


@pytest.fixture(scope="module")
def preparer(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return RequestPreparer(tokenizer, max_positions=512, vocab_size=len(tokenizer) + 8,
                           eos_ids=[tokenizer.eos_token_id])


def streamed(preparer, ids: list[int], reason: str | None, stop=(), *, whole: bool) -> tuple[list, object]:
    """The deltas (each with the tokens whose log-probabilities it carries) and result of a stream over `ids` (the
    last step carries `reason`), read incrementally or, with `whole`, by decoding the whole answer at every token as
    before."""
    request = chat_request([{"role": "user", "content": "hi"}], stop=list(stop) or None)
    prepared = preparer.prepare(dataclasses.replace(request, logprobs=0))
    stream = prepared.stream([(t, reason if i == len(ids) - 1 else None, (-0.5, ())) for i, t in enumerate(ids)],
                             lambda: None)
    assert stream._incremental is not None  # this tokenizer's streams read incrementally
    if whole:
        stream._incremental = None
    events = list(stream)
    return [(e.text, [lp.token for lp in e.logprobs]) for e in events], stream.result


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
    assert "".join(text for text, _tokens in deltas) == result.text == text.strip()
    assert calls == [len(ids)]  # the last token's step only: every other token cost its own text


def test_a_cancelled_stream_keeps_the_whole_decodes_text(preparer):
    # bytes of one character cut by the cancel: its replacement character, as the whole decode gives
    ids = preparer.tokenizer.encode("caf\u00e9 ok")[:-2]
    for partial in (ids, ids[:-1]):
        assert streamed(preparer, partial, None, whole=False) == streamed(preparer, partial, None, whole=True)



def sentencepiece_style():
    """A tokenizer with the decoders of Llama's and Phi-3's (a word-start mark read as a space, byte fallback for
    characters outside the vocabulary, the text's first space stripped), over a small made-up vocabulary: decoding
    needs no merges, only the ids' pieces."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)),
              "\u2581The", "\u2581cap", "ital", "\u2581of", "\u2581France", "\u2581is", "\u2581Paris", ".", ",",
              "\u2581", "\u2581caf", "\u00e9", "\n", "\u2581\u2581", "ok", "\u2581t", "e"]
    backend = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[], unk_token="<unk>",
                                   byte_fallback=True))
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", clean_up_tokenization_spaces=False)
    return tokenizer, len(pieces)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), reason=st.sampled_from([None, "length", "stop"]),
       stop=st.lists(st.sampled_from(["e", "Paris", " t", "is ca", "\n"]), max_size=2))
def test_incremental_text_of_a_sentencepiece_style_tokenizer(data, reason, stop):
    tokenizer, size = _SP
    words = st.integers(259, size - 1)  # the pieces after the specials and the 256 byte tokens
    ids = data.draw(st.lists(words | st.integers(0, size - 1), min_size=1, max_size=40))
    steps = [(t, reason if i == len(ids) - 1 else None) for i, t in enumerate(ids)]

    def run(incremental):
        stream = TokenStream(steps, lambda got: tokenizer.decode(got, skip_special_tokens=True), 3, stop,
                             incremental=incremental)
        return [e.text for e in stream], stream.result

    incremental = incremental_decoder(tokenizer)
    assert incremental is not None
    (deltas, result), (whole_deltas, whole_result) = run(incremental), run(None)
    if _growing(tokenizer, ids):
        assert (deltas, result) == (whole_deltas, whole_result)
    elif not stop:  # bytes that are no UTF-8 change the text further back (the whole decode's own text jumps):
        assert result == whole_result  # the result is still the whole decode's


def _growing(tokenizer, ids: list[int]) -> bool:
    """Whether each longer prefix's whole decode only adds to the last one's (its trailing incomplete character
    aside); byte fallback over bytes that are no UTF-8 makes it rewrite what came before."""
    texts = [tokenizer.decode(ids[:k], skip_special_tokens=True) for k in range(1, len(ids) + 1)]
    return all(b.startswith(a.rstrip("\ufffd")) for a, b in zip(texts, texts[1:]))


_SP = sentencepiece_style()


def test_a_bpe_tokenizer_marked_to_clean_up_spaces_reads_as_it_decodes():
    tokenizer, _ = sentencepiece_style()
    tokenizer.clean_up_tokenization_spaces = True  # transformers leaves BPE text as it is all the same
    ids = tokenizer.convert_tokens_to_ids(["\u2581is", "\u2581", ".", "\u2581Paris", ","])
    step = incremental_decoder(tokenizer)()
    assert [step(t) for t in ids] == [("is", ""), (" ", ""), (".", ""), (" Paris", ""), (",", "")]
    assert tokenizer.decode(ids) == "is . Paris,"


def cleaning_tokenizer():
    """A Unigram tokenizer (as T5's) marked to clean up spaces, which transformers does over the whole decoded
    text (" ." -> ".", " n't" -> "n't", " ' " -> "'", ...), with pieces that make every clean-up happen, whole or
    cut anywhere (each character of the clean-ups is a piece of its own)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", *(f"\u2581{w}" for w in ("do", "n't", ".", "'", "s", "?", "!", ",", "ve", "re",
                                                            "m", "", "a", "I", "it", "Paris", "n", "'v", "'r")),
              *".?!,'ntmsver", "n't", "'t", "\n"]
    backend = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=0))
    backend.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", clean_up_tokenization_spaces=True)
    return tokenizer, len(pieces)


_CLEANING = cleaning_tokenizer()
# each clean-up's text cut into one piece per character (the space is the word-start mark alone)
_CUT_CLEAN_UPS = [_CLEANING[0].convert_tokens_to_ids(["\u2581" if c == " " else c for c in text])
                  for text in (" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're")]


@settings(max_examples=400, deadline=None)
@given(data=st.data(), reason=st.sampled_from([None, "length", "stop"]),
       stop=st.lists(st.sampled_from([" n", "don't", "I's", "?", "Paris"]), max_size=2))
def test_incremental_text_of_a_tokenizer_that_cleans_up_spaces(data, reason, stop):
    tokenizer, size = _CLEANING
    parts = data.draw(st.lists(st.sampled_from(_CUT_CLEAN_UPS) | st.lists(st.integers(3, size - 1), max_size=3),
                               min_size=1, max_size=12))
    ids = [t for part in parts for t in part] or [3]
    steps = [(t, reason if i == len(ids) - 1 else None, (-0.5 - t, ())) for i, t in enumerate(ids)]

    def run(incremental):
        stream = TokenStream(steps, lambda got: tokenizer.decode(got, skip_special_tokens=True), 3, stop,
                             describe=lambda t, raw: TokenLogprob(str(t), raw[0], ()), incremental=incremental)
        events = list(stream)
        return [e.text for e in events], [lp for e in events for lp in e.logprobs], stream.result

    deltas, logprobs, result = run(incremental_decoder(tokenizer))
    # the whole decode's result, stop strings found at the same token, and a stream that says all of it: the text
    # a later clean-up may change is never sent
    assert result == run(None)[2]
    assert "".join(deltas) == result.text and tuple(logprobs) == result.logprobs
    if not stop:  # and text goes out as soon as it cannot change
        step, given, expected = incremental_decoder(tokenizer)(), "", []
        for t in ids if reason is None else ids[:-1]:
            given += (step(t) or ("", ""))[0]
            if given.strip() and given.strip() != (expected or [""])[-1]:
                expected.append(given.strip())
        assert list(itertools.accumulate(deltas[:-1])) == expected


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet=" .?!,'ntmsverax", max_size=40), data=st.data())
def test_cleaned_text_cut_anywhere_is_the_whole_cleaned(text, data):
    from transformers import PreTrainedTokenizerBase

    def clean(t):
        return PreTrainedTokenizerBase.clean_up_tokenization(None, t)

    chunks, rest = [], text
    while rest:
        size = data.draw(st.integers(1, len(rest)))
        chunks, rest = [*chunks, rest[:size]], rest[size:]
    pieces = iter(chunks)
    step = _cleaning(lambda _token: next(pieces), clean)
    given, read = "", ""
    for chunk in chunks:
        for_good, may_change = step(0)
        given += for_good
        read += chunk
        assert given + may_change == clean(read)  # what the stream reads is the whole text's clean-up so far
        last = max((at for at in range(1, len(read) + 1) if _can_cut(read, at)), default=0)
        assert given == clean(read[:last])  # and it gives for good all it can


def test_clean_ups_are_transformers_own():
    from transformers import PreTrainedTokenizerBase

    @settings(max_examples=300, deadline=None)
    @given(text=st.text(alphabet=" .?!,'ntmsverax", max_size=30))
    def same(text):
        expected = text
        for clean_up in CLEAN_UPS:
            expected = expected.replace(clean_up, clean_up.strip())
        assert PreTrainedTokenizerBase.clean_up_tokenization(None, text) == expected

    same()


def test_a_tokenizer_with_a_clean_up_of_its_own_decodes_whole():
    tokenizer, _ = cleaning_tokenizer()

    class OwnCleanUp(type(tokenizer)):
        def clean_up_tokenization(self, text: str) -> str:  # may reach further back than transformers' own
            return text.replace(" ...", "...")

    tokenizer.__class__ = OwnCleanUp
    assert incremental_decoder(tokenizer) is None


def test_a_cleaning_tokenizer_holds_only_what_a_clean_up_may_still_change():
    tokenizer, _ = _CLEANING
    step = incremental_decoder(tokenizer)()
    ids = tokenizer.convert_tokens_to_ids(["\u2581do", "\u2581n't", "\u2581it", "\u2581'", "s", "\u2581Paris"])
    # (text for good, text that may still change): " '" may become "'s", " 's" may become "'s" or "'ve"
    assert [step(t) for t in ids] == [("do", ""), ("n't", ""), (" it", ""), ("", " '"), ("", "'s"), ("'s Paris", "")]
    assert tokenizer.decode(ids) == "don't it's Paris"
    # words of a letter or two go at once when no clean-up has their letters
    step = incremental_decoder(tokenizer)()
    assert [step(t) for t in tokenizer.convert_tokens_to_ids(["\u2581a", "\u2581a", "\u2581I", "\u2581,"])] == [
        ("a", ""), (" a", ""), (" I", ""), ("", ",")]  # the first word's space is the text's start


def test_a_decode_stream_that_loses_its_place_goes_on_with_whole_decodes():
    tokenizer, _ = _SP
    ids = [3, 131, 259]  # bytes 0x00 and 0x80 (no UTF-8) before a word: DecodeStream raises at the word
    step = incremental_decoder(tokenizer)()
    with pytest.raises(Exception, match="Invalid prefix"):
        for token in ids:
            step(token)

    def run(incremental):
        stream = TokenStream([(t, None) for t in ids], lambda got: tokenizer.decode(got, skip_special_tokens=True),
                             3, [], incremental=incremental)
        return [e.text for e in stream], stream.result

    assert run(incremental_decoder(tokenizer)) == run(None)  # as if it had decoded whole all along


@pytest.fixture(scope="module")
def tags_preparer(tiny_model_dir):
    """A tokenizer whose tool-call tags are special tokens: its streams keep the tags (and drop the other special
    tokens) so the calls can be read back."""
    from tiny import TOOLS_CHAT_TEMPLATE
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>"]})
    tokenizer.chat_template = TOOLS_CHAT_TEMPLATE
    preparer = RequestPreparer(tokenizer, max_positions=2048, vocab_size=len(tokenizer),
                               eos_ids=[tokenizer.eos_token_id])
    assert preparer.tools.special_tags and preparer._decode_tags is not None
    return preparer


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), reason=st.sampled_from([None, "length"]))
def test_incremental_text_keeps_special_tool_call_tags(tags_preparer, data, reason):
    from forgeflow.chat import ChatRequest, Tools

    tokenizer = tags_preparer.tokenizer
    opening, closing = tokenizer.convert_tokens_to_ids(["<tool_call>", "</tool_call>"])
    words = tokenizer.encode(' {"name": "get_time", "arguments": {"zone": "UTC"}} Paris')
    pieces = st.sampled_from([opening, closing, tokenizer.eos_token_id, 0, 1, *words])
    ids = data.draw(st.lists(pieces | st.integers(0, len(tokenizer) - 1), min_size=1, max_size=40))
    clock = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}
    prepared = tags_preparer.prepare(ChatRequest([{"role": "user", "content": "time?"}], tools=Tools((clock,), "auto")))

    def run(whole: bool):
        stream = prepared.stream([(t, reason if i == len(ids) - 1 else None) for i, t in enumerate(ids)],
                                 lambda: None)
        assert stream._incremental is not None  # the tag path reads incrementally too
        if whole:
            stream._incremental = None
        deltas = [e.text for e in stream]
        r = stream.result  # a call's id is new each time
        return deltas, (r.text, r.finish_reason, r.completion_tokens, [(c.name, c.arguments) for c in r.tool_calls])

    assert run(False) == run(True)
    answer = tokenizer.encode("Paris") + [opening] + tokenizer.encode(
        '\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n') + [closing]
    ids[:] = answer  # a whole call: its text is held from the tag on, never streamed, and read back as a call
    (deltas, result), whole = run(False), run(True)
    assert (deltas, result) == whole and "".join(deltas) == "Paris" and result[3] == [("get_time", '{"zone": "UTC"}')]
