"""Chat JSONL files -> tokenised, masked, packed training rows, with counts of what was cut or dropped."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.training.masking import tokenize_conversation
from forgeflow.training.packing import ChatRows


@dataclass
class PreparedData:
    rows: ChatRows
    conversations: int
    truncated: int
    dropped: int

    def describe(self, name: str, max_length: int) -> str:
        text = f"{name}: {self.conversations} conversations, {self.rows.tokens} tokens in {len(self.rows)} rows"
        if self.truncated:
            text += f"; {self.truncated} longer than max_seq_length={max_length} were truncated"
        if self.dropped:
            text += f"; {self.dropped} without assistant tokens (after truncation) were dropped"
        return text


def iter_messages(path: Path) -> Iterator[list[dict[str, Any]]]:
    """The `messages` list of every row of a chat JSONL file, checking each row as it goes."""
    if not path.is_file():
        raise NotFound(f"data file {path} does not exist")
    rows = 0
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list) or not messages:
                raise InvalidInput(f"{path}:{lineno}: 'messages' must be a non-empty list", field="messages")
            for message in messages:
                if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(
                    message.get("content"), str
                ):
                    raise InvalidInput(
                        f"{path}:{lineno}: each message needs string 'role' and 'content'", field="messages"
                    )
            rows += 1
            yield messages
    if rows == 0:
        raise InvalidInput(f"{path} has no rows; it needs one JSON object with 'messages' per line")


def prepare(path: Path, tokenizer: Any, max_length: int, packing: bool) -> PreparedData:
    """Tokenise every conversation with assistant-only labels, truncate to max_length, pack into rows."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInput("the base model's tokenizer has no chat template; pick a chat (instruct) model")
    kept, truncated, dropped, total = [], 0, 0, 0
    for messages in iter_messages(path):
        total += 1
        conv = tokenize_conversation(tokenizer, messages, max_length)
        truncated += conv.truncated
        if conv.loss_tokens == 0:
            dropped += 1
            continue
        kept.append(conv)
    if not kept:
        raise InvalidInput(f"{path}: no conversation has an assistant turn to learn from", field="messages")
    return PreparedData(ChatRows.build(kept, max_length, packing), total, truncated, dropped)
