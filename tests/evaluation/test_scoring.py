"""The model side of an evaluation on the tiny model: a tokenizer with no pad token still batches, a prompt cut to
fit the context is reported and not hidden, max_new_tokens that leaves no room for a prompt is refused, and the
loss (output head only at labelled positions) equals the full forward pass's."""

from __future__ import annotations

import shutil

import pytest
import torch

from forgeflow.errors import InvalidInput
from forgeflow.evaluation.scoring import Row, Scorer, model_context, read_rows
from forgeflow.training.masking import IGNORE_INDEX

SHORT = Row(1, [{"role": "user", "content": "Hi"}], "Hello there.")
LONG = Row(2, [{"role": "user", "content": " ".join(["word"] * 2000)}], "Fine.")


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    loaded = Scorer(tiny_model_dir, device="cpu")
    yield loaded
    loaded.close()


def test_a_tokenizer_without_a_pad_token_still_generates_in_batches(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_model_dir, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = None  # as Llama 3 and Mistral ship
    tok.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token_id is None
    scorer = Scorer(folder, device="cpu")
    try:
        answers = scorer.generate([SHORT, Row(3, [{"role": "user", "content": "What is two and two?"}], "4")], 4)
        assert len(answers) == 2 and all(isinstance(a.text, str) for a in answers)
        assert not any(a.prompt_truncated for a in answers)
    finally:
        scorer.close()


def test_a_prompt_cut_to_fit_the_context_is_marked(scorer):
    short, long = scorer.generate([SHORT, LONG], 4)
    assert not short.prompt_truncated and long.prompt_truncated
    losses = scorer.losses([SHORT, LONG])
    assert not losses[0].prompt_truncated and losses[1].prompt_truncated and losses[1].tokens > 0


def test_max_new_tokens_must_leave_room_for_a_prompt(scorer, tiny_model_dir):
    context = model_context(tiny_model_dir)
    assert context == scorer.max_positions
    with pytest.raises(InvalidInput, match=f"below {context}") as refused:
        scorer.check_generation(context, "tiny")
    assert refused.value.field == "max_new_tokens"
    with pytest.raises(InvalidInput):
        scorer.generate([SHORT], context)  # never a prompt silently cut to one token
    scorer.check_generation(context - 1, "tiny")


def test_the_loss_equals_the_full_forward_pass(scorer):
    rows = [SHORT, Row(4, [{"role": "user", "content": "Name a colour."}], "Blue, or perhaps green.")]
    got = scorer.losses(rows)
    for row, loss in zip(rows, got):
        ids, labels, _ = scorer._labelled(row)
        with torch.no_grad():
            logits = scorer.model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        targets = torch.tensor(labels[1:])
        keep = targets != IGNORE_INDEX
        want = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
        assert loss.tokens == int(keep.sum()) and loss.loss == pytest.approx(float(want), rel=1e-4)


def test_read_rows_reads_only_the_rows_it_uses(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
                    '{"messages": [{"role": "user", "content": "no answer"}]}\n')
    assert [r.reference for r in read_rows(path, max_rows=1)] == ["a"]
    with pytest.raises(InvalidInput, match="line 2"):
        read_rows(path)
