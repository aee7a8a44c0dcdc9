"""Time to first token of a chat's later turns with the `transformers` runtime's prefix cache on and off.

A five-turn chat (a system prompt, user turns of about 100 tokens, answers of up to 100 tokens, greedy) is
played against two runtimes loaded in this process, one with the prefix cache and one without, round by
round alternating which goes first, so both see the same machine load. Reported: the median time to the
first streamed token of each turn, on / off. With the cache, turn n prefills only its new user message (the
earlier turns' prompt and answers are kept); without, it prefills the whole chat again.

    python bench/prefix_cache_ttft.py [--model DIR] [--rounds 3] [--turns 5] [--json]

The model is the embedded SmolLM2-135M-Instruct (pulled as bench/serve_throughput.py does) unless --model
names a model folder. Timings are informational, never assertions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

SYSTEM = "You are a patient assistant for a hardware shop. Answer carefully and with detail."
TOPICS = ["lamps", "drills", "paint", "ladders", "garden hoses", "door locks", "tiles"]


def user_turn(topic: str) -> str:
    """A user message of about 100 tokens."""
    return (f"I am renovating an old house and need advice about {topic}. The rooms are large, the walls "
            f"are brick, the floors are wooden and some windows face north. My budget is limited, I work "
            f"alone on weekends, and I want the result to last for many years without much upkeep. What "
            f"should I look for when I buy {topic}, which mistakes do beginners make, and how do I "
            f"compare two offers from different shops? Please also tell me what to ask the seller.")


def play(runtime, turns: int, max_tokens: int, session: str) -> list[float]:
    """Play the chat; the time to first token of each turn, in seconds. `session` opens the system prompt, so
    no round reuses another round's turns."""
    from forgeflow.chat import chat_request

    chat = [{"role": "system", "content": f"Session {session}. {SYSTEM}"}]
    ttft = []
    for turn in range(turns):
        chat.append({"role": "user", "content": user_turn(TOPICS[turn % len(TOPICS)])})
        started = time.perf_counter()
        stream = runtime.stream(chat_request(chat, max_new_tokens=max_tokens, temperature=0))
        first = None
        for event in stream:
            if first is None:
                first = time.perf_counter() - started
        ttft.append(first)
        chat.append({"role": "assistant", "content": stream.result.text})
    return ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a model folder (default: the embedded SmolLM2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from forgeflow.inference.generation import ChatGenerator

    model_dir = args.model
    if model_dir is None:
        from forgeflow.registry.base_models import SMOLLM2, pull_base_model

        model_dir = Path(pull_base_model(SMOLLM2).path)
    runtimes = {"on": ChatGenerator(model_dir, prefix_cache=True), "off": ChatGenerator(model_dir, prefix_cache=False)}
    times: dict[str, list[list[float]]] = {"on": [], "off": []}
    try:
        for key, runtime in runtimes.items():  # warm-up, not measured
            play(runtime, 2, 8, f"warm-up {key}")
        for r in range(args.rounds):
            for key in (("on", "off") if r % 2 == 0 else ("off", "on")):
                times[key].append(play(runtimes[key], args.turns, args.max_tokens, f"{r}-{key}"))
                print(f"round {r + 1} cache {key}: " + " ".join(f"{t * 1000:.0f}" for t in times[key][-1]) + " ms",
                      file=sys.stderr, flush=True)
        report = {"model": str(model_dir), "rounds": args.rounds, "max_tokens": args.max_tokens,
                  "prefix_cache": runtimes["on"].health()["prefix_cache"], "turns": []}
        for turn in range(args.turns):
            on = statistics.median(t[turn] for t in times["on"])
            off = statistics.median(t[turn] for t in times["off"])
            report["turns"].append({"turn": turn + 1, "ttft_on_ms": round(on * 1000, 1),
                                    "ttft_off_ms": round(off * 1000, 1), "on_over_off": round(on / off, 2)})
    finally:
        for runtime in runtimes.values():
            runtime.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for row in report["turns"]:
            print(f"turn {row['turn']}: TTFT cache on {row['ttft_on_ms']} ms, off {row['ttft_off_ms']} ms "
                  f"({row['on_over_off']}x)")
        print(f"prefix cache: {report['prefix_cache']}")


if __name__ == "__main__":
    main()
