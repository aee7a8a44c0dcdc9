"""Tokens/s of the `transformers` runtime with requests spread over 8 LoRA adapters, all on one, and none.

One ChatGenerator on the base model (max_batch_size 8, prefix cache off) serves 8 random rank-8 LoRA adapters
on all projections (tests/tiny.py build_tiny_adapter). Each round sends 8 concurrent greedy requests of
exactly --max-tokens tokens (end of sequence barred) in three mixes: spread (one request per adapter), one
(all on the first adapter) and base (no adapter), each with batched LoRA (inference/batched_lora.py) and with
PEFT's own mixed-batch forward, rounds alternating the order. Reported: median aggregate tokens/s per mix and
path (and PEFT's plain active-adapter forward for one), and spread / one. Timings are informational, never assertions.

    python bench/adapter_mix.py [--model DIR] [--rounds 3] [--max-tokens 64] [--json]

The model is the embedded SmolLM2-135M-Instruct (pulled as bench/serve_throughput.py does) unless --model
names a model folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

ADAPTERS = 8
QUESTIONS = ["What is a good lamp for a reading corner?", "How do I choose a drill for brick walls?",
             "Which paint lasts longest in a kitchen?", "How tall a ladder do I need for a two-storey house?",
             "What garden hose does not kink?", "Which door lock is hardest to pick?",
             "How do I lay floor tiles evenly?", "What should I ask a seller before buying a saw?"]


def run_mix(generator, names: list[str | None], max_tokens: int) -> float:
    """Aggregate tokens/s of one request per name, submitted at once."""
    from forgeflow.chat import Sampling
    from forgeflow.inference.sampling import Sampler

    tok = generator.tokenizer
    endless = Sampling(logit_bias=tuple((eos, -100.0) for eos in generator.eos_token_ids))
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       return_dict=True)["input_ids"] for q in QUESTIONS[:len(names)]]
    started = time.perf_counter()
    seqs = [generator.scheduler.submit(p, max_tokens, Sampler(endless), adapter=n) for p, n in zip(prompts, names)]
    count = sum(len(list(seq.tokens())) for seq in seqs)
    return count / (time.perf_counter() - started)


def use_path(adapters, path: str, name: str) -> None:
    """Serve the next run with batched LoRA, PEFT's mixed-batch forward, or PEFT's plain active-adapter forward
    (`plain`: every row on `name`, no `adapter_names`)."""
    adapters.__dict__.pop("forward", None)
    adapters.use_batched(path == "batched")
    if path == "plain":
        adapters.peft.set_adapter(name, inference_mode=True)
        adapters.forward = lambda rows, **inputs: adapters.peft(**inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a model folder (default: the embedded SmolLM2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from tiny import build_tiny_adapter

    from forgeflow.inference.generation import ChatGenerator

    model_dir = args.model
    if model_dir is None:
        from forgeflow.registry.base_models import SMOLLM2, pull_base_model

        model_dir = Path(pull_base_model(SMOLLM2).path)
    root = Path(tempfile.mkdtemp(prefix="ff-adapter-mix-"))
    adapters = {f"tuned-{i}:1": build_tiny_adapter(model_dir, root / str(i), seed=i) for i in range(ADAPTERS)}
    names = list(adapters)
    mixes = {"spread": names, "one": [names[0]] * ADAPTERS, "base": [None] * ADAPTERS}
    generator = ChatGenerator(model_dir, adapters=adapters, max_batch_size=ADAPTERS, max_adapters=ADAPTERS,
                              prefix_cache=False)
    rates: dict[tuple[str, str], list[float]] = {}
    try:
        runs = [(mix, path) for mix in mixes for path in ("batched", "peft")] + [("one", "plain")]
        for mix, path in runs:  # warm-up (loads every adapter), not measured
            use_path(generator.adapters, path, names[0])
            run_mix(generator, mixes[mix], 4)
        for r in range(args.rounds):
            for mix, path in (runs if r % 2 == 0 else runs[::-1]):
                use_path(generator.adapters, path, names[0])
                rates.setdefault((mix, path), []).append(run_mix(generator, mixes[mix], args.max_tokens))
                print(f"round {r + 1} {mix} {path}: {rates[mix, path][-1]:.1f} tokens/s", file=sys.stderr,
                      flush=True)
    finally:
        use_path(generator.adapters, "batched", names[0])
        generator.close()
    medians = {f"{mix}/{path}": round(statistics.median(v), 1) for (mix, path), v in rates.items()}
    report = {"model": str(model_dir), "rounds": args.rounds, "max_tokens": args.max_tokens,
              "tokens_per_s": medians,
              "spread_over_one": {p: round(medians[f"spread/{p}"] / medians[f"one/{p}"], 2) for p in ("batched", "peft")}}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("mix     batched  peft  (tokens/s, median)")
        for mix in mixes:
            print(f"{mix:7} {medians[f'{mix}/batched']:7} {medians[f'{mix}/peft']:6}")
        print(f"one adapter, PEFT's plain active-adapter forward: {medians['one/plain']}")
        print(f"spread / one: {report['spread_over_one']}")


if __name__ == "__main__":
    main()
