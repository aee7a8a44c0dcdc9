"""Chat generation with a Hugging Face causal LM: the `transformers` runtime of a model server.

Requests are not served one at a time: each becomes a sequence in a BatchScheduler
(inference/batching.py), which decodes every running sequence in one shared forward pass and
admits new ones between decode steps. With `adapters` the model folder is their base, loaded once, and
each request runs with the LoRA adapter it names (inference/peft_adapters.py), one batch mixing them; the
prefix cache (inference/prefix_cache.py) lets a prompt that starts like an earlier one prefill only the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from forgeflow.chat import ChatRequest
from forgeflow.inference.adapters import DEFAULT_MAX_LOADED
from forgeflow.inference.batching import BatchScheduler
from forgeflow.inference.chat_model import load_chat_model
from forgeflow.inference.peft_adapters import PeftAdapters
from forgeflow.inference.prefix_cache import DEFAULT_MAX_BYTES, PrefixCache
from forgeflow.inference.runtimes.base import GenerationResult, TokenStream
from forgeflow.inference.runtimes.prepare import RequestPreparer

log = logging.getLogger("forgeflow.generation")


class ChatGenerator:
    """Loads a model once and answers chat requests, batching concurrent ones together."""

    name = "transformers"

    def __init__(self, model_dir: str | Path, device: str = "cpu", *, max_batch_size: int = 8,
                 max_queue: int = 64, adapters: dict[str, Path] | None = None,
                 max_adapters: int = DEFAULT_MAX_LOADED, prefix_cache: bool = True,
                 prefix_cache_bytes: int = DEFAULT_MAX_BYTES) -> None:
        loaded = load_chat_model(model_dir, device)
        self.model_dir, self.device, self.tokenizer, self.model = (loaded.model_dir, loaded.device, loaded.tokenizer,
                                                                   loaded.model)
        self.adapters = PeftAdapters(self.model, adapters, max_loaded=max_adapters) if adapters else None
        self.eos_token_ids, self.pad_token_id = loaded.eos_token_ids, loaded.pad_token_id
        self.max_positions = loaded.max_positions
        self.requests = RequestPreparer(self.tokenizer, max_positions=self.max_positions,
                                        vocab_size=self._vocab_size(), eos_ids=self.eos_token_ids)
        self.prompts = self.requests.prompts
        if not _batchable_cache(self.model):
            log.warning("%s keeps a cache the batcher cannot splice; serving one request at a time",
                        type(self.model).__name__)
            max_batch_size, prefix_cache = 1, False
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache else None
        self.scheduler = BatchScheduler(self.model, eos_ids=self.eos_token_ids, pad_id=self.pad_token_id,
                                        device=self.device, max_batch_size=max_batch_size, max_queue=max_queue,
                                        adapters=self.adapters, prefix_cache=self.prefix_cache)

    def _vocab_size(self) -> int:
        """How many logits the model gives per step (its output layer's rows, maybe more than the tokenizer's)."""
        head = self.model.get_output_embeddings()
        if head is not None and getattr(head, "weight", None) is not None:
            return int(head.weight.shape[0])
        return int(self.model.config.vocab_size)

    def stream(self, request: ChatRequest, adapter: str | None = None) -> TokenStream:
        """Queue a request at once (whatever it cannot have, a prompt too long, an adapter not served or a full
        queue raises here), and return its token stream. `adapter` names one of the adapters this runtime
        was loaded with; None is the model folder itself."""
        prepared = self.requests.prepare(request)
        seq = self.scheduler.submit(prepared.prompt, prepared.budget, prepared.sampler, adapter=adapter)
        return prepared.stream(seq.tokens(), seq.cancel)

    def generate(self, request: ChatRequest, adapter: str | None = None) -> GenerationResult:
        """Answer a request; a stop string ends the answer before its first occurrence."""
        return self.stream(request, adapter).run()

    @property
    def failure(self) -> str | None:
        return self.scheduler.failure

    def health(self) -> dict[str, Any]:
        health: dict[str, Any] = {"runtime": self.name, **self.scheduler.stats()}
        health["prefix_cache"] = self.prefix_cache.stats() if self.prefix_cache else None
        if self.adapters is not None:
            health["adapters"] = self.adapters.stats()
        return health

    def close(self) -> None:
        self.scheduler.close()


def _batchable_cache(model: Any) -> bool:
    """Whether the model's default cache is plain full-attention layers the batcher can splice."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


