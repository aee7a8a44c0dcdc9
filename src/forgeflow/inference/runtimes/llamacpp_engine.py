"""One llama.cpp model and context, driven through llama.cpp's own batch API by llama-cpp-python's low-level
bindings: a batch holds tokens of several sequences (llama.cpp sequence ids), each at its own position; the KV
cache is unified, so sequences share all of its cells and a prefix copied between sequences shares them too. A
sequence's cells can be saved to host memory and put back later (llama.cpp's per-sequence state).
LoRA adapters (GGUF LoRA files, inference/gguf_lora.py) load beside the model and apply per context, so a
caller decodes each adapter's sequences in a call of their own. Only the runtime's worker thread calls this.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

from forgeflow.errors import ForgeflowError

_backend = threading.Lock()
_backend_ready = False


def _init_backend() -> Any:
    global _backend_ready
    import llama_cpp

    with _backend:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            quiet = logging.getLogger("llama-cpp-python")  # llama.cpp's log, which prints each graph it plans
            if quiet.level == logging.NOTSET:
                quiet.setLevel(logging.ERROR)
            _backend_ready = True
    return llama_cpp


class LlamaEngine:
    """A GGUF model with a context of `n_ctx` cells shared by up to `n_seq` sequences."""

    def __init__(self, gguf_path: Path, *, n_ctx: int, n_batch: int, n_seq: int, threads: int) -> None:
        lc = _init_backend()
        self.lc = lc
        self.n_batch = n_batch
        model_params = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(str(gguf_path).encode(), model_params)
        if not self.model:
            raise ForgeflowError(f"llama.cpp could not load {gguf_path} (its log on the server says why)")
        params = lc.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_seq_max = n_seq
        params.kv_unified = True
        params.n_threads, params.n_threads_batch = threads, threads
        params.no_perf = True
        # llama.cpp's own default (its tools and server): flash attention where the backend has it, ~10% more
        # tokens/s at 8 sequences on a CPU; it rounds differently from the plain attention llama-cpp-python's
        # Llama defaults to, so a close greedy choice can differ from `Llama(...)` without flash_attn=True
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_AUTO
        self.ctx = lc.llama_init_from_model(self.model, params)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise ForgeflowError(f"llama.cpp could not make a context of {n_ctx} cells for {gguf_path}")
        self.n_ctx = lc.llama_n_ctx(self.ctx)
        self.memory = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(n_batch, 0, 1)
        vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(vocab)
        self.eos = int(lc.llama_vocab_eos(vocab))
        self.adapter: Any = None  # the adapter the context applies now
        self.n_swa = lc.llama_model_n_swa(self.model)  # sliding-window layers' window (0: none)
        # a recurrent state (alone or beside attention) is one position: what it has read up to
        self.recurrent = bool(lc.llama_model_is_recurrent(self.model) or lc.llama_model_is_hybrid(self.model))

    def measure_kv(self, n_seq: int) -> int:
        """About what the context's cells take in host copies, all of them in use: a sequence of 2 cells' copy less
        one of 1, times the cells (a recurrent model's copy keeps one state per sequence whatever its length).
        It decodes, so only the worker calls it: a decode on another thread leaves OpenMP a second team of threads,
        and the worker's decodes ran ~25% slower beside it (a 23-token prompt step, 128 against 103 ms)."""
        sizes = []
        for length in (1, 2):
            if self.decode([(0, pos, 0, pos == length - 1) for pos in range(length)]) != 0:
                raise ForgeflowError("llama.cpp could not decode a token in a fresh context")
            sizes.append(self.saved_size(0))
            self.clear()
        return max((sizes[1] - sizes[0]) * self.n_ctx, sizes[0] * n_seq)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> int:
        """One llama_decode of (token, position, sequence id, wants logits) entries; llama.cpp's status
        (0 ok, 1 no room in the KV cache, other: failed)."""
        batch = self.batch
        for i, (token, pos, seq_id, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        return int(self.lc.llama_decode(self.ctx, batch))

    def logits(self, index: int) -> Any:
        """The logits of the last decode's entry `index` (a view, valid until the next decode)."""
        import numpy as np

        return np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))

    def forget(self, seq_id: int, start: int = 0) -> bool:
        """Drop a sequence's cells from position `start` on; False when llama.cpp cannot drop only a tail
        (recurrent models), in which case the caller forgets the whole sequence."""
        return bool(self.lc.llama_memory_seq_rm(self.memory, seq_id, start if start > 0 else -1, -1))

    def share(self, source: int, target: int, length: int) -> None:
        """Give `target` the cells of `source`'s first `length` positions (shared, not copied, in a unified
        cache)."""
        self.lc.llama_memory_seq_cp(self.memory, source, target, 0, length)

    def saved_size(self, seq_id: int) -> int:
        """The bytes of a host copy of a sequence's cells (0: it holds none)."""
        return int(self.lc.llama_state_seq_get_size(self.ctx, seq_id))

    def save(self, seq_id: int, size: int) -> Any:
        """A host copy of a sequence's cells (positions, tokens, keys and values, as llama.cpp writes them) of
        `saved_size` bytes (a numpy array: not zeroed first), or None if llama.cpp could not write it."""
        import numpy as np

        data = np.empty(size, dtype=np.uint8)
        written = self.lc.llama_state_seq_get_data(self.ctx, data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                                   size, seq_id)
        return data if written == size else None

    def restore(self, seq_id: int, data: Any) -> bool:
        """Put a saved copy back as `seq_id`'s cells (wherever the cache has free cells; the sequence's own are let
        go first); False when the cache has no room for it."""
        pointer = data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        return self.lc.llama_state_seq_set_data(self.ctx, pointer, len(data), seq_id) == len(data)

    def holds(self, seq_id: int, length: int) -> bool:
        """Whether `seq_id` holds positions 0..length-1 as a decode from `length` on needs them: its last one is
        `length - 1`, and sliding-window layers still have the window before it (a sequence cut far back, or
        copied from one that had moved on, has lost those)."""
        lc = self.lc
        first = lc.llama_memory_seq_pos_min(self.memory, seq_id)
        last = lc.llama_memory_seq_pos_max(self.memory, seq_id)
        if length == 0:
            return last == -1
        if self.recurrent:  # its state must have read exactly the kept positions (llama.cpp reports the state's
            return first == last == length - 1  # position as both, beside attention cells too)
        return last == length - 1 and 0 <= first <= (max(0, length - self.n_swa) if self.n_swa else 0)

    def clear(self) -> None:
        self.lc.llama_memory_clear(self.memory, True)

    def load_adapter(self, path: Path) -> Any:
        handle = self.lc.llama_adapter_lora_init(self.model, str(path).encode())
        if not handle:
            raise ForgeflowError(f"llama.cpp could not load the LoRA adapter {path} (its log on the server says why)")
        return handle

    def free_adapter(self, handle: Any) -> None:
        if self.adapter is not None and ctypes.cast(self.adapter, ctypes.c_void_p).value == \
                ctypes.cast(handle, ctypes.c_void_p).value:
            self.use_adapter(None)
        self.lc.llama_adapter_lora_free(handle)

    def use_adapter(self, handle: Any) -> None:
        """Apply this adapter (scale 1: the file's alpha / rank is PEFT's scale) or none to what is decoded next."""
        if handle is self.adapter:
            return
        lc = self.lc
        if handle is None:
            failed = lc.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            adapters = (lc.llama_adapter_lora_p_ctypes * 1)(handle)
            failed = lc.llama_set_adapters_lora(self.ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        if failed:
            raise ForgeflowError("llama.cpp could not apply the LoRA adapter to its context")
        self.adapter = handle

    def close(self) -> None:
        """Free the batch, the context and the model (which frees the adapters still loaded); a second call does
        nothing (freeing twice would crash the process)."""
        if self.ctx is None:
            return
        lc = self.lc
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)
        self.batch = self.ctx = self.model = self.memory = None
        self.adapter = None
