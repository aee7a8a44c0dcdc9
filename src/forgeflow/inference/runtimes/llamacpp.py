"""The `llamacpp` runtime: the model exported to GGUF (inference/gguf_export.py) and run by
llama-cpp-python, the fastest path on a CPU. Needs the `llamacpp` extra.

Prompts are rendered and tokenized with the model folder's own HF tokenizer and chat template
(runtimes/base.py `PromptEncoder`, which keeps control-token text in messages as text), and
answers decoded with it, so this runtime reads and writes exactly the tokens the `transformers`
runtime does; llama.cpp only runs the forward passes. Tokens are picked by forgeflow's own Sampler
(inference/sampling.py) from the last position's logits, as in the `transformers` runtime: llama.cpp's
sampler chain counts penalties over a window of recent tokens rather than over the whole answer as
OpenAI defines them, and its Python logits-processor hook works on a copy it may have sorted.
One worker thread owns the llama context and serves queued requests in turn (llama.cpp's Python
API runs one sequence at a time), checking between tokens (and between prompt batches) whether the
consumer has gone or the server is closing; a prompt that starts like the previous one reuses that
prefix of the KV cache. The Sampler works on one thread in numpy, so llama.cpp's threads keep the cores.
Threads: `--threads`, else FORGEFLOW_LLAMACPP_THREADS, else half the cores (llama-cpp-python's
default for decoding; it would use every core for prompts).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

from forgeflow.chat import ChatRequest
from forgeflow.errors import ServerUnavailable
from forgeflow.inference.batching import _DONE, Sequence, enqueue
from forgeflow.inference.runtimes.base import CHATML_TEMPLATE, GenerationResult, TokenStream
from forgeflow.inference.runtimes.prepare import RequestPreparer

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
        # half the cores unless told, for decoding and prompts alike: on a small shared CPU a thread per
        # core stalls badly whenever anything else runs (its threads wait on each other every step)
        threads = threads or int(os.environ.get("FORGEFLOW_LLAMACPP_THREADS") or 0) or default_threads()
        self.llm = Llama(model_path=str(self.gguf_path), n_ctx=self.max_positions, n_batch=512,
                         n_threads=threads, n_threads_batch=threads, verbose=False)
        self.eos_token_ids = self._eos_ids(config)
        self.requests = RequestPreparer(self.tokenizer, max_positions=self.max_positions,
                                        vocab_size=self.llm.n_vocab(), eos_ids=self.eos_token_ids)
        self.prompts = self.requests.prompts
        self.waiting: queue.Queue[Sequence] = queue.Queue(maxsize=max(1, max_queue))
        self.served = 0
        self._stop = threading.Event()
        self._accepting = threading.Lock()  # no request is queued once close has begun
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
        """Queue a request at once (whatever it cannot have, a prompt too long or a full queue raises here),
        and return its token stream."""
        prepared = self.requests.prepare(request)
        seq = Sequence(prepared.prompt, prepared.budget, prepared.sampler)
        enqueue(self.waiting, seq, self._accepting, self._stop)
        return prepared.stream(seq.tokens(), seq.cancel)

    def generate(self, request: ChatRequest) -> GenerationResult:
        return self.stream(request).run()

    def health(self) -> dict[str, Any]:
        return {"runtime": self.name, "waiting": self.waiting.qsize(), "served": self.served,
                "gguf": self.gguf_path.name}

    def close(self) -> None:
        """Stop the worker (it stops within a token or a prompt batch), end every request still queued, and
        free the context once nothing runs on it."""
        with self._accepting:
            self._stop.set()
        self._thread.join(timeout=60)
        if self._thread.is_alive():  # a forward pass that never returns: freeing its context would crash
            log.error("llama.cpp is still running after 60 s; its context is left to the process's exit")
            return
        self.llm.close()  # free the context now: at interpreter exit llama-cpp-python's own cleanup can fail

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                seq = self.waiting.get(timeout=0.1)
            except queue.Empty:
                continue
            if not seq.cancelled:  # one cancelled while queued still gets its end, for whoever reads it
                try:
                    self._run(seq)
                    self.served += 1
                except ServerUnavailable as exc:  # closing mid-answer
                    seq.out.put(exc)
                except Exception as exc:
                    log.exception("llama.cpp generation failed")
                    seq.out.put(exc)
                    self.llm.reset()
            seq.out.put(_DONE)
        while True:  # nothing is queued after close began: end what is waiting
            try:
                seq = self.waiting.get_nowait()
            except queue.Empty:
                return
            seq.out.put(ServerUnavailable("the model server is shutting down"))
            seq.out.put(_DONE)

    def _run(self, seq: Sequence) -> None:
        import numpy as np
        from llama_cpp import llama_get_logits_ith

        llm, eos, n_vocab = self.llm, set(self.eos_token_ids), self.llm.n_vocab()
        self._start(seq.prompt)
        while True:
            logits = np.ctypeslib.as_array(llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
            if seq.sampler.plain:
                token, logprob = int(logits.argmax()), None
            else:
                token, logprob = seq.sampler.pick(logits)
            complete = seq.sampler.accept(token)
            seq.generated += 1
            reason = ("stop" if token in eos or complete
                      else "length" if seq.generated >= seq.max_new_tokens else None)
            if seq.cancelled:
                return
            seq.out.put((token, reason, logprob))
            if reason is not None:
                return
            self._check_open()
            llm.eval([token])

    def _start(self, prompt: list[int]) -> None:
        """Evaluate the prompt, keeping the KV cache of the longest prefix it shares with the last one.

        At least the prompt's last token is evaluated, for its logits, even when the whole prompt is cached
        (its logits then come from a batch of one token rather than the whole prompt; llama.cpp's results
        depend slightly on the batch, so log-probabilities can differ from a cold run's by about 1e-3).
        When llama.cpp cannot drop only the cache's tail (recurrent or hybrid models), it starts afresh, as
        llama-cpp-python's own generate does."""
        import llama_cpp

        llm = self.llm
        cached = llm.input_ids[: llm.n_tokens].tolist()
        keep = 0
        for a, b in zip(cached, prompt[:-1]):
            if a != b:
                break
            keep += 1
        if keep and not llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(llm.ctx), -1, keep, -1):
            keep = 0
            llm.reset()
        llm.n_tokens = keep
        for start in range(keep, len(prompt), llm.n_batch):
            self._check_open()
            llm.eval(prompt[start: start + llm.n_batch])

    def _check_open(self) -> None:
        if self._stop.is_set():
            raise ServerUnavailable("the model server is shutting down; retry on another instance")
