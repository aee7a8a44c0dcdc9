"""A Hugging Face chat model loaded the one way forgeflow loads it (the transformers runtime and the evaluation
worker alike): the folder inside either MLflow layout, its tokenizer with ChatML when it has no chat template, fp32
on a CPU and bf16 on a GPU, in eval mode; and the end-of-sequence and padding ids its generation config and
tokenizer name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgeflow.inference.model_folder import hf_model_dir
from forgeflow.inference.runtimes.base import CHATML_TEMPLATE


@dataclass
class ChatModel:
    model_dir: Path
    device: str
    tokenizer: Any
    model: Any
    eos_token_ids: list[int]
    pad_token_id: int | None
    max_positions: int | None


def load_chat_model(path: str | Path, device: str = "cpu") -> ChatModel:
    """Load a model folder (`auto` picks CUDA when there is one)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = hf_model_dir(Path(path))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    model.eval()
    eos = eos_ids(model, tokenizer)
    max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
    return ChatModel(model_dir, device, tokenizer, model, eos, pad_id(model, tokenizer, eos), max_positions)


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The generation config's end-of-sequence ids, then the tokenizer's, each once."""
    ids: list[int] = []
    configured = model.generation_config.eos_token_id
    for value in [*(configured if isinstance(configured, (list, tuple)) else [configured]), tokenizer.eos_token_id]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return ids


def pad_id(model: Any, tokenizer: Any, eos: list[int]) -> int | None:
    """The padding id: the generation config's, the tokenizer's, else the first end-of-sequence id."""
    for value in (model.generation_config.pad_token_id, tokenizer.pad_token_id):
        if value is not None:
            return int(value)
    return eos[0] if eos else None
