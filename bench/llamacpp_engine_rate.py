"""Where a llamacpp stream's time goes, without HTTP: the runtime's decode rate in this process against the time
spent inside llama_decode, and the CPU the model server's serving threads spend per token.

    .venv/bin/python bench/llamacpp_engine_rate.py [--parts engine,serving,ttft,trace,text,idle] [--threads 1,2]
        [--requests 6] [--clients 1,8] [--rounds 3] [--json]

- engine: LlamaCppRuntime on the cached fine-tune (finetuned.py, q4_k_m), greedy, 64 tokens per request, one
  request at a time: tokens after the first over the time from the first to the last (the runtime's decode
  rate) and the same tokens over the time their llama_decode calls took (llama.cpp's own decode in the same
  context). Their ratio is what the runtime's loop (picking, queueing, detokenising) costs.
- serving: forgeflow's model server with 1 llama.cpp thread, streamed requests from `clients` clients; the CPU
  of every thread of the server but the llama.cpp worker (event loop, thread handoffs, detokenising, SSE), and
  of this process's clients, per completion token, read from /proc before and after each round.
- ttft: the runtime in this process (2 threads, no HTTP), `clients` clients each streaming `requests` requests
  back to back: time to first token p50 at 8 clients over that at 1, and what the steps were (a step holding a
  prompt, a step of decodes only): whether the serving level's TTFT ratio is the engine's or the HTTP path's.
- trace: the same 1 and 8 clients straight to a model server (2 threads) that writes down its runtime's times
  (traced_model_server.py): per request, from the client's send to the runtime preparing it, to its queueing, to
  its first text out of the runtime, to the client reading it (medians); and how long the median request waited for
  the step in flight, and how many steps it then took to its first token.
- idle: one stream in this process (2 threads) while the 7 other slots hold earlier requests' prompts and answers
  (the prefix cache's idle slots, host copies since the tenth pass), against the same stream with them emptied, in
  turn (the arms take turns going first): the decode rate's ratio.
- text: a stream's text assembly over the fine-tune's tokenizer, answers of 64 to 2048 tokens, by decoding the
  whole answer at every token against the tokenizers library's DecodeStream (what streams use), in turn, µs per
  token.
Medians over `--rounds`; CPU per token is steadier on a shared machine than tokens/s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

from finetuned import ensure_finetune, say


def engine_rate(model, threads: int, requests: int, max_tokens: int) -> dict:
    from serve_throughput import PROMPTS

    from forgeflow.chat.request import chat_request
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime

    runtime = LlamaCppRuntime(model, gguf_type="q4_k_m", threads=threads)
    engine, decode, spent = runtime.engine, runtime.engine.decode, []

    def timed(entries):  # the worker thread's only call into llama_decode
        t = time.perf_counter()
        status = decode(entries)
        spent.append((len(entries), time.perf_counter() - t))
        return status

    engine.decode = timed
    try:
        runtime.generate(chat_request([{"role": "user", "content": "warm up"}], temperature=0, max_new_tokens=8))
        through, inside = [], []
        for i in range(requests):
            spent.clear()
            request = chat_request([{"role": "user", "content": f"[{i:05d}] {PROMPTS[i % len(PROMPTS)]}"}],
                                   temperature=0, max_new_tokens=max_tokens)
            first = None
            for _event in runtime.stream(request):
                first = first or time.perf_counter()
            last = time.perf_counter()
            steps = [took for n, took in spent if n == 1]  # the decode steps (one token each)
            if first is not None and steps and last > first:
                through.append(len(steps) / (last - first))
                inside.append(len(steps) / sum(steps))
    finally:
        runtime.close()
    rt, ll = statistics.median(through), statistics.median(inside)
    return {"threads": threads, "runtime_decode_tok_s": round(rt, 1), "llama_decode_tok_s": round(ll, 1),
            "runtime_over_llama_decode": round(rt / ll, 3)}


def _together(loop, clients: int) -> None:
    """Run loop(0) ... loop(clients - 1) on threads of their own, all at once, to the end of the last."""
    import threading

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def engine_ttft(model, clients: int, requests: int, max_tokens: int, serial) -> dict:
    """Time to first token of the runtime in this process at `clients` clients, and its steps."""
    from serve_throughput import PROMPTS

    from forgeflow.chat.request import chat_request
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime

    runtime = LlamaCppRuntime(model, gguf_type="q4_k_m", threads=2)
    decode, steps, firsts = runtime.engine.decode, [], []

    def timed(entries):
        t = time.perf_counter()
        status = decode(entries)
        steps.append((len(entries), sum(1 for e in entries if e[3]), time.perf_counter() - t))
        return status

    def loop(index: int) -> None:
        for r in range(requests):
            prompt = f"[{next(serial):05d}] {PROMPTS[(index + r) % len(PROMPTS)]}"
            t0, first = time.perf_counter(), None
            for event in runtime.stream(chat_request([{"role": "user", "content": prompt}], temperature=0,
                                                     max_new_tokens=max_tokens)):
                if event.text and first is None:
                    first = time.perf_counter() - t0
            firsts.append(first if first is not None else time.perf_counter() - t0)

    runtime.engine.decode = timed
    try:
        runtime.generate(chat_request([{"role": "user", "content": "warm up"}], temperature=0, max_new_tokens=8))
        steps.clear()
        _together(loop, clients)
    finally:
        runtime.close()
    prompt_steps = [took for n, logits, took in steps if n > logits]
    decode_steps = [took for n, logits, took in steps if n == logits]
    return {"clients": clients, "ttft_p50_ms": round(1000 * statistics.median(firsts), 1),
            "ttft_ms": sorted(round(1000 * f) for f in firsts),
            "prompt_step_ms": round(1000 * statistics.median(prompt_steps), 1) if prompt_steps else None,
            "decode_step_ms": round(1000 * statistics.median(decode_steps), 1) if decode_steps else None}


def traced_ttft(model, clients: int, requests: int, max_tokens: int, serial) -> dict:
    """Where a request's time to first token goes, read from a traced model server and the client."""
    import tempfile

    import engines
    from llamacpp_serving import stream_chat
    from serve_throughput import PROMPTS
    from sse_client import Client

    trace = Path(tempfile.mkdtemp(prefix="ff-trace-")) / "trace.jsonl"
    server = engines.ModelServer(model, "llamacpp", "--gguf-type", "q4_k_m", "--threads", "2",
                                 program=[sys.executable, str(Path(__file__).parent / "traced_model_server.py")],
                                 env={"FORGEFLOW_BENCH_TRACE": str(trace)})
    sent: dict[str, tuple[float, float]] = {}
    url = f"{server.url}/v1/chat/completions"

    def loop(index: int) -> None:
        with Client() as http:
            for r in range(requests):
                key = f"{next(serial):05d}"
                t0 = time.time()
                res = stream_chat(http, url, server.headers,
                                  [{"role": "user", "content": f"[{key}] {PROMPTS[(index + r) % len(PROMPTS)]}"}],
                                  max_tokens)
                sent[key] = (t0, t0 + res["ttft"])

    try:
        with Client() as http:  # warm up
            stream_chat(http, url, server.headers, [{"role": "user", "content": "warm up"}], 8)
        _together(loop, clients)
    finally:
        server.stop()
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    steps = sorted((r for r in records if "step" in r), key=lambda r: r["step"])
    rows, waits, counts = [], [], []
    for r in records:
        if r.get("key") not in sent:
            continue
        t0, seen = sent[r["key"]]
        rows.append((r["prepare"] - t0, r["queued"] - r["prepare"], r["first"] - r["queued"], seen - r["first"],
                     seen - t0))
        flight = next((s for s in steps if s["step"] <= r["queued"] < s["end"]), None)
        waits.append(flight["end"] - r["queued"] if flight else 0.0)
        counts.append(sum(1 for s in steps if r["queued"] <= s["step"] and s["end"] <= r["first"] + 0.001))
    if not rows:
        raise RuntimeError(f"the traced model server wrote no request that the clients sent (see {trace})")
    medians = [round(1000 * statistics.median(column), 1) for column in zip(*rows)]
    return {"clients": clients, "requests": len(rows), "send_to_prepare_ms": medians[0],
            "prepare_to_queued_ms": medians[1], "queued_to_first_ms": medians[2], "first_to_client_ms": medians[3],
            "ttft_ms": medians[4], "step_in_flight_wait_ms": round(1000 * statistics.median(waits), 1),
            "steps_to_first_token": statistics.median(counts)}


def text_assembly(model_dir, rounds: int) -> list[dict]:
    """µs per token of a stream's text assembly, whole decodes against DecodeStream, in turn."""
    from transformers import AutoTokenizer

    from forgeflow.inference.runtimes.base import TokenStream
    from forgeflow.inference.runtimes.prepare import incremental_decoder

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    incremental = incremental_decoder(tokenizer)
    if incremental is None:
        raise SystemExit(f"{model_dir}'s tokenizer has no incremental decoder (not a fast tokenizer, or one that "
                         "cleans up spaces its own way): its streams decode whole")
    ids = tokenizer.encode((Path(__file__).parent / "README.md").read_text())

    def per_token(n: int, step) -> float:
        steps = [(t, "length" if i == n - 1 else None) for i, t in enumerate(ids[:n])]
        stream = TokenStream(steps, lambda got: tokenizer.decode(got, skip_special_tokens=True), 0, [],
                             incremental=step)
        t = time.perf_counter()
        for _event in stream:
            pass
        return 1e6 * (time.perf_counter() - t) / n

    out = []
    for n in (64, 256, 1024, 2048):
        whole, streamed = [], []
        for _ in range(rounds):
            whole.append(per_token(n, None))
            streamed.append(per_token(n, incremental))
        w, s = statistics.median(whole), statistics.median(streamed)
        out.append({"tokens": n, "whole_us_per_token": round(w, 1), "incremental_us_per_token": round(s, 1),
                    "whole_over_incremental": round(w / s, 1)})
    return out


def _thread_cpu(pid: int) -> dict[str, float]:
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:  # a thread that ended
            continue
        out[tid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _process_cpu(pid: int) -> float:
    """The CPU seconds of every thread the process has had, those that ended included."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serving_cpu(model, clients: int, requests: int, rounds: int, max_tokens: int) -> dict:
    import engines
    from llamacpp_serving import run_clients

    server = engines.ModelServer(model, "llamacpp", "--gguf-type", "q4_k_m", "--threads", "1")
    try:
        url = f"{server.url}/v1/chat/completions"
        run_clients(url, server.headers, 1, 2, 8)
        serving, client, rates = [], [], []
        for _ in range(rounds):
            before, whole, t0 = _thread_cpu(server.proc.pid), _process_cpu(server.proc.pid), time.process_time()
            res = run_clients(url, server.headers, clients, requests, max_tokens)
            after, used = _thread_cpu(server.proc.pid), time.process_time() - t0
            worker = max(after[t] - before.get(t, 0.0) for t in after)  # the busiest: the llama.cpp worker
            # the whole process's CPU counts threads that ended in the round too (a stream's own reading thread)
            serving.append(1000 * (_process_cpu(server.proc.pid) - whole - worker) / res["tokens"])
            client.append(1000 * used / res["tokens"])
            rates.append(res["aggregate_tokens_per_s"])
    finally:
        server.stop()
    return {"clients": clients, "serving_cpu_ms_per_token": round(statistics.median(serving), 3),
            "client_cpu_ms_per_token": round(statistics.median(client), 3),
            "aggregate_tok_s": round(statistics.median(rates), 1), "per_round": [round(s, 3) for s in serving]}


def idle_cache_rate(model, rounds: int, max_tokens: int) -> dict:
    """One stream's decode rate in this process (2 threads) while the 7 other slots hold the prompts and answers of
    earlier requests (what a deployment's prefix cache keeps), against the same stream with those idle slots
    emptied first, in turn: what cached idle prefixes cost a running stream (0.91x while they held cells in the
    unified KV cache; nothing since idle slots keep host copies instead: bench/README.md, tenth pass)."""
    from serve_throughput import PROMPTS

    from forgeflow.chat.request import chat_request
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime

    runtime, serial = LlamaCppRuntime(model, gguf_type="q4_k_m", threads=2), itertools.count(70000)

    def one() -> float:
        request = chat_request([{"role": "user", "content": f"[{next(serial):05d}] {PROMPTS[0]}"}], temperature=0,
                               max_new_tokens=max_tokens)
        stream = runtime.stream(request)
        times = [time.perf_counter() for _event in stream]  # the first text, ..., the result (after the last token)
        return (stream.result.completion_tokens - 1) / (times[-1] - times[0])

    def empty_idle() -> None:
        time.sleep(0.2)  # the last request's slot is let go just after its result: nothing runs after this
        for slot in runtime.slots.idle():  # (the worker touches the context only in a step)
            runtime.slots.drop(slot)

    held, emptied, cells = [], [], []
    try:
        for _ in range(8):
            one()
        for r in range(rounds):
            for arm in ("held", "emptied") if r % 2 == 0 else ("emptied", "held"):
                if arm == "held":
                    for _ in range(8):  # every slot caches a request's prompt and answer
                        one()
                    idle = runtime.slots.idle()
                    taken = min(idle, key=lambda slot: slot.used)  # the least recently used: the stream's
                    cells.append(sum(len(slot.cached) for slot in idle if slot is not taken))
                    held.append(statistics.median(one() for _ in range(3)))
                else:
                    rates = []
                    for _ in range(3):
                        empty_idle()
                        rates.append(one())
                    emptied.append(statistics.median(rates))
    finally:
        runtime.close()
    per = [h / e for h, e in zip(held, emptied)]
    return {"held_tok_s": round(statistics.median(held), 1), "emptied_tok_s": round(statistics.median(emptied), 1),
            "held_over_emptied": round(statistics.median(per), 3), "per_round": [round(x, 3) for x in per],
            "idle_cached_tokens": round(statistics.median(cells))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="llama.cpp threads for the engine part, comma-separated")
    parser.add_argument("--clients", default="1,8", help="concurrent clients for the serving part, comma-separated")
    parser.add_argument("--requests", type=int, default=6, help="requests per measurement (per client when serving)")
    parser.add_argument("--rounds", type=int, default=3, help="serving rounds; medians are reported")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parts", default="engine,serving",
                        help="comma-separated, from engine, serving, ttft, trace, text, idle")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if unknown := parts - {"engine", "serving", "ttft", "trace", "text", "idle"}:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))} (choose engine, serving, ttft, trace, text, idle)")
    ft = ensure_finetune()
    out: dict = {"engine": [], "serving": [], "ttft": [], "trace": [], "text": [], "idle": None}
    if "engine" in parts:
        for threads in (int(t) for t in args.threads.split(",")):
            say(f"engine: {threads} thread(s), {args.requests} requests")
            out["engine"].append(engine_rate(ft.model, threads, args.requests, args.max_tokens))
    if "serving" in parts:
        for clients in (int(c) for c in args.clients.split(",")):
            say(f"serving: {clients} client(s), {args.requests} requests each, {args.rounds} rounds")
            out["serving"].append(serving_cpu(ft.model, clients, args.requests, args.rounds, args.max_tokens))
    if "ttft" in parts:
        serial = itertools.count()
        for r in range(args.rounds):
            for clients in (1, 8):
                say(f"ttft: round {r + 1}, {clients} client(s), {args.requests} requests each, in this process")
                out["ttft"].append(engine_ttft(ft.model, clients, args.requests, args.max_tokens, serial))
    if "trace" in parts:
        serial = itertools.count(50000)
        for r in range(args.rounds):
            for clients in (1, 8):
                say(f"trace: round {r + 1}, {clients} client(s), {args.requests} requests each, traced model server")
                out["trace"].append(traced_ttft(ft.model, clients, args.requests, args.max_tokens, serial))
    if "text" in parts:
        say(f"text: whole decodes against DecodeStream, {max(args.rounds, 5)} rounds")
        out["text"] = text_assembly(ft.hf_dir, max(args.rounds, 5))
    if "idle" in parts:
        say(f"idle: one stream beside idle slots' cached prefixes and with them emptied, {args.rounds} rounds")
        out["idle"] = idle_cache_rate(ft.model, args.rounds, args.max_tokens)
    if args.json:
        print(json.dumps(out))
        return
    for row in out["engine"]:
        print(f"engine, {row['threads']} thread(s): runtime {row['runtime_decode_tok_s']} tok/s, inside llama_decode "
              f"{row['llama_decode_tok_s']} tok/s -> {row['runtime_over_llama_decode']:.3f}x")
    ones = [r["ttft_p50_ms"] for r in out["ttft"] if r["clients"] == 1]
    eights = [r["ttft_p50_ms"] for r in out["ttft"] if r["clients"] == 8]
    for row in out["ttft"]:
        print(f"ttft in-process, {row['clients']} client(s): p50 {row['ttft_p50_ms']} ms; steps holding a prompt "
              f"{row['prompt_step_ms']} ms, decodes only {row['decode_step_ms']} ms (p50); all {row['ttft_ms']}")
    if ones and eights:
        ratios = [round(e / o, 2) for o, e in zip(ones, eights)]
        print(f"ttft in-process, 8 clients / 1 client: {statistics.median(ratios):.2f}x (rounds {ratios})")
    for row in out["trace"]:
        print(f"trace, {row['clients']} client(s), {row['requests']} requests, medians: send -> prepare "
              f"{row['send_to_prepare_ms']} ms, prepare -> queued {row['prepare_to_queued_ms']}, queued -> first text "
              f"{row['queued_to_first_ms']}, -> client {row['first_to_client_ms']}; TTFT {row['ttft_ms']}; waited "
              f"{row['step_in_flight_wait_ms']} ms for the step in flight, then {row['steps_to_first_token']} step(s)")
    for row in out["text"]:
        print(f"text, {row['tokens']} tokens: whole decodes {row['whole_us_per_token']} µs/token, DecodeStream "
              f"{row['incremental_us_per_token']} µs/token ({row['whole_over_incremental']}x)")
    if (idle := out["idle"]) is not None:
        print(f"idle: one stream beside {idle['idle_cached_tokens']} cached tokens of 7 idle slots "
              f"{idle['held_tok_s']} tok/s, with them emptied {idle['emptied_tok_s']} -> "
              f"{idle['held_over_emptied']:.3f}x "
              f"(rounds {idle['per_round']})")
    for row in out["serving"]:
        print(f"serving, {row['clients']} client(s): serving threads {row['serving_cpu_ms_per_token']} ms CPU/token "
              f"(rounds {row['per_round']}), clients {row['client_cpu_ms_per_token']} ms/token, "
              f"{row['aggregate_tok_s']} tok/s")


if __name__ == "__main__":
    sys.exit(main())
