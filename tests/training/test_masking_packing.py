"""Assistant-only labels on real tokenised conversations, and packed rows that do not attend across conversations."""

from __future__ import annotations

import pytest

from forgeflow.training.masking import IGNORE_INDEX, tokenize_conversation
from forgeflow.training.packing import ChatRows, PackedCollator, pack_rows

CONVERSATION = [
    {"role": "system", "content": "hello"},
    {"role": "user", "content": "Who founded Microsoft?"},
    {"role": "assistant", "content": "Bill Gates"},
    {"role": "user", "content": "a b"},
    {"role": "assistant", "content": "Paris."},
]

# Phi-3-mini-4k-instruct's template: no generation markers, and an eos only at the end of a conversation.
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def trained_text(tokenizer, conv) -> list[str]:
    """The trained stretches of a conversation, decoded one stretch at a time."""
    spans, current = [], []
    for token, label in zip(conv.input_ids, conv.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_chatml_trains_assistant_content_and_im_end_only(tokenizer):
    conv = tokenize_conversation(tokenizer, CONVERSATION, 512)
    assert tokenizer.decode(conv.input_ids) == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert trained_text(tokenizer, conv) == ["Bill Gates<|im_end|>", "Paris.<|im_end|>"]
    tokens = [tokenizer.decode([t]) for t in conv.input_ids]
    trained = [t for t, label in zip(tokens, conv.labels) if label != IGNORE_INDEX]
    # The header before each answer and the newline after each <|im_end|> are not trained.
    assert tokens.count("<|im_end|>") == 5 and trained.count("<|im_end|>") == 2
    end = [i for i, t in enumerate(tokens) if t == "<|im_end|>"]
    assert [conv.labels[i + 1] for i in end] == [IGNORE_INDEX] * 5
    assert conv.loss_tokens == len(trained) and not conv.truncated


def test_phi3_template_trains_end_token_not_the_final_eos(tokenizer):
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]})
    tokenizer.chat_template = PHI3_TEMPLATE
    tokenizer.eos_token = "<|endoftext|>"  # as in Phi-3
    conv = tokenize_conversation(tokenizer, CONVERSATION, 512)
    text = tokenizer.decode(conv.input_ids)
    assert text.endswith("Paris.<|end|>\n<|endoftext|>")
    assert trained_text(tokenizer, conv) == ["Bill Gates<|end|>", "Paris.<|end|>"]


def test_truncation_is_reported(tokenizer):
    conv = tokenize_conversation(tokenizer, CONVERSATION, 20)
    assert conv.truncated and len(conv.input_ids) == len(conv.labels) == 20
    assert conv.labels[0] == IGNORE_INDEX


def test_pack_rows_fills_rows_without_splitting():
    rows = pack_rows([5, 3, 8, 2, 6], 10)
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3, 4]
    assert all(sum([5, 3, 8, 2, 6][i] for i in row) <= 10 for row in rows)
    assert len(rows) == 3 and pack_rows([5, 3, 8, 2, 6], 10) == rows


def test_packed_row_logits_equal_each_conversation_alone(tokenizer, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    others = [
        [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
        [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "I am fine thank you"}],
    ]
    convs = [tokenize_conversation(tokenizer, c, 512) for c in [CONVERSATION, *others]]
    rows = ChatRows(convs, [[0, 1], [2]])
    batch = PackedCollator(tokenizer.pad_token_id)([rows[0], rows[1]])
    assert "attention_mask" not in batch
    assert batch["num_tokens"] == sum(len(c.input_ids) for c in convs)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        offset = 0
        for row, members in enumerate([[0, 1], [2]]):
            offset = 0
            for c in members:
                ids = torch.tensor([convs[c].input_ids])
                alone = model(input_ids=ids, use_cache=False).logits[0]
                got = packed[row, offset : offset + ids.shape[1]]
                torch.testing.assert_close(got, alone, atol=1e-4, rtol=1e-4)
                offset += ids.shape[1]
        # Without restarting positions the second conversation would see the first: the check has teeth.
        flat = model(input_ids=batch["input_ids"][:1], use_cache=False).logits[0]
        n0 = len(convs[0].input_ids)
        assert not torch.allclose(flat[n0 : n0 + 5], packed[0, n0 : n0 + 5], atol=1e-3)
