"""Tokenise chat conversations with labels only on assistant turns, for any chat template.

Most chat templates (SmolLM2's ChatML, Phi-3's) do not mark assistant turns with `{% generation %}`,
so the assistant spans are found by rendering the template on prefixes of the conversation and
comparing token sequences:

- a turn starts where `render(messages[:i], add_generation_prompt=True)` ends: the assistant header
  (`<|im_start|>assistant\\n`, `<|assistant|>\\n`) belongs to the prompt and is not trained;
- a turn ends where `render(messages[:i+1])` and `render(messages[:i+1] + [a user turn])` stop agreeing,
  i.e. after what the template writes to close the turn (`<|im_end|>\\n`, `<|end|>\\n`) and before
  whatever it writes only at the end of a conversation (Phi-3's trailing `<|endoftext|>`). Whitespace-only
  tokens at the end of the span (the newline after `<|im_end|>`) are dropped, so the end-of-turn token is
  the last trained token of each turn and the model learns to stop.

Comparisons are done on token ids, so a template that is not prefix-stable in text is still handled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100
_PROBE_USER = {"role": "user", "content": "ok"}


@dataclass
class TokenizedConversation:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def loss_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def render(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool = False) -> list[int]:
    """Token ids of the chat template applied to `messages` (special tokens only as the template writes them)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def assistant_spans(tokenizer: Any, messages: list[dict[str, Any]], full: list[int]) -> list[tuple[int, int]]:
    """[start, end) token ranges of `full` (the rendered conversation) that belong to assistant turns."""
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], generation_prompt=True) if i else []
        start = _common_prefix(full, prompt)
        closed = render(tokenizer, messages[: i + 1])
        followed = render(tokenizer, [*messages[: i + 1], _PROBE_USER])
        end = min(_common_prefix(closed, followed), _common_prefix(full, closed))
        while end > start and not tokenizer.decode([full[end - 1]]).strip():
            end -= 1
        if end > start:
            spans.append((start, end))
    return spans


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, Any]], max_length: int) -> TokenizedConversation:
    """input_ids and labels (IGNORE_INDEX outside assistant turns), truncated to max_length tokens."""
    full = render(tokenizer, messages)
    labels = [IGNORE_INDEX] * len(full)
    for start, end in assistant_spans(tokenizer, messages, full):
        labels[start:end] = full[start:end]
    # The first token is never a target: in a packed row it would be predicted from the previous conversation.
    if labels:
        labels[0] = IGNORE_INDEX
    truncated = len(full) > max_length
    return TokenizedConversation(full[:max_length], labels[:max_length], truncated)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
