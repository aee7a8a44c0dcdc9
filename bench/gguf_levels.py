"""What each GGUF level costs and gives on a SmolLM2 fine-tune: file size, decoding speed and validation loss.

    .venv/bin/python bench/gguf_levels.py [--levels f16,q8_0,q4_k_m] [--rounds 3] [--tokens 64] [--threads 2] [--json]

For the cached fine-tune of finetuned.py (`tuned:1`, made once through `forgeflow job create`), each level is the
file forgeflow's llamacpp runtime serves (`inference/gguf_export.cached_gguf`: f16 and q8_0 written by forgeflow's
exporter, q4_k_m by llama.cpp's quantizer from the f16 file). For each:

- size of the file;
- single-stream decoding tokens/s in llama-cpp-python directly (greedy, `--threads` threads, prompt processing
  left out: tokens after the first over the time after the first), medians of rounds interleaved across levels;
- validation loss: mean cross-entropy over the assistant tokens of the held-out validation rows (forgeflow's
  training masks), from llama.cpp's logits of every position (`logits_all`), on the very token ids the
  transformers model sees; against the transformers f32 model's loss on the same rows, so the delta is what the
  quantization costs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from finetune_throughput import validation_loss
from finetuned import ensure_finetune, say
from serve_throughput import PROMPTS

LEVELS = ("f16", "q8_0", "q4_k_m")


def llama(path: Path, threads: int, *, logits_all: bool = False, n_ctx: int = 2048):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads,
                 logits_all=logits_all, verbose=False)


def decode_speed(llm, prompt_ids: list[int], tokens: int) -> float:
    """Tokens/s of greedy decoding after the first token (prompt processing excluded)."""
    count, first = 0, None
    for _ in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        count += 1
        if first is None:
            first = time.perf_counter()
        if count >= tokens:
            break
    return (count - 1) / (time.perf_counter() - first)


def gguf_validation_loss(path: Path, tokenizer, val: Path, threads: int) -> tuple[float, int]:
    """Mean cross-entropy over assistant tokens from llama.cpp's logits; returns (loss, tokens scored)."""
    import numpy as np

    from forgeflow.training.dataset import iter_messages
    from forgeflow.training.masking import IGNORE_INDEX, tokenize_conversation

    convs = [tokenize_conversation(tokenizer, messages, 1024) for messages in iter_messages(val)]
    llm = llama(path, threads, logits_all=True, n_ctx=max(len(c.input_ids) for c in convs) + 8)
    total, count = 0.0, 0
    try:
        for conv in convs:
            llm.reset()
            llm.eval(conv.input_ids)
            logits = np.asarray(llm.scores[: len(conv.input_ids) - 1], dtype=np.float64)
            labels = np.asarray(conv.labels[1:])
            keep = labels != IGNORE_INDEX
            rows, targets = logits[keep], labels[keep]
            peak = rows.max(axis=1)
            logsumexp = peak + np.log(np.exp(rows - peak[:, None]).sum(axis=1))
            total += float((logsumexp - rows[np.arange(len(targets)), targets]).sum())
            count += int(keep.sum())
    finally:
        llm.close()
    return total / count, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default=",".join(LEVELS), help="comma-separated GGUF types")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved decoding rounds (medians reported)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per measurement")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--steps", type=int, default=8, help="steps of the cached fine-tune (finetuned.py)")
    parser.add_argument("--omp-wait-policy", default="",
                        help="OMP_WAIT_POLICY for llama.cpp ('' by default: OpenMP's own, as instances run; passive "
                             "on a machine busy with other work, where spinning threads collapse)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.omp_wait_policy:  # read when llama.cpp's OpenMP starts, so before the first model loads
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    levels = [level for level in args.levels.split(",") if level]
    ft = ensure_finetune(args.steps)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgeflow.inference.gguf_export import cached_gguf

    tokenizer = AutoTokenizer.from_pretrained(ft.hf_dir)
    files = {}
    for level in levels:
        say(f"GGUF {level} of {ft.hf_dir} (exported once, cached beside the model)")
        files[level] = cached_gguf(ft.hf_dir, level)
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(ft.hf_dir, dtype=torch.float32)
    reference = validation_loss(model, tokenizer, ft.val)
    del model
    say(f"transformers f32 validation loss {reference:.4f}")

    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             return_dict=True)["input_ids"] for p in PROMPTS]
    speeds: dict[str, list[float]] = {level: [] for level in levels}
    loaded = {level: llama(files[level], args.threads) for level in levels}
    try:
        for level in levels:
            decode_speed(loaded[level], prompts[0], 8)  # warm-up
        for r in range(args.rounds):
            for level in levels:
                speeds[level].append(decode_speed(loaded[level], prompts[r % len(prompts)], args.tokens))
            say(f"round {r + 1}: " + ", ".join(f"{lv} {speeds[lv][-1]:.1f}" for lv in levels))
    finally:
        for llm in loaded.values():
            llm.close()
    rows = []
    for level in levels:
        loss, scored = gguf_validation_loss(files[level], tokenizer, ft.val, args.threads)
        rows.append({"level": level, "size_mb": round(files[level].stat().st_size / 1e6, 1),
                     "decode_tokens_per_s": round(statistics.median(speeds[level]), 1),
                     "rounds": [round(s, 1) for s in speeds[level]], "val_loss": round(loss, 4),
                     "val_loss_delta": round(loss - reference, 4), "tokens_scored": scored})
    report = {"model": "SmolLM2-135M-Instruct LoRA fine-tune (tuned:1)", "threads": args.threads,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
              "tokens": args.tokens, "transformers_f32_val_loss": round(reference, 4), "levels": rows,
              "load_average": [round(x, 2) for x in os.getloadavg()]}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"transformers f32 validation loss {reference:.4f}; {args.threads} threads, {args.tokens} tokens, "
          f"load average {report['load_average']}")
    print(f"{'level':8} {'size MB':>8} {'decode tok/s':>13} {'val loss':>9} {'delta':>8}  rounds")
    for r in rows:
        print(f"{r['level']:8} {r['size_mb']:8.1f} {r['decode_tokens_per_s']:13.1f} {r['val_loss']:9.4f} "
              f"{r['val_loss_delta']:+8.4f}  {r['rounds']}")


if __name__ == "__main__":
    main()
