"""Where a llamacpp stream's time goes, without HTTP: the runtime's decode rate in this process against the time
spent inside llama_decode, and the CPU the model server's serving threads spend per token.

    .venv/bin/python bench/llamacpp_engine_rate.py [--threads 1,2] [--requests 6] [--clients 1,8] [--json]

- engine: LlamaCppRuntime on the cached fine-tune (finetuned.py, q4_k_m), greedy, 64 tokens per request, one
  request at a time: tokens after the first over the time from the first to the last (the runtime's decode
  rate) and the same tokens over the time their llama_decode calls took (llama.cpp's own decode in the same
  context). Their ratio is what the runtime's loop (picking, queueing, detokenising) costs.
- serving: forgeflow's model server with 1 llama.cpp thread, streamed requests from `clients` clients; the CPU
  of every thread of the server but the llama.cpp worker (event loop, thread handoffs, detokenising, SSE), and
  of this process's clients, per completion token, read from /proc before and after each round.
Medians over `--rounds`; CPU per token is steadier on a shared machine than tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

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


def serving_cpu(model, clients: int, requests: int, rounds: int, max_tokens: int) -> dict:
    import engines
    from llamacpp_serving import run_clients

    server = engines.ModelServer(model, "llamacpp", "--gguf-type", "q4_k_m", "--threads", "1")
    try:
        url = f"{server.url}/v1/chat/completions"
        run_clients(url, server.headers, 1, 2, 8)
        serving, client, rates = [], [], []
        for _ in range(rounds):
            before, t0 = _thread_cpu(server.proc.pid), time.process_time()
            res = run_clients(url, server.headers, clients, requests, max_tokens)
            after, used = _thread_cpu(server.proc.pid), time.process_time() - t0
            deltas = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
            serving.append(1000 * sum(deltas[1:]) / res["tokens"])  # all but the busiest: the llama.cpp worker
            client.append(1000 * used / res["tokens"])
            rates.append(res["aggregate_tokens_per_s"])
    finally:
        server.stop()
    return {"clients": clients, "serving_cpu_ms_per_token": round(statistics.median(serving), 3),
            "client_cpu_ms_per_token": round(statistics.median(client), 3),
            "aggregate_tok_s": round(statistics.median(rates), 1), "per_round": [round(s, 3) for s in serving]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="llama.cpp threads for the engine part, comma-separated")
    parser.add_argument("--clients", default="1,8", help="concurrent clients for the serving part, comma-separated")
    parser.add_argument("--requests", type=int, default=6, help="requests per measurement (per client when serving)")
    parser.add_argument("--rounds", type=int, default=3, help="serving rounds; medians are reported")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parts", default="engine,serving", help="engine, serving or both")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if unknown := parts - {"engine", "serving"}:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))} (choose engine, serving)")
    ft = ensure_finetune()
    out: dict = {"engine": [], "serving": []}
    if "engine" in parts:
        for threads in (int(t) for t in args.threads.split(",")):
            say(f"engine: {threads} thread(s), {args.requests} requests")
            out["engine"].append(engine_rate(ft.model, threads, args.requests, args.max_tokens))
    if "serving" in parts:
        for clients in (int(c) for c in args.clients.split(",")):
            say(f"serving: {clients} client(s), {args.requests} requests each, {args.rounds} rounds")
            out["serving"].append(serving_cpu(ft.model, clients, args.requests, args.rounds, args.max_tokens))
    if args.json:
        print(json.dumps(out))
        return
    for row in out["engine"]:
        print(f"engine, {row['threads']} thread(s): runtime {row['runtime_decode_tok_s']} tok/s, inside llama_decode "
              f"{row['llama_decode_tok_s']} tok/s -> {row['runtime_over_llama_decode']:.3f}x")
    for row in out["serving"]:
        print(f"serving, {row['clients']} client(s): serving threads {row['serving_cpu_ms_per_token']} ms CPU/token "
              f"(rounds {row['per_round']}), clients {row['client_cpu_ms_per_token']} ms/token, "
              f"{row['aggregate_tok_s']} tok/s")


if __name__ == "__main__":
    sys.exit(main())
