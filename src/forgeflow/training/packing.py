"""Training rows from tokenised conversations: packed several to a row, or one per row, and their collator.

A packed row is conversations laid end to end with `position_ids` restarting at 0 for each one. The
collator passes no `attention_mask`, so transformers derives a block-diagonal causal mask from the
position_ids (`masking_utils.find_packed_sequence_indices`; flash-attention uses the same boundaries as
`cu_seq_lens`): a token attends only to earlier tokens of its own conversation. Rows of one batch are
padded at the end to the same length; padding gets its own restarting positions and IGNORE_INDEX labels,
and being last it is never attended to by real tokens under the causal mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from forgeflow.training.masking import IGNORE_INDEX, TokenizedConversation


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Group conversation indices into rows of at most max_length tokens (first-fit decreasing).

    Deterministic for the same data, so a resumed job sees the same rows in the same order.
    """
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        size = lengths[index]
        for r, room in enumerate(free):
            if size <= room:
                rows[r].append(index)
                free[r] -= size
                break
        else:
            rows.append([index])
            free.append(max_length - size)
    return rows


class ChatRows:
    """A map-style dataset of training rows: each item is input_ids, labels and position_ids lists."""

    def __init__(self, conversations: list[TokenizedConversation], rows: list[list[int]]) -> None:
        self.conversations = conversations
        self.rows = rows

    @classmethod
    def build(cls, conversations: list[TokenizedConversation], max_length: int, packing: bool) -> "ChatRows":
        if packing:
            rows = pack_rows([len(c.input_ids) for c in conversations], max_length)
        else:
            rows = [[i] for i in range(len(conversations))]
        return cls(conversations, rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        input_ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for c in self.rows[index]:
            conv = self.conversations[c]
            input_ids += conv.input_ids
            labels += conv.labels
            positions += range(len(conv.input_ids))
        return {"input_ids": input_ids, "labels": labels, "position_ids": positions}

    @property
    def tokens(self) -> int:
        return sum(len(c.input_ids) for c in self.conversations)


@dataclass
class PackedCollator:
    """Pads a batch of rows to its longest (rounded up to pad_to_multiple_of) without an attention mask.

    Adds `num_tokens` (real tokens in the batch) and `num_loss_tokens` (tokens with a label) for metrics;
    the trainer pops them before the forward pass.
    """

    pad_token_id: int
    pad_to_multiple_of: int = 8

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids, labels, positions = [], [], []
        real = loss = 0
        for f in features:
            pad = width - len(f["input_ids"])
            real += len(f["input_ids"])
            loss += sum(1 for label in f["labels"][1:] if label != IGNORE_INDEX)
            ids.append(f["input_ids"] + [self.pad_token_id] * pad)
            labels.append(f["labels"] + [IGNORE_INDEX] * pad)
            positions.append(f["position_ids"] + list(range(pad)))
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
            "num_tokens": torch.tensor(real, dtype=torch.long),
            "num_loss_tokens": torch.tensor(loss, dtype=torch.long),
        }
