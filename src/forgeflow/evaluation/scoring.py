"""The model side of an evaluation: load a model folder as forgeflow's runtimes do, the loss of each reference
answer given its prompt, and greedy answers generated in batches.

The loss is training's: the conversation rendered with the model's chat template, the reference answer's tokens
found with training's assistant-only masking (training/masking.py), its end-of-turn token included and the
assistant header not, so an evaluation's loss and a fine-tuning job's eval_loss measure the same thing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import NamedTuple

from forgeflow.errors import InvalidInput
from forgeflow.inference.chat_model import load_chat_model
from forgeflow.training.masking import IGNORE_INDEX, assistant_spans, render


class Loss(NamedTuple):
    """A row's loss on its reference answer: the mean over its tokens, how many, whether its prompt was cut."""

    loss: float
    tokens: int
    prompt_truncated: bool


class Answer(NamedTuple):
    """A generated answer and whether its prompt lost its start to fit the model's context."""

    text: str
    prompt_truncated: bool


@dataclass(frozen=True)
class Row:
    """One evaluation row: where it is in the data file, the prompt (every message before the last) and the
    reference answer (the last, an assistant message)."""

    line: int
    prompt: list[dict[str, str]]
    reference: str

    @property
    def question(self) -> str:
        """The last user message of the prompt (what a judge is shown as the question)."""
        return next((m["content"] for m in reversed(self.prompt) if m.get("role") == "user"), "")

    @property
    def messages(self) -> list[dict[str, str]]:
        return [*self.prompt, {"role": "assistant", "content": self.reference}]

    @property
    def digest(self) -> str:
        """A short fingerprint of the row's messages: a resumed evaluation keeps a finished row only while the data
        file still holds the same row at that place."""
        text = json.dumps(self.messages, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_rows(path: Path, max_rows: int | None = None) -> list[Row]:
    """The rows of a chat file (data/validate.py's format), only the first `max_rows` read and checked when given;
    a bad row is an InvalidInput naming its line, a file with no rows one saying so."""
    from forgeflow.data.validate import numbered_conversations

    rows: list[Row] = []
    for line, messages in islice(numbered_conversations(Path(path)), max_rows):
        if len(messages) < 2:
            raise InvalidInput(f"{path}: line {line}: the row holds only its reference answer; an evaluation row "
                               "needs the messages that ask for it before the last (assistant) message",
                               field="messages")
        rows.append(Row(line, messages[:-1], messages[-1]["content"]))
    if not rows:
        raise InvalidInput(f"{path} has no rows: an evaluation needs chat rows ending with the reference answer",
                           field="messages")
    return rows


def model_context(model_dir: str | Path) -> int | None:
    """The context length a model folder's config.json declares (max_position_embeddings), read without loading
    the weights; None when it declares none or cannot be read."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        value = config.get("max_position_embeddings") or (config.get("text_config") or {}).get(
            "max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class Scorer:
    """One model loaded for evaluation: its loss on reference answers and its greedy answers."""

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        loaded = load_chat_model(path, device)
        if not loaded.eos_token_ids:
            raise InvalidInput("the model names no end-of-sequence token (generation_config.eos_token_id or the "
                               "tokenizer's eos_token): add one to the model folder", field="model")
        self.device, self.model_dir, self.tokenizer, self.model = (loaded.device, loaded.model_dir, loaded.tokenizer,
                                                                   loaded.model)
        self.eos_ids, self.max_positions = loaded.eos_token_ids, loaded.max_positions
        self.pad_id = loaded.pad_token_id if loaded.pad_token_id is not None else loaded.eos_token_ids[0]
        if self.tokenizer.pad_token_id is None:  # e.g. Llama 3, Mistral: batches are padded with the model's pad
            self.tokenizer.pad_token_id = self.pad_id

    def check_generation(self, max_new_tokens: int, ref: str) -> None:
        """Refuse a max_new_tokens that leaves no room in the model's context for a prompt (the prompt would be cut
        to nothing)."""
        if self.max_positions and max_new_tokens >= self.max_positions:
            raise InvalidInput(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the context of "
                               f"{ref} ({self.max_positions} tokens): pass max_new_tokens below "
                               f"{self.max_positions}, e.g. {min(128, self.max_positions // 2)}",
                               field="max_new_tokens")

    def losses(self, rows: list[Row]) -> list[Loss]:
        """The loss of each row's reference answer, in one batch: the mean cross-entropy over its tokens, how many,
        and whether its prompt lost its start to fit the model's context (the answer is never cut). The output head
        runs only where a label is, as training's loss does (trainer.labelled_logits)."""
        import torch

        from forgeflow.training.trainer import labelled_logits

        encoded = [self._labelled(row) for row in rows]
        width = max(len(ids) for ids, _, _ in encoded)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, labs, _) in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(labs)] = torch.tensor(labs)
            attention[i, : len(ids)] = 1
        targets = labels[:, 1:].to(self.device)
        keep = targets != IGNORE_INDEX
        with torch.no_grad():
            logits = labelled_logits(self.model, {"input_ids": input_ids.to(self.device),
                                                  "attention_mask": attention.to(self.device)}, keep)
            per_token = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="none")
        row_of = keep.nonzero()[:, 0]
        sums = torch.zeros(len(rows), device=per_token.device).index_add_(0, row_of, per_token)
        counts = keep.sum(dim=1)
        return [Loss(float(s / c), int(c), cut) for s, c, (_, _, cut)
                in zip(sums.tolist(), counts.tolist(), encoded)]

    def _labelled(self, row: Row) -> tuple[list[int], list[int], bool]:
        messages = row.messages
        full = render(self.tokenizer, messages)
        spans = assistant_spans(self.tokenizer, messages, full)
        assistants = sum(1 for m in messages if m.get("role") == "assistant")
        if len(spans) != assistants:  # the last turn's span came out empty
            raise InvalidInput(f"line {row.line}: the reference answer has no tokens under the model's chat "
                               "template", field="messages")
        start, end = spans[-1]
        labels = [IGNORE_INDEX] * len(full)
        labels[start:end] = full[start:end]
        if self.max_positions and len(full) > self.max_positions:
            cut = len(full) - self.max_positions
            if cut >= start:
                raise InvalidInput(f"line {row.line}: the reference answer alone is longer than the model's "
                                   f"context ({self.max_positions} tokens)", field="messages")
            return full[cut:], labels[cut:], True
        return full, labels, False

    def generate(self, rows: list[Row], max_new_tokens: int) -> list[Answer]:
        """Greedy answers to the rows' prompts, in one left-padded batch; a prompt too long for the context (with
        max_new_tokens after it) loses its start, and its answer says so."""
        import torch

        tok = self.tokenizer
        texts = [tok.apply_chat_template(row.prompt, tokenize=False, add_generation_prompt=True) for row in rows]
        tok.padding_side, tok.truncation_side = "left", "left"
        self.check_generation(max_new_tokens, str(self.model_dir))
        limit = self.max_positions - max_new_tokens if self.max_positions else None
        lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                  truncation=limit is not None, max_length=limit)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      temperature=None, top_p=None, top_k=None,
                                      pad_token_id=self.pad_id, eos_token_id=self.eos_ids)
        new = out[:, enc["input_ids"].shape[1]:]
        texts = [text.strip() for text in tok.batch_decode(new, skip_special_tokens=True)]
        return [Answer(text, limit is not None and n > limit) for text, n in zip(texts, lengths)]

    def close(self) -> None:
        """Free the weights (the next side of the evaluation loads its own)."""
        import gc

        import torch

        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
