"""What llama.cpp's two KV cache layouts cost a step of decodes, on the cached fine-tune's q4_k_m GGUF (finetuned.py):
one cache shared by every sequence (`kv_unified`, what the llamacpp runtime uses) against a stream of cells per
sequence (what `llama-batched-bench` and `llama-server` use unless told `-kvu`).

    .venv/bin/python bench/llamacpp_kv_layout.py [--rounds 5] [--threads 2] [--cells 4096] [--json]

- steps: each case fills its sequences with a 32-token prompt, then times 24 steps of one token per sequence
  (ms per step). Sequence ids in a row (0,1,2) against ids with gaps between them (0,3,6), and all eight
  against seven with one gap (0-3,5-7), in both layouts. With a stream per sequence llama.cpp puts only sequences
  whose ids follow each other in one ubatch (`split_equal`, sequential), so a gap costs a whole extra forward pass.
- copy: with a stream per sequence, a prefix shared across sequences is a copy of the whole source stream
  (llama.cpp copies full stream buffers only); the first decode after `llama_memory_seq_cp` pays it: that decode
  against the same decode with no copy pending.
- idle: in the unified layout, one sequence decoding (64 prompt tokens, then 48 steps) beside 7 idle sequences of
  113 cached tokens each (791 cells, what the prefix cache keeps after the serving bench's requests), against the
  same with the cache emptied, at 1 thread and at `--threads`: time per token held / emptied. With one query
  token and 512 cells or more, llama.cpp's CPU flash attention splits the cells among its threads by position, and
  a thread whose share holds only masked (other sequences') cells skips them and waits at the barrier.
Cases take turns within each round; medians over rounds. llama-cpp-python's low-level bindings straight, as the
llamacpp runtime's engine (runtimes/llamacpp_engine.py) drives them.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

from finetuned import ensure_finetune, say

PROMPT = 32
STEPS = 24
CASES = [("unified", (0, 1, 2)), ("unified", (0, 3, 6)), ("per_sequence", (0, 1, 2)), ("per_sequence", (0, 3, 6)),
         ("unified", tuple(range(8))), ("per_sequence", tuple(range(8))), ("per_sequence", (0, 1, 2, 3, 5, 6, 7))]


class Context:
    def __init__(self, lc, model, *, unified: bool, cells: int, threads: int) -> None:
        self.lc = lc
        params = lc.llama_context_default_params()
        params.n_ctx = cells * 8 if not unified else max(cells, 8192)  # the runtime's shared size, or a stream each
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max, params.kv_unified = 8, unified
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_AUTO
        self.ctx = lc.llama_init_from_model(model, params)
        if not self.ctx:
            raise SystemExit("llama.cpp could not make the context")
        self.memory = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(512, 0, 1)

    def decode(self, entries) -> float:
        batch = self.batch
        for i, (token, pos, seq) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, True
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(entries)
        start = time.perf_counter()
        status = self.lc.llama_decode(self.ctx, batch)
        if status != 0:
            raise SystemExit(f"llama_decode failed (status {status})")
        return time.perf_counter() - start

    def step_ms(self, seqs) -> float:
        self.lc.llama_memory_clear(self.memory, True)
        self.decode([(100 + j, j, s) for s in seqs for j in range(PROMPT)])
        spent = sum(self.decode([(200 + k, PROMPT + k, s) for s in seqs]) for k in range(STEPS))
        return spent / STEPS * 1000

    def lone_ms(self, idle: bool) -> float:
        """One sequence's decode time per token, with or without 7 idle sequences' cells beside it."""
        self.lc.llama_memory_clear(self.memory, True)
        for seq in range(1, 8) if idle else ():
            self.decode([(100 + j, j, seq) for j in range(113)])
        self.decode([(100 + j, j, 0) for j in range(64)])
        return sum(self.decode([(200 + k, 64 + k, 0)]) for k in range(48)) / 48 * 1000

    def copy_ms(self) -> tuple[float, float]:
        """The first decode after a whole-stream copy, and the same decode without one."""
        lc = self.lc
        lc.llama_memory_clear(self.memory, True)
        self.decode([(100 + j, j, 0) for j in range(PROMPT)])
        lc.llama_memory_seq_cp(self.memory, 0, 1, -1, -1)
        copied = self.decode([(5, PROMPT, 0)])
        lc.llama_memory_seq_rm(self.memory, 0, PROMPT, -1)
        plain = self.decode([(5, PROMPT, 0)])
        return copied * 1000, plain * 1000

    def close(self) -> None:
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)


def measure(gguf: Path, rounds: int, threads: int, cells: int) -> dict:
    import llama_cpp as lc

    lc.llama_backend_init()
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    model = lc.llama_model_load_from_file(str(gguf).encode(), lc.llama_model_default_params())
    contexts = {layout: Context(lc, model, unified=layout == "unified", cells=cells, threads=threads)
                for layout in ("unified", "per_sequence")}
    lone = {n: contexts["unified"] if n == threads else Context(lc, model, unified=True, cells=cells, threads=n)
            for n in sorted({1, threads})}
    steps: dict[str, list[float]] = {}
    copies: list[tuple[float, float]] = []
    idle: dict[int, list[float]] = {n: [] for n in lone}
    try:
        for r in range(rounds):
            say(f"round {r + 1} of {rounds}")
            order = CASES if r % 2 == 0 else CASES[::-1]
            for layout, seqs in order:
                steps.setdefault(f"{layout} {','.join(map(str, seqs))}", []).append(contexts[layout].step_ms(seqs))
            copies.append(contexts["per_sequence"].copy_ms())
            for n, context in lone.items():
                ms = {held: context.lone_ms(held) for held in ((True, False) if r % 2 == 0 else (False, True))}
                idle[n].append(ms[True] / ms[False])
    finally:
        for context in {*contexts.values(), *lone.values()}:
            context.close()
        lc.llama_model_free(model)
    return {"gguf": gguf.name, "threads": threads, "cells_per_sequence": cells,
            "step_ms": {case: round(statistics.median(v), 2) for case, v in steps.items()},
            "step_ms_per_round": {case: [round(x, 2) for x in v] for case, v in steps.items()},
            "decode_after_copy_ms": round(statistics.median(c for c, _ in copies), 2),
            "decode_without_copy_ms": round(statistics.median(p for _, p in copies), 2),
            "idle_held_over_emptied_time": {n: round(statistics.median(v), 3) for n, v in idle.items()},
            "idle_per_round": {n: [round(x, 3) for x in v] for n, v in idle.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the cases take turns in each (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    parser.add_argument("--cells", type=int, default=4096,
                        help="cells per sequence in the stream-per-sequence layout: the runtime's longest request "
                             "(default 4096)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    if args.rounds < 1 or args.threads < 1 or args.cells < 256:
        parser.error("--rounds and --threads must be at least 1, --cells at least 256")
    from forgeflow.inference.gguf_export import cached_gguf

    gguf = cached_gguf(ensure_finetune().hf_dir, "q4_k_m")
    out = measure(gguf, args.rounds, args.threads, args.cells)
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['gguf']}, {out['threads']} threads; ms per step of one token per sequence (medians of {args.rounds})")
    for case, ms in out["step_ms"].items():
        print(f"  {case:28s} {ms:7.2f} ms   rounds {out['step_ms_per_round'][case]}")
    print(f"whole-stream copy ({out['cells_per_sequence']} cells): the decode after it {out['decode_after_copy_ms']} "
          f"ms, the same decode without {out['decode_without_copy_ms']} ms")
    for n, ratio in out["idle_held_over_emptied_time"].items():
        print(f"one sequence beside 791 idle cells / alone, time per token, {n} thread(s): {ratio:.3f} "
              f"(rounds {out['idle_per_round'][n]})")


if __name__ == "__main__":
    sys.exit(main())
