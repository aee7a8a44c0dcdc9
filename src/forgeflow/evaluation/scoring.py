"""The model side of an evaluation: load a model folder as forgeflow's runtimes do, the loss of each reference
answer given its prompt, and greedy answers generated in batches.

The loss is training's: the conversation rendered with the model's chat template, the reference answer's tokens
found with training's assistant-only masking (training/masking.py), its end-of-turn token included and the
assistant header not, so an evaluation's loss and a fine-tuning job's eval_loss measure the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgeflow.errors import InvalidInput
from forgeflow.training.masking import IGNORE_INDEX, assistant_spans, render


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


def read_rows(path: Path, max_rows: int | None = None) -> list[Row]:
    """The rows of a chat file (data/validate.py's format); a bad row is an InvalidInput naming its line."""
    from forgeflow.data.validate import numbered_conversations

    rows: list[Row] = []
    for line, messages in numbered_conversations(Path(path)):
        if max_rows is not None and len(rows) >= max_rows:
            break
        if len(messages) < 2:
            raise InvalidInput(f"{path}: line {line}: the row holds only its reference answer; an evaluation row "
                               "needs the messages that ask for it before the last (assistant) message",
                               field="messages")
        rows.append(Row(line, messages[:-1], messages[-1]["content"]))
    return rows


class Scorer:
    """One model loaded for evaluation: its loss on reference answers and its greedy answers."""

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from forgeflow.inference.model_folder import hf_model_dir
        from forgeflow.inference.runtimes.base import CHATML_TEMPLATE

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model_dir = hf_model_dir(Path(path))
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if not self.tokenizer.chat_template:  # as the runtimes serve such a model
            self.tokenizer.chat_template = CHATML_TEMPLATE
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(device)
        self.model.eval()
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_ids[0]
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None

    def losses(self, rows: list[Row]) -> list[tuple[float, int]]:
        """(mean cross-entropy over the reference answer's tokens, how many tokens) for each row, in one batch.
        A conversation longer than the model's context loses the start of its prompt, never the answer."""
        import torch

        encoded = [self._labelled(row) for row in rows]
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, labs) in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(labs)] = torch.tensor(labs)
            attention[i, : len(ids)] = 1
        with torch.no_grad():
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)).logits
        logits, targets = logits[:, :-1].float(), labels[:, 1:].to(self.device)
        per_token = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        ).view(targets.shape)
        mask = targets != IGNORE_INDEX
        counts = mask.sum(dim=1)
        sums = (per_token * mask).sum(dim=1)
        return [(float(s / c), int(c)) for s, c in zip(sums.tolist(), counts.tolist())]

    def _labelled(self, row: Row) -> tuple[list[int], list[int]]:
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
            full, labels = full[cut:], labels[cut:]
        return full, labels

    def generate(self, rows: list[Row], max_new_tokens: int) -> list[str]:
        """Greedy answers to the rows' prompts, in one left-padded batch; a prompt too long for the context
        loses its start."""
        import torch

        tok = self.tokenizer
        texts = [tok.apply_chat_template(row.prompt, tokenize=False, add_generation_prompt=True) for row in rows]
        tok.padding_side, tok.truncation_side = "left", "left"
        limit = max(1, self.max_positions - max_new_tokens) if self.max_positions else None
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                  truncation=limit is not None, max_length=limit)
        if tok.pad_token_id is None:  # tokenizers without a pad token padded with nothing: use the model's
            enc["input_ids"][enc["attention_mask"] == 0] = self.pad_id
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      temperature=None, top_p=None, top_k=None,
                                      pad_token_id=self.pad_id, eos_token_id=self.eos_ids)
        new = out[:, enc["input_ids"].shape[1]:]
        return [text.strip() for text in tok.batch_decode(new, skip_special_tokens=True)]

    def close(self) -> None:
        """Free the weights (the next side of the evaluation loads its own)."""
        import gc

        import torch

        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    configured = model.generation_config.eos_token_id
    for value in [*(configured if isinstance(configured, (list, tuple)) else [configured]), tokenizer.eos_token_id]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    if not ids:
        raise InvalidInput("the model names no end-of-sequence token (generation_config.eos_token_id or the "
                           "tokenizer's eos_token): add one to the model folder", field="model")
    return ids
