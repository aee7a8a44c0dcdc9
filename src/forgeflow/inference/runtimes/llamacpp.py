"""The `llamacpp` runtime: the model exported to GGUF (inference/gguf_export.py) and run by llama.cpp through
llama-cpp-python's low-level bindings, the fastest path on a CPU. Needs the `llamacpp` extra.

Continuous batching: one worker thread owns the llama.cpp context (runtimes/llamacpp_engine.py) and up to
`max_batch_size` requests run in it at once, each in a slot (a llama.cpp sequence id, runtimes/llamacpp_slots.py).
Every step is one llama_decode holding the last picked token of each running request and prompt tokens of
requests that just joined, in the order they joined: the first prompt's chunk (at most n_batch tokens, so the
running requests wait a chunk, not a whole long prompt), then others while the step's prompt tokens stay within
`prefill_budget`, so prompts that arrive together get their first tokens one after another; while a prompt longer
than a step is read, each step first reads whole one prompt that joined after it and fits in half the batch.
Requests join between steps and leave when they end, are cancelled (a stop string, a client gone) or fail. A new
request reuses the KV of the longest prefix it shares with what a slot caches (a chat's next turn, a shared system
prompt); an idle slot keeps its cells as a host copy, so only running requests hold cells in the context
(runtimes/llamacpp_slots.py); `prefix_cache=False` turns that off. With LoRA adapters (`adapters={name: PEFT folder}`,
`model_dir` the base) each adapter is converted to a GGUF LoRA file (inference/gguf_lora.py) and loaded on first
use; llama.cpp applies adapters per context, so a step decodes each adapter's requests in a call of its own.
A call that finds the KV cache full fails the requests in it still reading their prompts (the others decode on
without them), or all of its requests when none or only those are. A step that fails (an error status from
llama_decode other than a full KV cache, or an exception) fails the requests running and starts the cache afresh
once the context has decoded one token; a context that cannot stops the worker, which ends every request it holds
and says why in `failure` (the model server then exits).

Prompts are rendered and tokenized with the model folder's own HF tokenizer and chat template
(runtimes/base.py `PromptEncoder`), and answers decoded with it, so this runtime reads and writes exactly the
tokens the `transformers` runtime does; llama.cpp only runs the forward passes. Each request's tokens are picked
by its own forgeflow Sampler (inference/sampling.py) from its logits, as in the `transformers` runtime: llama.cpp's
sampler chain counts penalties over a window of recent tokens rather than over the whole answer as OpenAI
defines them. Threads: `--threads`, else FORGEFLOW_LLAMACPP_THREADS, else half the cores.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections import deque
from pathlib import Path
from typing import Any

from forgeflow.chat import ChatRequest
from forgeflow.errors import ForgeflowError, InvalidInput, ServerUnavailable
from forgeflow.inference.adapters import DEFAULT_MAX_LOADED, LoadedAdapters
from forgeflow.inference.batching import _DONE, Sequence, enqueue
from forgeflow.inference.runtimes.base import CHATML_TEMPLATE, GenerationResult, TokenStream
from forgeflow.inference.runtimes.llamacpp_slots import Slot, SlotTable
from forgeflow.inference.runtimes.prepare import RequestPreparer

log = logging.getLogger("forgeflow.llamacpp")
MAX_CONTEXT = 4096  # per request
MAX_SHARED_CONTEXT = 8192  # cells of the KV cache the running requests share, when more than one request's
# MAX_CONTEXT fits in it: more running requests than fit at their longest wait for room (SlotTable.room_for)
MAX_SEQUENCES = 256  # llama.cpp's most sequences in one context (LLAMA_MAX_SEQ)
N_BATCH = 512
PREFILL_BUDGET = 16  # prompt tokens a step takes once it holds one prompt's chunk (`prefill_budget`): prompts
# that arrive together start in turn (bench/README.md: half the time to first token at 8 clients of 64 or more)


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) // 2)


class LlamaCppRuntime:
    """A GGUF model in llama.cpp, answering up to `max_batch_size` chats together from a bounded queue."""

    name = "llamacpp"

    def __init__(self, model_dir: str | Path, *, gguf_type: str = "f16", threads: int | None = None,
                 max_queue: int = 64, max_batch_size: int = 8, adapters: dict[str, Path] | None = None,
                 max_adapters: int = DEFAULT_MAX_LOADED, prefix_cache: bool = True,
                 prefill_budget: int = PREFILL_BUDGET) -> None:
        from transformers import AutoTokenizer

        from forgeflow.inference.adapters import AdapterCatalog
        from forgeflow.inference.gguf_export import cached_gguf
        from forgeflow.inference.gguf_lora import cached_gguf_lora
        from forgeflow.inference.model_folder import hf_model_dir
        from forgeflow.inference.runtimes.llamacpp_engine import LlamaEngine

        if prefill_budget < 1:
            raise InvalidInput(f"prefill_budget must be at least 1, got {prefill_budget}", field="prefill_budget")
        self.prefill_budget = prefill_budget
        if not 1 <= max_batch_size <= MAX_SEQUENCES:
            raise InvalidInput(f"max_batch_size must be from 1 to {MAX_SEQUENCES} (llama.cpp's most sequences in one "
                               f"context), got {max_batch_size}", field="max_batch_size")
        self.adapters: LoadedAdapters[Any] = LoadedAdapters(  # the worker loads them, once the engine is up
            lambda name: self.engine.load_adapter(self.lora_files[name]),
            lambda name, handle: self.engine.free_adapter(handle), max_loaded=max_adapters)
        self.model_dir = hf_model_dir(Path(model_dir))
        self.gguf_path = cached_gguf(self.model_dir, gguf_type)
        # converted now, so a bad adapter stops the start rather than a request
        self.lora_files = {name: cached_gguf_lora(path, self.model_dir)
                           for name, path in AdapterCatalog(adapters).paths.items()}
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if not self.tokenizer.chat_template:
            self.tokenizer.chat_template = CHATML_TEMPLATE
        config = json.loads((self.model_dir / "config.json").read_text())
        self.max_positions = min(int(config.get("max_position_embeddings") or 2048), MAX_CONTEXT)
        # half the cores unless told, for decoding and prompts alike: on a small shared CPU a thread per
        # core stalls badly whenever anything else runs (its threads wait on each other every step)
        threads = threads or int(os.environ.get("FORGEFLOW_LLAMACPP_THREADS") or 0) or default_threads()
        n_ctx = min(self.max_positions * max_batch_size, max(self.max_positions, MAX_SHARED_CONTEXT))
        self.engine = LlamaEngine(self.gguf_path, n_ctx=n_ctx, n_batch=N_BATCH, n_seq=max_batch_size,
                                  threads=threads)
        try:
            self._start(config, max_batch_size, max_queue, prefix_cache)
        except BaseException:
            self.engine.close()
            raise

    def _start(self, config: dict, max_batch_size: int, max_queue: int, prefix_cache: bool) -> None:
        """Everything after the engine is up, then the worker thread."""
        # the host copies of idle slots' cells hold at most what the context itself holds (measured by the worker)
        self.slots = SlotTable(self.engine, max_batch_size, prefix_cache=prefix_cache, max_bytes=0)
        self.eos_token_ids = self._eos_ids(config)
        self.requests = RequestPreparer(self.tokenizer, max_positions=self.max_positions,
                                        vocab_size=self.engine.n_vocab, eos_ids=self.eos_token_ids)
        self.prompts = self.requests.prompts
        self.waiting: queue.Queue[Sequence] = queue.Queue(maxsize=max(1, max_queue))
        self.held: deque[Sequence] = deque()  # taken from the queue, waiting for room in the KV cache
        self.served = 0
        self.failure: str | None = None  # why the worker stopped serving, when it did (see Runtime.failure)
        self.steps = 0
        self.largest_batch = 0
        self._current: str | None = None  # the adapter the context applies now
        self._stop = threading.Event()
        self._accepting = threading.Lock()  # no request is queued once close has begun
        self._thread = threading.Thread(target=self._loop, name="forgeflow-llamacpp", daemon=True)
        self._measured = threading.Event()  # set once the worker measured the context, or failed to
        self._thread.start()
        self._measured.wait()
        if self.failure is not None:  # a context that cannot decode fails the start, not the first requests
            self._thread.join()
            raise ForgeflowError(self.failure)

    def _eos_ids(self, config: dict) -> list[int]:
        ids = {self.engine.eos}
        gen_path = self.model_dir / "generation_config.json"
        configured = json.loads(gen_path.read_text()).get("eos_token_id") if gen_path.exists() else None
        configured = configured if configured is not None else config.get("eos_token_id")
        for value in configured if isinstance(configured, list) else [configured]:
            if value is not None:
                ids.add(int(value))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return sorted(ids)

    def stream(self, request: ChatRequest, adapter: str | None = None) -> TokenStream:
        """Queue a request at once (whatever it cannot have, a prompt too long, an adapter not served here or a
        full queue raises here), and return its token stream."""
        if adapter is not None and adapter not in self.lora_files:
            served = ", ".join(self.lora_files) or "none"
            raise InvalidInput(f"model {adapter!r} is not an adapter served here (served: {served}); name one of "
                               "them, or none for the base model", field="model")
        prepared = self.requests.prepare(request)
        seq = Sequence(prepared.prompt, prepared.budget, prepared.sampler, adapter=adapter)
        enqueue(self.waiting, seq, self._accepting, self._stop)
        return prepared.stream(seq.tokens(), seq.cancel)

    def generate(self, request: ChatRequest, adapter: str | None = None) -> GenerationResult:
        return self.stream(request, adapter).run()

    def health(self) -> dict[str, Any]:
        slots = self.slots.stats()
        return {"runtime": self.name, "waiting": self.waiting.qsize() + len(self.held),
                "running": slots.pop("running"), "served": self.served, "gguf": self.gguf_path.name,
                "steps": self.steps, "largest_batch": self.largest_batch, "kv_cells": self.engine.n_ctx,
                **slots, "prefix_cache": self.slots.prefix_cache,
                "adapters": {"served": list(self.lora_files), **self.adapters.stats()}}

    def close(self) -> None:
        """Stop the worker (it stops within a step), end every request running or queued, and free the context
        once nothing runs on it."""
        with self._accepting:
            self._stop.set()
        self._thread.join(timeout=60)
        if self._thread.is_alive():  # a forward pass that never returns: freeing its context would crash
            log.error("llama.cpp is still running after 60 s; its context is left to the process's exit")
            return
        self.adapters.clear()
        self.engine.close()  # free the context now, not at interpreter exit

    # -- the worker -------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self.slots.max_bytes = self.engine.measure_kv(len(self.slots.slots))
            self._measured.set()
            self._serve()
            closing = ServerUnavailable("the model server is shutting down; retry on another instance")
        except BaseException as exc:  # the context failed its check, or worse: it serves no more (the server exits)
            log.exception("the llama.cpp worker stopped")
            self.failure = f"the llama.cpp worker stopped: {type(exc).__name__}: {exc}"
            with self._accepting:
                self._stop.set()
            closing = ServerUnavailable(f"{self.failure}; retry on another instance")
            self._measured.set()  # (after `failure`: a start still waiting reads it)
        for slot in self.slots.running():
            self._end(slot, closing)
        while True:  # nothing is queued after close began: end what is waiting
            try:
                self.held.append(self.waiting.get_nowait())
            except queue.Empty:
                break
        for seq in self.held:
            seq.out.put(closing)
            seq.out.put(_DONE)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self._admit()
                if self.slots.running():
                    self._step()
            except Exception as exc:  # a bug or a broken context: fail what runs, start the cache afresh
                if isinstance(exc, ServerUnavailable) and self._stop.is_set():  # closing mid-step
                    break
                log.exception("llama.cpp step failed")
                for slot in self.slots.running():
                    self._end(slot, exc)
                self._start_afresh()

    def _start_afresh(self) -> None:
        """After a failed step: the cache emptied, and the context tried on one token. One that cannot decode it
        is broken for good (this raises, the worker stops and the server exits) rather than failing each request
        that comes; a request that made its step fail is gone, so a context it did not break goes on."""
        self.engine.clear()
        self.slots.reset()
        status = self.engine.decode([(0, 0, 0, True)])  # token 0: every vocabulary has it
        self.engine.clear()
        if status != 0:
            raise ForgeflowError(f"llama.cpp cannot decode a single token after a failed step (status {status})")

    def _admit(self) -> None:
        """Take waiting requests into idle slots while the KV cache has room for them."""
        while self.slots.idle():
            if self.held:
                seq = self.held.popleft()
            else:
                try:
                    seq = self.waiting.get(timeout=0.1) if not self.slots.running() else self.waiting.get_nowait()
                except queue.Empty:
                    return
            if seq.cancelled:  # cancelled while queued: its end still goes to whoever reads it
                seq.out.put(_DONE)
                continue
            acquired = False
            try:
                placement = self.slots.room_for(seq)
                if placement is None:
                    self.held.appendleft(seq)  # it runs once running requests end
                    return
                if seq.adapter is not None:
                    self.adapters.acquire(seq.adapter)
                    acquired = True
                self.slots.place(seq, placement)
            except Exception as exc:  # its adapter failed to load, or a bug: this request fails, the others go on
                log.exception("admitting a request (adapter %s) failed", seq.adapter)
                seq.out.put(exc)
                seq.out.put(_DONE)
                if acquired:
                    self._release_adapter(seq.adapter)

    def _step(self) -> None:
        """One decode of every running request (a token each, or a chunk of its prompt), a llama_decode per
        adapter, then a pick for every request that has logits."""
        for slot in self.slots.running():
            if slot.seq.cancelled:
                self._end(slot)
        groups: dict[str | None, list[tuple[Slot, list[int]]]] = {}
        for slot, chunk in self._plan():
            groups.setdefault(slot.adapter, []).append((slot, chunk))
        # the adapter the context applies now first: llama.cpp re-plans its graph at each switch
        for adapter in sorted(groups, key=lambda name: name != self._current):
            items = groups[adapter]
            self._check_open()
            self._decode(adapter, items)
        self.steps += 1
        self.largest_batch = max(self.largest_batch, sum(len(items) for items in groups.values()))

    def _plan(self) -> list[tuple[Slot, list[int]]]:
        """What this step decodes: the last pick of every request that is generating, then prompts in the order
        their requests joined: the first up to what the batch has room for, the next ones only while the step's
        prompt tokens stay within `prefill_budget`. Prompts that arrive together thus get their first tokens one
        after another instead of all at the end of one long step (on a CPU a prompt's prefill takes time in
        proportion to its tokens), and requests that began together stop keeping in step."""
        running = self.slots.running()
        plan = [(slot, slot.feed[:1]) for slot in running if len(slot.feed) == 1]
        room, taken = N_BATCH - len(plan), 0
        prompts = sorted((s for s in running if len(s.feed) > 1), key=lambda s: s.joined)
        if prompts and len(prompts[0].feed) > room:
            # the first prompt takes more than this step: the first prompt that joined after it and fits in half
            # the batch goes before it, whole, so a long prompt holds no short one back for all its steps; the
            # long one has the rest of the step (at least half of it), so short ones cannot starve it
            head = prompts[0]
            short = next((s for s in prompts[1:] if len(s.feed) <= room // 2), None)
            if short is not None:
                plan.append((short, list(short.feed)))
                room -= len(short.feed)
            return [*plan, (head, head.feed[:room])]
        for slot in prompts:
            limit = room if not taken else min(room, self.prefill_budget - taken)
            if limit <= 0:
                break
            chunk = slot.feed[:limit]
            plan.append((slot, chunk))
            room, taken = room - len(chunk), taken + len(chunk)
        return plan

    def _decode(self, adapter: str | None, items: list[tuple[Slot, list[int]]]) -> None:
        engine = self.engine
        if adapter is None:
            engine.use_adapter(None)
        else:  # held by its requests; this use only looks up the handle, and gives it back whatever happens
            handle = self.adapters.acquire(adapter)
            try:
                engine.use_adapter(handle)
            finally:
                self.adapters.release(adapter)
        self._current = adapter
        while True:
            entries, picks = self._entries(items)
            status = engine.decode(entries)
            if status != 1:
                break
            # no room in the KV cache (llama.cpp decoded none of it): the requests still reading their prompts
            # fail and the others decode without them; when none or only those are left, these requests fail
            reading = [item for item in items if item[0].seq.generated == 0]
            failing = reading if reading and len(reading) < len(items) else items
            log.error("llama_decode found no room in the KV cache for %d requests", len(failing))
            for slot, _ in failing:
                self.slots.drop(slot)
                self._end(slot, ServerUnavailable("the model server's KV cache is full; retry later"))
            if failing is items:
                return
            items = [item for item in items if item not in failing]
        if status != 0:  # a failed step: every running request fails and the context starts afresh (_serve)
            raise ForgeflowError(f"llama.cpp failed to decode (status {status})")
        for slot, chunk in items:
            slot.cached.extend(chunk)
            del slot.feed[: len(chunk)]
        for slot, index in picks:
            self._pick(slot, engine.logits(index))

    @staticmethod
    def _entries(items: list[tuple[Slot, list[int]]]) -> tuple[list, list[tuple[Slot, int]]]:
        """The llama_decode entries of these chunks, and which entry's logits each request that finishes its feed
        picks from."""
        entries, picks = [], []
        for slot, chunk in items:
            done = len(chunk) == len(slot.feed)
            for j, token in enumerate(chunk):
                last = done and j == len(chunk) - 1
                if last:
                    picks.append((slot, len(entries)))
                entries.append((token, len(slot.cached) + j, slot.seq_id, last))
        return entries, picks

    def _pick(self, slot: Slot, logits: Any) -> None:
        seq = slot.seq
        try:
            if seq.sampler.plain:
                token, logprob = int(logits.argmax()), None
            else:
                token, logprob = seq.sampler.pick(logits)
            complete = seq.sampler.accept(token)
        except Exception as exc:  # this request's pick failed (its grammar): it fails, the others go on
            log.exception("picking a token failed")
            self._end(slot, exc)
            return
        seq.generated += 1
        reason = ("stop" if token in self.eos_token_ids or complete
                  else "length" if seq.generated >= seq.max_new_tokens else None)
        if seq.cancelled:
            self._end(slot)
            return
        seq.out.put((token, reason, logprob))
        if reason is not None:
            self._end(slot, completed=True)
        else:
            slot.feed = [token]

    def _end(self, slot: Slot, error: BaseException | None = None, *, completed: bool = False) -> None:
        """End the slot's request: with `error` it fails; `completed` (a finish reason) counts it as served."""
        seq = slot.seq
        if error is not None:
            seq.out.put(error)
        self.served += completed
        seq.out.put(_DONE)
        self.slots.release(slot, keep=error is None)  # a failed request's cells are not worth keeping
        if seq.adapter is not None:
            self._release_adapter(seq.adapter)

    def _release_adapter(self, name: str) -> None:
        try:
            self.adapters.release(name)
        except Exception:  # evicting an adapter failed: the request using it has ended all the same
            log.exception("releasing adapter %s failed", name)

    def _check_open(self) -> None:
        if self._stop.is_set():
            raise ServerUnavailable("the model server is shutting down; retry on another instance")
