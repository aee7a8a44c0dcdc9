"""Chat generation with a Hugging Face causal LM: the engine behind one model-server process."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgeflow.errors import InvalidInput

ROLES = ("system", "user", "assistant")
# Used only when a model folder ships no chat template; it is the template the embedded model uses.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class GenerationResult:
    """The assistant text and token accounting for one request."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ChatGenerator:
    """Loads a model once and answers chat requests, one at a time (a lock guards generate)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from forgeflow.registry.mlflow_format import hf_model_dir

        self.model_dir = hf_model_dir(Path(model_dir))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if not self.tokenizer.chat_template:
            self.tokenizer.chat_template = CHATML_TEMPLATE
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(device)
        self.model.eval()
        self.eos_token_ids = self._eos_ids()
        self.pad_token_id = self._pad_id()
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self._lock = threading.Lock()

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        configured = self.model.generation_config.eos_token_id
        for value in configured if isinstance(configured, (list, tuple)) else [configured]:
            if value is not None and value not in ids:
                ids.append(int(value))
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(int(self.tokenizer.eos_token_id))
        return ids

    def _pad_id(self) -> int | None:
        for value in (self.model.generation_config.pad_token_id, self.tokenizer.pad_token_id):
            if value is not None:
                return int(value)
        return self.eos_token_ids[0] if self.eos_token_ids else None

    def generate(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        do_sample: bool | None = None,
        max_new_tokens: int = 256,
        seed: int | None = None,
    ) -> GenerationResult:
        """Answer a chat. Greedy when temperature is 0 or do_sample is false; sampling otherwise.

        When do_sample is not given, a positive temperature turns sampling on.
        """
        import torch

        chat = _check_messages(messages)
        if max_new_tokens < 1:
            raise InvalidInput("max_new_tokens must be at least 1", field="max_new_tokens")
        try:
            encoded = self.tokenizer.apply_chat_template(
                chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        except Exception as exc:
            raise InvalidInput(f"the model's chat template rejected the messages: {exc}", field="messages") from exc
        input_ids = encoded["input_ids"].to(self.device)
        attention_mask = encoded.get("attention_mask")
        attention_mask = attention_mask.to(self.device) if attention_mask is not None else torch.ones_like(input_ids)
        prompt_tokens = int(input_ids.shape[1])
        if self.max_positions and prompt_tokens >= self.max_positions:
            raise InvalidInput(
                f"the conversation is {prompt_tokens} tokens; this model reads at most {self.max_positions}",
                field="messages",
            )
        if self.max_positions:
            max_new_tokens = min(max_new_tokens, self.max_positions - prompt_tokens)

        sample = bool(do_sample) if do_sample is not None else bool(temperature)
        if temperature is not None and temperature <= 0:
            sample = False
        options: dict[str, Any] = {"do_sample": sample}
        if sample:
            options["temperature"] = float(temperature) if temperature else 1.0
            options["top_p"] = float(top_p) if top_p is not None else 1.0
            options["top_k"] = 0
        else:
            options.update(temperature=None, top_p=None, top_k=None)

        with self._lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=self.eos_token_ids or None,
                pad_token_id=self.pad_token_id,
                **options,
            )
        new_tokens = output[0, prompt_tokens:].tolist()
        finish_reason = "length"
        for index, token in enumerate(new_tokens):
            if token in self.eos_token_ids:
                new_tokens = new_tokens[: index + 1]
                finish_reason = "stop"
                break
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        return GenerationResult(text, prompt_tokens, len(new_tokens), finish_reason)


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise InvalidInput("messages must be a non-empty list of messages", field="messages")
    chat = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidInput(f"messages[{index}] must be an object with role and content", field=f"messages[{index}]")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidInput(f"messages[{index}].role must be one of {', '.join(ROLES)}", field=f"messages[{index}].role")
        if not isinstance(content, str):
            raise InvalidInput(f"messages[{index}].content must be a string", field=f"messages[{index}].content")
        chat.append({"role": role, "content": content})
    return chat
