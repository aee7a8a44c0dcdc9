"""Continuous batching for a Hugging Face causal LM: one scheduler thread, one running batch.

Every request becomes a Sequence. The scheduler thread loops: admit waiting sequences (prefill
them together, left-padded, into their own KV cache, then splice that cache into the running
one), run one decode step for the whole running batch, hand each sequence its new token, and
retire sequences that finished (EOS, token budget, a complete grammar) or were cancelled (stop
string, client gone). A new request therefore joins between two decode steps instead of waiting
for the batch to end. Each sequence picks its token with its own Sampler (inference/sampling.py),
so one batch mixes greedy and sampled, biased, penalised and grammar-constrained requests; a
sequence whose pick fails (a grammar error) fails alone.

The running batch's KV cache is a DynamicCache whose layers hold [batch, heads, time, dim]
tensors, left-padded; a 2-D attention mask marks the real positions and each sequence keeps its
own position ids, so a padded row computes what it would alone. Columns that only padding uses
are trimmed when sequences retire.

With LoRA adapters (inference/peft_adapters.py) one forward mixes them: each row runs with its sequence's
adapter, acquired when the sequence joins the batch and released when it leaves, so loading and letting
adapters go happen on this thread between forwards. With a prefix cache (inference/prefix_cache.py) a
retiring sequence leaves the KV it computed behind, and a new one whose prompt starts with kept tokens
(under the same adapter) starts from a copy of their KV and prefills only the rest.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from forgeflow.errors import InvalidInput, ServerUnavailable
from forgeflow.inference.peft_adapters import PeftAdapters
from forgeflow.inference.prefix_cache import BLOCK, PrefixCache
from forgeflow.inference.sampling import Sampler

log = logging.getLogger("forgeflow.batching")

_DONE = object()


class QueueFull(ServerUnavailable):
    """Back-pressure: more requests are waiting than the model server accepts."""

    status_code = 429


@dataclass(eq=False)
class Sequence:
    """One request in flight; its consumer reads steps (token, finish reason or None, raw logprob or None)
    from `out`."""

    prompt: list[int]
    max_new_tokens: int
    sampler: Sampler = field(default_factory=Sampler)
    adapter: str | None = None  # the LoRA adapter it runs with (inference/adapters.py); None: the model itself
    output: list[int] = field(default_factory=list)  # the tokens generated so far
    reused: int = 0  # prompt tokens whose KV came from the prefix cache
    holds_adapter: bool = False
    out: queue.Queue = field(default_factory=queue.Queue)
    generated: int = 0
    position: int = 0
    last: int = 0
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    def tokens(self):
        """The steps as they arrive; a scheduler failure is raised here."""
        while True:
            item = self.out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def enqueue(waiting: queue.Queue, seq: Sequence, accepting: threading.Lock, stop: threading.Event) -> None:
    """Queue a sequence for a runtime's loop: 503 once the runtime is closing (under `accepting`, so nothing
    joins after close drained the queue), 429 when the queue is full."""
    with accepting:
        if stop.is_set():
            raise ServerUnavailable("the model server is shutting down")
        try:
            waiting.put_nowait(seq)
        except queue.Full:
            raise QueueFull(f"the model server has {waiting.maxsize} requests waiting; retry later") from None


class BatchScheduler:
    """Owns the model's forward passes. Thread-safe `submit`; `close` stops the thread."""

    def __init__(self, model: Any, *, eos_ids: list[int], pad_id: int | None, device: str,
                 max_batch_size: int = 8, max_queue: int = 64, adapters: PeftAdapters | None = None,
                 prefix_cache: PrefixCache | None = None) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.adapters = adapters
        self.prefix_cache = prefix_cache
        self.eos = set(eos_ids)
        self.pad_id = pad_id if pad_id is not None else (eos_ids[0] if eos_ids else 0)
        self.device = device
        self.max_batch_size = max(1, max_batch_size)
        self.waiting: queue.Queue[Sequence] = queue.Queue(maxsize=max(1, max_queue))
        self.running: list[Sequence] = []
        self.cache: Any = None
        self.mask: Any = None
        self.steps = 0
        self.largest_batch = 0
        self.failure: str | None = None  # why the loop stopped serving, when it did (see Runtime.failure)
        self._stop = threading.Event()
        self._accepting = threading.Lock()  # no request is queued once close has begun
        self._thread = threading.Thread(target=self._loop, name="forgeflow-batcher", daemon=True)
        self._thread.start()

    # -- public ---------------------------------------------------------------------------------
    def submit(self, prompt: list[int], max_new_tokens: int, sampler: Sampler,
               adapter: str | None = None) -> Sequence:
        if adapter is not None and self.adapters is None:
            raise InvalidInput(f"model {adapter!r}: this instance serves no adapters", field="model")
        if self.adapters is not None:
            self.adapters.check(adapter)
        seq = Sequence(list(prompt), max_new_tokens, sampler, adapter=adapter)
        enqueue(self.waiting, seq, self._accepting, self._stop)
        return seq

    def stats(self) -> dict[str, int]:
        return {"running": len(self.running), "waiting": self.waiting.qsize(), "steps": self.steps,
                "largest_batch": self.largest_batch, "max_batch_size": self.max_batch_size}

    def close(self) -> None:
        with self._accepting:
            self._stop.set()
        self._thread.join(timeout=10)

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._serve()
            closing = ServerUnavailable("the model server is shutting down")
        except BaseException as exc:  # the model failed its check, or worse: the loop stops (the server exits)
            log.exception("the batch scheduler stopped")
            self.failure = f"the batch scheduler stopped: {type(exc).__name__}: {exc}"
            with self._accepting:
                self._stop.set()
            closing = ServerUnavailable(f"{self.failure}; retry on another instance")
        while True:  # nothing is queued after close began: end what runs and what waits
            try:
                self.running.append(self.waiting.get_nowait())
            except queue.Empty:
                break
        for seq in self.running:
            self._release(seq)
            seq.out.put(closing)
            seq.out.put(_DONE)
        if self.adapters is not None:
            self.adapters.close()
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def _serve(self) -> None:
        while not self._stop.is_set():
            fresh: list[Sequence] = []
            try:
                fresh = self._take(block=not self.running)
                for seq in fresh:
                    if seq.cancelled:  # cancelled while queued: its end still goes to whoever reads it
                        seq.out.put(_DONE)
                fresh = [s for s in fresh if not s.cancelled]
                if fresh:
                    self._prefill(fresh)
                if self.running:
                    self._decode()
            except Exception as exc:  # a failed forward fails the requests in it, not the server
                log.exception("batch step failed")
                for seq in {*self.running, *fresh}:
                    self._release(seq)
                    seq.out.put(exc)
                    seq.out.put(_DONE)
                self.running, self.cache, self.mask = [], None, None
                exc.__traceback__ = None  # its frames hold the failed forward's tensors (an out-of-memory error's)
                self._check_model()
            except BaseException:  # the loop stops (see _loop): what it took must reach the loop's end
                self.running += [seq for seq in fresh if seq not in self.running]
                raise

    def _check_model(self) -> None:
        """After a failed step: one token through the model. A device that fails every forward (a CUDA error that
        sticks) raises here, so the loop stops and the server exits rather than failing each request that comes;
        a request that made its step fail is gone, so a model it did not break goes on."""
        if str(self.device).startswith("cuda"):
            self.torch.cuda.empty_cache()  # what the failed step held goes back first
        with self.torch.inference_mode():
            self.model(input_ids=self.torch.tensor([[0]], device=self.device))

    def _take(self, *, block: bool) -> list[Sequence]:
        room = self.max_batch_size - len(self.running)
        taken: list[Sequence] = []
        if room <= 0:
            return taken
        if block:
            try:
                taken.append(self.waiting.get(timeout=0.1))
            except queue.Empty:
                return taken
        while len(taken) < room:
            try:
                taken.append(self.waiting.get_nowait())
            except queue.Empty:
                break
        return taken

    def _forward(self, input_ids: Any, mask: Any, positions: Any, cache: Any, seqs: list[Sequence]) -> Any:
        inputs = dict(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                      use_cache=True, logits_to_keep=1)
        with self.torch.inference_mode():
            if self.adapters is not None:
                out = self.adapters.forward([s.adapter for s in seqs], **inputs)
            else:
                out = self.model(**inputs)
        return out.logits[:, -1, :].float()

    def _prefill(self, seqs: list[Sequence]) -> None:
        """Run the new prompts and splice their cache into the batch: those with a kept prefix one by one from
        a copy of its KV, the others together (left-padded)."""
        joining = []
        for seq in seqs:
            try:
                self._acquire(seq)
            except Exception as exc:  # its adapter would not load: it fails alone
                log.exception("loading adapter %s failed", seq.adapter)
                seq.out.put(exc)
                seq.out.put(_DONE)
                continue
            joining.append(seq)
        cold = []
        for seq in joining:
            reused, kv = self.prefix_cache.find(seq.adapter, seq.prompt) if self.prefix_cache else (0, [])
            if reused:
                self._prefill_from(seq, reused, kv)
            else:
                cold.append(seq)
        if cold:
            self._prefill_cold(cold)

    def _prefill_from(self, seq: Sequence, reused: int, kv: list[tuple[Any, Any]]) -> None:
        """Start a sequence's cache from a copy of its prompt's first `reused` tokens' KV and run the rest."""
        from transformers import DynamicCache

        torch = self.torch
        cache = DynamicCache(config=self.model.config)
        for layer, (keys, values) in enumerate(kv):
            cache.update(keys.to(self.device), values.to(self.device), layer)  # concatenation: a copy
        rest = seq.prompt[reused:]
        ids = torch.tensor([rest], device=self.device)
        positions = torch.arange(reused, len(seq.prompt), device=self.device).unsqueeze(0)
        mask = torch.ones((1, len(seq.prompt)), dtype=torch.long, device=self.device)
        seq.reused = reused
        seq.position = len(seq.prompt) - 1
        logits = self._forward(ids, mask, positions, cache, [seq])
        self._merge([seq], cache, mask)
        self._emit([seq], logits)

    def _prefill_cold(self, seqs: list[Sequence]) -> None:
        from transformers import DynamicCache

        torch = self.torch
        width = max(len(s.prompt) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq.prompt):] = torch.tensor(seq.prompt)
            mask[row, width - len(seq.prompt):] = 1
            seq.position = len(seq.prompt) - 1  # _emit advances it to the first new token's position
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, positions, cache, seqs)
        self._merge(seqs, cache, mask)
        self._emit(seqs, logits)

    def _merge(self, seqs: list[Sequence], cache: Any, mask: Any) -> None:
        torch = self.torch
        if not self.running:
            self.running, self.cache, self.mask = list(seqs), cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, width, 2), _left_pad(new.keys, width, 2)], dim=0)
            old.values = torch.cat([_left_pad(old.values, width, 2), _left_pad(new.values, width, 2)], dim=0)
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)], dim=0)
        self.running.extend(seqs)

    def _decode(self) -> None:
        torch = self.torch
        ids = torch.tensor([[s.last] for s in self.running], device=self.device)
        positions = torch.tensor([[s.position] for s in self.running], device=self.device)
        self.mask = torch.cat([self.mask, torch.ones((len(self.running), 1), dtype=self.mask.dtype,
                                                     device=self.device)], dim=1)
        logits = self._forward(ids, self.mask, positions, self.cache, self.running)
        self.steps += 1
        self.largest_batch = max(self.largest_batch, len(self.running))
        self._emit(self.running, logits)

    def _emit(self, seqs: list[Sequence], logits: Any) -> None:
        """Pick each sequence's next token, hand it over, and retire the finished."""
        greedy = logits.argmax(dim=-1).tolist()
        host = logits.cpu().numpy() if not all(s.sampler.plain for s in seqs) else None  # the Sampler's numpy
        for row, seq in enumerate(seqs):
            try:
                token, logprob = (greedy[row], None) if seq.sampler.plain else seq.sampler.pick(host[row])
                complete = seq.sampler.accept(token)
            except Exception as exc:  # this sequence's pick failed (its grammar): it fails, the batch goes on
                log.exception("picking a token failed")
                seq.out.put(exc)
                seq.cancelled = True
                continue
            seq.generated += 1
            seq.output.append(token)
            seq.last = token
            seq.position += 1
            reason = ("stop" if token in self.eos or complete
                      else "length" if seq.generated >= seq.max_new_tokens else None)
            if not seq.cancelled:
                seq.out.put((token, reason, logprob))
            if reason is not None:
                seq.cancelled = True
        if any(s.cancelled for s in self.running):
            self._retire()

    def _retire(self) -> None:
        torch = self.torch
        # the flags are read once: a cancel from another thread between two reads would retire a sequence
        # that stays in the batch
        cancelled = [s.cancelled for s in self.running]
        keep = [i for i, gone in enumerate(cancelled) if not gone]
        for row, seq in enumerate(self.running):
            if cancelled[row]:
                self._keep_prefix(row, seq)
                self._release(seq)
                seq.out.put(_DONE)
        if not keep:
            self.running, self.cache, self.mask = [], None, None
            return
        index = torch.tensor(keep, device=self.device)
        self.running = [self.running[i] for i in keep]
        self.mask = self.mask.index_select(0, index)
        # drop leading columns that no remaining sequence uses
        used = self.mask.sum(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:, :]
            layer.values = layer.values.index_select(0, index)[:, :, start:, :]

    def _keep_prefix(self, row: int, seq: Sequence) -> None:
        """Leave a retiring sequence's computed KV (prompt, then what it generated) to the prefix cache."""
        if self.prefix_cache is None or len(seq.prompt) + len(seq.output) < BLOCK:  # too short to be kept
            return
        columns = self.mask[row].nonzero().squeeze(-1)
        computed = (seq.prompt + seq.output)[:columns.numel()]
        kv = [(layer.keys[row:row + 1].index_select(2, columns), layer.values[row:row + 1].index_select(2, columns))
              for layer in self.cache.layers]  # index_select copies: nothing stays tied to the batch's tensors
        self.prefix_cache.add(seq.adapter, computed, kv)

    def _acquire(self, seq: Sequence) -> None:
        if self.adapters is not None and seq.adapter is not None and not seq.holds_adapter:
            self.adapters.loaded.acquire(seq.adapter)
            seq.holds_adapter = True

    def _release(self, seq: Sequence) -> None:
        if seq.holds_adapter:
            seq.holds_adapter = False
            try:
                self.adapters.loaded.release(seq.adapter)
            except Exception:  # evicting an adapter failed: the request has ended all the same
                log.exception("releasing adapter %s failed", seq.adapter)


def _left_pad(tensor: Any, width: int, dim: int) -> Any:
    """Zero-pad `tensor` on the left of `dim` up to `width`."""
    import torch

    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=tensor.dtype, device=tensor.device), tensor], dim=dim)
