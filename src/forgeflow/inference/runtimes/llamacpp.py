"""The `llamacpp` runtime: the model exported to GGUF (inference/gguf_export.py) and run by
llama-cpp-python, the fastest path on a CPU. Needs the `llamacpp` extra.

Prompts are rendered and tokenized with the model folder's own HF tokenizer and chat template
(runtimes/base.py `PromptEncoder`, which keeps control-token text in messages as text), and
answers decoded with it, so this runtime reads and writes exactly the tokens the `transformers`
runtime does; llama.cpp only runs the forward passes and picks tokens (it never tokenizes).
One worker thread owns the llama context and serves queued requests in turn (llama.cpp's Python
API runs one sequence at a time), checking between tokens whether the consumer has gone.
Threads: `--threads`, else FORGEFLOW_LLAMACPP_THREADS, else half the cores (llama-cpp-python's
default for decoding; it would use every core for prompts).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
from pathlib import Path
from typing import Any

from forgeflow.chat import ChatRequest
from forgeflow.errors import ServerUnavailable
from forgeflow.inference.batching import _DONE, QueueFull, Sequence
from forgeflow.inference.runtimes.base import CHATML_TEMPLATE, GenerationResult, PromptEncoder, TokenStream

log = logging.getLogger("forgeflow.llamacpp")
MAX_CONTEXT = 4096


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) // 2)


class LlamaCppRuntime:
    """A GGUF model in llama.cpp, answering chats one at a time from a bounded queue."""

    name = "llamacpp"

    def __init__(self, model_dir: str | Path, *, gguf_type: str = "f16", threads: int | None = None,
                 max_queue: int = 64) -> None:
        from llama_cpp import Llama
        from transformers import AutoTokenizer

        from forgeflow.inference.gguf_export import cached_gguf
        from forgeflow.inference.model_folder import hf_model_dir

        self.model_dir = hf_model_dir(Path(model_dir))
        self.gguf_path = cached_gguf(self.model_dir, gguf_type)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if not self.tokenizer.chat_template:
            self.tokenizer.chat_template = CHATML_TEMPLATE
        config = json.loads((self.model_dir / "config.json").read_text())
        self.max_positions = min(int(config.get("max_position_embeddings") or 2048), MAX_CONTEXT)
        self.prompts = PromptEncoder(self.tokenizer, self.max_positions)
        # half the cores unless told, for decoding and prompts alike: on a small shared CPU a thread per
        # core stalls badly whenever anything else runs (its threads wait on each other every step)
        threads = threads or int(os.environ.get("FORGEFLOW_LLAMACPP_THREADS") or 0) or default_threads()
        self.llm = Llama(model_path=str(self.gguf_path), n_ctx=self.max_positions, n_batch=512,
                         n_threads=threads, n_threads_batch=threads, verbose=False)
        self.eos_token_ids = self._eos_ids(config)
        self.waiting: queue.Queue[Sequence] = queue.Queue(maxsize=max(1, max_queue))
        self.served = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="forgeflow-llamacpp", daemon=True)
        self._thread.start()

    def _eos_ids(self, config: dict) -> list[int]:
        ids = {int(self.llm.token_eos())}
        gen_path = self.model_dir / "generation_config.json"
        configured = json.loads(gen_path.read_text()).get("eos_token_id") if gen_path.exists() else None
        configured = configured if configured is not None else config.get("eos_token_id")
        for value in configured if isinstance(configured, list) else [configured]:
            if value is not None:
                ids.add(int(value))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return sorted(ids)

    def stream(self, request: ChatRequest) -> TokenStream:
        """Queue a chat at once (a prompt too long or a full queue raises here), and return its token stream."""
        if self._stop.is_set():
            raise ServerUnavailable("the model server is shutting down")
        prompt = self.prompts.encode(request.messages)
        budget = min(request.max_new_tokens, self.max_positions - len(prompt))
        seq = Sequence(prompt, budget, request.sampling)
        try:
            self.waiting.put_nowait(seq)
        except queue.Full:
            raise QueueFull(f"the model server has {self.waiting.maxsize} requests waiting; retry later") from None
        return TokenStream(seq.tokens(), self._decode, len(prompt), request.stop, seq.cancel)

    def generate(self, request: ChatRequest) -> GenerationResult:
        return self.stream(request).run()

    def health(self) -> dict[str, Any]:
        return {"runtime": self.name, "waiting": self.waiting.qsize(), "served": self.served,
                "gguf": self.gguf_path.name}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.llm.close()  # free the context now: at interpreter exit llama-cpp-python's own cleanup can fail

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                seq = self.waiting.get(timeout=0.1)
            except queue.Empty:
                continue
            if seq.cancelled:
                continue
            try:
                self._run(seq)
            except Exception as exc:
                log.exception("llama.cpp generation failed")
                seq.out.put(exc)
                self.llm.reset()
            seq.out.put(_DONE)
            self.served += 1

    def _run(self, seq: Sequence) -> None:
        s = seq.sampling
        if s.greedy:
            options = {"temp": 0.0, "top_k": 1, "top_p": 1.0}
        else:
            self.llm.set_seed(s.seed if s.seed is not None else random.getrandbits(31))
            options = {"temp": s.temperature, "top_k": 0, "top_p": s.top_p}
        eos = set(self.eos_token_ids)
        for token in self.llm.generate(seq.prompt, min_p=0.0, typical_p=1.0, repeat_penalty=1.0,
                                       reset=True, **options):
            seq.generated += 1
            reason = "stop" if token in eos else "length" if seq.generated >= seq.max_new_tokens else None
            if seq.cancelled:
                return
            seq.out.put((int(token), reason))
            if reason is not None:
                return
