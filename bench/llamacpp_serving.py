"""forgeflow's llamacpp serving against llama.cpp itself, on a SmolLM2 fine-tune, one figure per acceptance row of
issue 14, same run, medians of interleaved rounds.

    .venv/bin/python bench/llamacpp_serving.py [--parts all] [--rounds 3] [--requests 4] [--threads 2] [--json]

Parts (`--parts`, comma-separated; `all` by default):

- finetune: the fine-tune deployed with `llamacpp` (the deployment's default GGUF level, read off the file its
  instance maps), one stream through the gateway, alternating request by request with plain transformers
  `generate` of the same fine-tune;
- b1, b8, ttft: 1 and 8 streaming clients through the gateway against `llama-batched-bench` (text-generation
  tokens/s, B=1 and B=8, same GGUF, same threads, prompt length of the bench's prompts, 64 tokens); time to first
  token at 8 clients over 1 client. Measured two ways: clients that send their requests back to back (the
  issue's rows: completion tokens over the whole time, prompts included), and 1 or 8 requests sent together as
  `llama-batched-bench` starts its sequences (sse_client.burst), read as it reads its own: the tokens that
  arrive while every stream decodes over that time (against S_TG), and completion tokens over the time of
  prompts and decoding together (against its generated tokens over T_PP + T_TG);
- llama-server: llama.cpp's `llama-server --parallel 8 -cb` on the same GGUF and threads, 1 and 8 clients, the same
  requests as forgeflow's, both ways;
- prefix: time to first token of turn 5 of a chat, model servers with and without `--no-prefix-cache`;
- adapters: resident memory of a model server holding 8 adapters of the base over one serving the merged
  fine-tune, each after the same load of 8 clients (the adapters' spread over all 8, then all on one); aggregate
  tokens/s at 8 clients spread over the 8 adapters over all on one (and the merged fine-tune's, for reference);
- overhead: 1-token request straight to a model server and through the gateway (p50 difference), and
  bench/gateway_overhead.py (the gateway alone in front of the test suite's fake model server).

A part whose feature this forgeflow lacks (no `--adapter` or `--no-prefix-cache` flag yet, tools not built) is
skipped with a message saying why. llama.cpp's tools come from bench/llamacpp_tools.py (built once, cached).

Every engine runs with the same OpenMP wait policy (`--omp-wait-policy`; by default OpenMP's own adaptive waits,
as a deployment's instances run): on a quiet machine they decode ~3x faster at one stream than passive waits, while
with 2 threads on 2 cores shared with other busy processes spinning threads collapse (0.4-1.7 tokens/s seen) and
`--omp-wait-policy passive` keeps the figures comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import engines
from finetuned import ensure_finetune, register_copies, say
from llamacpp_tools import cached_tools
from serve_throughput import PROMPTS, PlainTransformers, Server, overhead, pct
from sse_client import Client, burst, cpu_ms_per_chunk

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("finetune", "b1", "b8", "ttft", "llama-server", "prefix", "adapters", "overhead")
ENDPOINT, DEPLOYMENT = "bench-llama", "tuned"
_SERIAL = iter(range(10**9))


def fresh(prompt: str) -> str:
    """The prompt made new (a serial number first), so no engine answers it from a prefix cache of an earlier
    request: the throughput and TTFT parts measure prompts never seen, as a new user's are (a chat template's
    system prompt stays shared)."""
    return f"[{next(_SERIAL):05d}] {prompt}"


TURNS = ["Tell me about lighthouses.", "Why are they painted in stripes?", "Who looked after them?",
         "What did keepers eat?", "Summarise what you told me in one sentence."]


# -- clients -----------------------------------------------------------------------------------------------------
def chat_body(messages: list[dict], max_tokens: int, model: str | None = None) -> dict:
    """A greedy streamed chat completion's body, its usage asked for."""
    return {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}} | ({"model": model} if model else {})


def stream_chat(http: Client, url: str, headers: dict, messages: list[dict], max_tokens: int,
                model: str | None = None) -> dict:
    """One streamed chat completion (sse_client.Client.stream_chat): latency, time to first token, tokens, text."""
    return http.stream_chat(url, headers, chat_body(messages, max_tokens, model))


def run_clients(url: str, headers: dict, clients: int, requests: int, max_tokens: int, models=None) -> dict:
    """`clients` threads each streaming `requests` requests back to back; client i names models[i % len]."""
    results, errors, cpu = [], [], []
    lock = threading.Lock()

    def loop(index: int) -> None:
        with Client() as http:
            for r in range(requests):
                model = models[index % len(models)] if models else None
                messages = [{"role": "user", "content": fresh(PROMPTS[(index + r) % len(PROMPTS)])}]
                try:
                    res = stream_chat(http, url, headers, messages, max_tokens, model)
                except Exception as exc:  # counted and shown; a benchmark run goes on
                    errors.append(str(exc))
                    continue
                with lock:
                    results.append(res)
            with lock:
                cpu.append((http.cpu_s, http.chunks))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if not results:
        raise RuntimeError(f"every request failed: {errors[:2]}")
    tokens = sum(r["tokens"] for r in results)
    decode = [(r["tokens"] - 1) / (r["latency"] - r["ttft"]) for r in results if r["tokens"] > 1 and r["latency"] > r["ttft"]]
    return {"clients": clients, "requests": len(results), "errors": len(errors), "tokens": tokens,
            "aggregate_tokens_per_s": tokens / wall, "stream_tokens_per_s": tokens / sum(r["latency"] for r in results),
            "decode_tokens_per_s": statistics.median(decode) if decode else 0.0,
            "ttft_p50_ms": 1000 * statistics.median(r["ttft"] for r in results),
            "latency_p99_ms": 1000 * pct([r["latency"] for r in results], 99), "first_error": errors[:1],
            "client_cpu_ms_per_chunk": cpu_ms_per_chunk(cpu)}


def bursts(url: str, headers: dict, clients: int, n: int, max_tokens: int) -> dict:
    """sse_client.burst with the bench's prompts, made new per request."""
    return burst(url, headers, clients, n, lambda index, b: chat_body(
        [{"role": "user", "content": fresh(PROMPTS[(index + b) % len(PROMPTS)])}], max_tokens))


def chat_turn5_ttft(url: str, headers: dict, opener: str, max_tokens: int) -> float:
    """A five-turn chat (each turn carrying the model's earlier answers); the time to first token of turn 5, ms."""
    messages = [{"role": "system", "content": "You are a patient guide who answers in full paragraphs."},
                {"role": "user", "content": opener}]
    with Client() as http:
        for turn, question in enumerate(TURNS):
            if turn:
                messages.append({"role": "user", "content": question})
            res = stream_chat(http, url, headers, messages, max_tokens)
            messages.append({"role": "assistant", "content": res["text"]})
    return 1000 * res["ttft"]


# -- the run -----------------------------------------------------------------------------------------------------
class Bench:
    """Everything started for the run, and each part's measurement for one round."""

    def __init__(self, args: argparse.Namespace, parts: list[str]) -> None:
        self.args, self.parts, self.skipped, self.started = args, parts, {}, []
        self.log_dir = Path(tempfile.mkdtemp(prefix="ff-bench-llama-"))

    def setup(self) -> None:
        """Start what the selected parts need (stopped by `stop`, also when a start fails)."""
        args, parts = self.args, self.parts
        os.environ["FORGEFLOW_LLAMACPP_THREADS"] = str(args.threads)  # forgeflow's instances inherit it
        self.ft = ensure_finetune(args.steps)
        self.tools = cached_tools()
        flags = engines.model_server_flags()
        need_tools = {"b1", "b8", "llama-server"} & set(parts)
        if need_tools and self.tools is None:
            self.skip(need_tools, "llama.cpp's tools are not built: run bench/llamacpp_tools.py first")
        if "--adapter" not in flags:
            self.skip({"adapters"}, "this forgeflow's model server takes no --adapter (many adapters on one base)")
        if "--no-prefix-cache" not in flags:
            self.skip({"prefix"}, "this forgeflow's model server has no --no-prefix-cache switch")
        self.server = Server(self.ft.home)
        self.started.append(self.server.stop)
        try:  # a killed run's endpoint stays in the cached home
            self.server.cli("online-endpoint", "delete", "--name", ENDPOINT, "--yes")
        except SystemExit:
            pass
        self.server.cli("online-endpoint", "create", "--name", ENDPOINT)
        self.started.append(lambda: self.server.cli("online-endpoint", "delete", "--name", ENDPOINT, "--yes"))
        key = self.server.cli("online-endpoint", "get-credentials", "--name", ENDPOINT)["primary_key"]
        say("deploying the fine-tune with runtime llamacpp (its default GGUF level)")
        self.server.cli("online-deployment", "create", "--name", DEPLOYMENT, "--endpoint-name", ENDPOINT,
                        "--model", "tuned:1", "--runtime", "llamacpp",
                        "--set", "request_settings.max_concurrent_requests_per_instance=16")
        self.gateway = f"{self.server.url}/endpoints/{ENDPOINT}/v1/chat/completions"
        self.headers = {"Authorization": f"Bearer {key}", "azureml-model-deployment": DEPLOYMENT}
        run_clients(self.gateway, self.headers, 1, 1, 8)  # warm-up; the instance maps its GGUF by now
        pids = engines.instance_pids(self.server.proc.pid)
        mapped = [g for pid in pids for g in engines.mapped_ggufs(pid)]
        if not mapped:
            raise SystemExit("the llamacpp deployment's instance maps no GGUF file; is it running?")
        self.gguf = mapped[0]
        self.level = engines.gguf_level(self.gguf)
        say(f"the deployment serves {self.gguf} ({self.level})")
        tokenizer_ids = self._prompt_lengths()
        self.prompt_tokens = round(statistics.mean(tokenizer_ids))
        if "llama-server" in self.parts:
            self.llama_server = engines.LlamaServer(self.tools["llama-server"], self.gguf, threads=args.threads,
                                                    parallel=8, log=self.log_dir / "llama-server.log")
            self.started.append(self.llama_server.stop)
        if "overhead" in self.parts:
            self.direct = self._model_server(self.ft.model, "llamacpp")
        if "prefix" in self.parts:
            self.prefix = {(rt, on): self._model_server(self.ft.model, rt, *([] if on else ["--no-prefix-cache"]))
                           for rt in args.prefix_runtimes.split(",") for on in (True, False)}
        if "adapters" in self.parts:
            self.refs = register_copies(self.server, 8)
            self.adapters = {}
            for rt in args.adapter_runtimes.split(","):
                flags = [f for ref in self.refs for f in ("--adapter", f"{ref}={self.ft.adapter}")]
                self.adapters[rt] = (self._model_server(self.ft.model, rt),
                                     self._model_server(self.ft.base_dir, rt, *flags))

    def skip(self, parts: set[str], why: str) -> None:
        for part in parts & set(self.parts):
            self.skipped[part] = why
            self.parts.remove(part)
            say(f"skipping {part}: {why}")

    def _model_server(self, model_dir: Path, runtime: str, *flags: str) -> engines.ModelServer:
        extra = ["--gguf-type", self.level, "--threads", str(self.args.threads)] if runtime == "llamacpp" else []
        server = engines.ModelServer(model_dir, runtime, *extra, *flags,
                                     log=self.log_dir / f"model-server-{len(self.started)}.log")
        self.started.append(server.stop)
        return server

    def _prompt_lengths(self) -> list[int]:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.ft.hf_dir)
        return [len(tok.apply_chat_template([{"role": "user", "content": f"[00000] {p}"}], add_generation_prompt=True,
                                            return_dict=True)["input_ids"]) for p in PROMPTS]

    def stop(self) -> None:
        for stop in reversed(self.started):
            try:
                stop()
            except (Exception, SystemExit) as exc:  # the rest still stops
                say(f"stopping: {exc}")

    def _bursts(self, name: str, url: str, headers: dict) -> dict:
        """1 and 8 streams started together (sse_client.burst): decoding alone, and prompts and decoding together."""
        out = {}
        for clients in (1, 8):
            try:
                b = bursts(url, headers, clients, self.args.requests, self.args.max_tokens)
            except RuntimeError as exc:  # every burst failed: said, and the round goes on without the figure
                say(f"{name}, {clients} streams together: {exc}")
                continue
            if b["errors"]:
                say(f"{name}, {clients} streams together: {b['errors']} failed, the first with {b['first_error'][0]}")
            out |= {f"{name}_b{clients}_whole_tok_s": b["whole_tokens_per_s"], f"{name}_b{clients}_errors": b["errors"],
                    f"{name}_b{clients}_tokens_per_stream": b["tokens_per_stream"]}
            if b["decode_tokens_per_s"] is not None:  # None: no burst had a window where all streams decoded
                out[f"{name}_b{clients}_decode_tok_s"] = b["decode_tokens_per_s"]
        return out

    def round(self, r: int) -> dict:
        """One round of every selected part; figures by name."""
        a, out, n, mt = self.args, {}, self.args.requests, self.args.max_tokens
        if "finetune" in self.parts:
            plain = getattr(self, "plain", None) or PlainTransformers(self.ft.hf_dir)
            self.plain = plain
            direct, served = [], []
            with Client() as http:
                for i in range(n):
                    prompt = fresh(PROMPTS[i % len(PROMPTS)])
                    direct.append(plain.one(prompt, mt))
                    served.append(stream_chat(http, self.gateway, self.headers, [{"role": "user", "content": prompt}], mt))
            out["transformers_generate_tok_s"] = sum(d["tokens"] for d in direct) / sum(d["latency"] for d in direct)
            out["gateway_1_alternating_tok_s"] = sum(s["tokens"] for s in served) / sum(s["latency"] for s in served)
        # forgeflow and llama.cpp's own decoding take turns going first, so neither always runs on the cores the
        # other has just warmed (or a neighbour has just taken): this machine's speed drifts by up to 30% a minute
        for turn in ("forgeflow", "own") if r % 2 == 0 else ("own", "forgeflow"):
            if turn == "forgeflow" and {"b1", "b8", "ttft", "llama-server"} & set(self.parts):
                one = run_clients(self.gateway, self.headers, 1, n, mt)
                eight = run_clients(self.gateway, self.headers, 8, n, mt)
                out |= {"gateway_1_tok_s": one["stream_tokens_per_s"],
                        "gateway_1_decode_tok_s": one["decode_tokens_per_s"], "gateway_1_ttft_ms": one["ttft_p50_ms"],
                        "gateway_8_agg_tok_s": eight["aggregate_tokens_per_s"], "gateway_8_ttft_ms": eight["ttft_p50_ms"],
                        "gateway_errors": one["errors"] + eight["errors"],
                        "client_cpu_ms_per_chunk_1": one["client_cpu_ms_per_chunk"],
                        "client_cpu_ms_per_chunk_8": eight["client_cpu_ms_per_chunk"]}
                if {"b1", "b8"} & set(self.parts):  # started together, as llama-batched-bench's sequences are
                    out |= self._bursts("gateway", self.gateway, self.headers)
            if turn == "own" and {"b1", "b8"} & set(self.parts):
                own = engines.batched_bench(self.tools["llama-batched-bench"], self.gguf, threads=a.threads,
                                            prompt=self.prompt_tokens, tokens=mt, batches=[1, 8])
                for b in (1, 8):
                    out |= {f"batched_bench_b{b}_tok_s": own[b]["tg"],
                            f"batched_bench_b{b}_whole_tok_s": own[b]["whole"]}
        if "llama-server" in self.parts:
            one = run_clients(self.llama_server.chat_url, {}, 1, n, mt)
            eight = run_clients(self.llama_server.chat_url, {}, 8, n, mt)
            out |= {"llama_server_1_tok_s": one["stream_tokens_per_s"], "llama_server_1_ttft_ms": one["ttft_p50_ms"],
                    "llama_server_8_agg_tok_s": eight["aggregate_tokens_per_s"],
                    "llama_server_8_ttft_ms": eight["ttft_p50_ms"]}
            out |= self._bursts("llama_server", self.llama_server.chat_url, {})
        if "prefix" in self.parts:
            for (rt, on), server in self.prefix.items():
                opener = f"Round {r}: I am planning a trip along the coast and I love lighthouses."
                out[f"prefix_{rt}_{'on' if on else 'off'}_turn5_ttft_ms"] = chat_turn5_ttft(
                    server.chat_url, server.headers, opener, a.turn_tokens)
        if "adapters" in self.parts:
            for rt, (single, many) in self.adapters.items():
                spread = run_clients(many.chat_url, many.headers, 8, n, mt, models=self.refs)
                alone = run_clients(many.chat_url, many.headers, 8, n, mt, models=self.refs[:1])
                merged = run_clients(single.chat_url, single.headers, 8, n, mt)  # the same load, so both hold
                out |= {f"adapters_{rt}_merged_tok_s": merged["aggregate_tokens_per_s"],  # batches' memory alike
                        f"adapters_{rt}_spread_tok_s": spread["aggregate_tokens_per_s"],
                        f"adapters_{rt}_one_tok_s": alone["aggregate_tokens_per_s"],
                        f"adapters_{rt}_rss_8_mb": engines.rss_mb(many.proc.pid),
                        f"adapters_{rt}_rss_1_mb": engines.rss_mb(single.proc.pid)}
        if "overhead" in self.parts:
            o = overhead(self.direct.chat_url, self.direct.headers, self.gateway, self.headers, a.overhead_requests)
            out |= {"overhead_direct_p50_ms": o["direct_p50_ms"], "overhead_gateway_p50_ms": o["gateway_p50_ms"],
                    "overhead_p50_ms": o["overhead_p50_ms"]}
            done = subprocess.run([sys.executable, str(ROOT / "bench" / "gateway_overhead.py"), "--json",
                                   "--requests", str(a.overhead_requests * 10)], capture_output=True, text=True)
            if done.returncode == 0:
                out["gateway_alone_overhead_p50_ms"] = json.loads(done.stdout.strip().splitlines()[-1])["overhead_p50_ms"]
        return out


def ratio_rows(rounds: list[dict], bench: Bench) -> list[tuple[str, str, str, float | None, list[float]]]:
    """(figure, goal, what was divided, median of per-round ratios, per round) for each acceptance row."""
    def ratio(num: str, den: str) -> tuple[float | None, list[float]]:
        per = [r[num] / r[den] for r in rounds if r.get(num) and r.get(den)]
        return (statistics.median(per) if per else None), [round(x, 2) for x in per]

    rows = [("fine-tune on llamacpp (1 stream, gateway) / transformers generate", ">= 3x",
             "gateway_1_alternating_tok_s / transformers_generate_tok_s", "finetune"),
            ("llamacpp 1 stream via gateway / llama-batched-bench B=1", ">= 0.9x",
             "gateway_1_tok_s / batched_bench_b1_tok_s", "b1"),
            ("  same, decode only (after the first token)", "", "gateway_1_decode_tok_s / batched_bench_b1_tok_s", "b1"),
            ("llamacpp 8 clients aggregate / llama-batched-bench B=8", ">= 0.8x",
             "gateway_8_agg_tok_s / batched_bench_b8_tok_s", "b8"),
            ("1 stream, decoding alone / B=1 S_TG", ">= 0.9x", "gateway_b1_decode_tok_s / batched_bench_b1_tok_s",
             "b1"),
            ("8 streams started together, decoding alone / B=8 S_TG", ">= 0.8x",
             "gateway_b8_decode_tok_s / batched_bench_b8_tok_s", "b8"),
            ("1 stream, prompt and decoding / B=1 the same", "",
             "gateway_b1_whole_tok_s / batched_bench_b1_whole_tok_s", "b1"),
            ("8 streams started together, prompts and decoding / B=8 the same", "",
             "gateway_b8_whole_tok_s / batched_bench_b8_whole_tok_s", "b8"),
            ("llama-server, 8 streams started together, decoding alone / B=8 S_TG", "",
             "llama_server_b8_decode_tok_s / batched_bench_b8_tok_s", "llama-server"),
            ("llama-server, 1 stream, decoding alone / B=1 S_TG", "",
             "llama_server_b1_decode_tok_s / batched_bench_b1_tok_s", "llama-server"),
            ("TTFT at 8 clients / 1 client", "<= 2x", "gateway_8_ttft_ms / gateway_1_ttft_ms", "ttft"),
            ("forgeflow 8 clients / llama-server --parallel 8", "", "gateway_8_agg_tok_s / llama_server_8_agg_tok_s",
             "llama-server"),
            ("forgeflow 1 stream / llama-server 1 stream", "", "gateway_1_tok_s / llama_server_1_tok_s", "llama-server")]
    for rt in bench.args.prefix_runtimes.split(","):
        rows.append((f"turn-5 TTFT prefix cache on / off ({rt})", "<= 0.5x",
                     f"prefix_{rt}_on_turn5_ttft_ms / prefix_{rt}_off_turn5_ttft_ms", "prefix"))
    for rt in bench.args.adapter_runtimes.split(","):
        rows += [(f"RSS 8 adapters / 1 fine-tune ({rt})", "<= 1.3x", f"adapters_{rt}_rss_8_mb / adapters_{rt}_rss_1_mb",
                  "adapters"),
                 (f"tok/s spread over 8 adapters / all on one ({rt})", ">= 0.8x",
                  f"adapters_{rt}_spread_tok_s / adapters_{rt}_one_tok_s", "adapters")]
    out = []
    for name, goal, what, part in rows:
        if part in bench.parts:
            num, den = [s.strip() for s in what.split("/")]
            out.append((name, goal, what, *ratio(num, den)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="all", help=f"comma-separated, from {', '.join(PARTS)}; default all")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--requests", type=int, default=4, help="requests per client in each measurement")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--turn-tokens", type=int, default=48, help="max_tokens of each chat turn (prefix part)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads, every engine alike")
    parser.add_argument("--overhead-requests", type=int, default=150)
    parser.add_argument("--prefix-runtimes", default="llamacpp", help="comma-separated: llamacpp,transformers")
    parser.add_argument("--adapter-runtimes", default="llamacpp,transformers", help="comma-separated")
    parser.add_argument("--steps", type=int, default=8, help="steps of the cached fine-tune (finetuned.py)")
    parser.add_argument("--omp-wait-policy", default="",
                        help="OMP_WAIT_POLICY for every engine ('' by default: OpenMP's own, as instances run; "
                             "passive on a machine busy with other work)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.omp_wait_policy:  # every engine of the run inherits it: forgeflow's instances, llama.cpp's tools
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    parts = list(PARTS) if args.parts == "all" else [p for p in args.parts.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    rounds, bench = [], Bench(args, parts)
    try:
        bench.setup()
        for r in range(args.rounds):
            rounds.append(bench.round(r))
            say(f"round {r + 1}: " + json.dumps({k: round(v, 2) if isinstance(v, float) else v
                                                   for k, v in rounds[-1].items()}))
    finally:
        bench.stop()
    figures = {k: statistics.median(r[k] for r in rounds if k in r) for k in rounds[0]} if rounds else {}
    report = {"gguf": str(bench.gguf), "gguf_level": bench.level, "threads": args.threads,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
              "prompt_tokens": bench.prompt_tokens, "max_tokens": args.max_tokens, "rounds": args.rounds,
              "load_average": [round(x, 2) for x in os.getloadavg()], "skipped": bench.skipped,
              "figures": figures, "per_round": rounds,
              "ratios": [dict(zip(("figure", "goal", "what", "median", "per_round"), row))
                         for row in ratio_rows(rounds, bench)]}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"GGUF {bench.level} ({bench.gguf.name}), {args.threads} threads, prompts ~{bench.prompt_tokens} tokens, "
          f"max_tokens {args.max_tokens}, {args.rounds} rounds, load average {report['load_average']}")
    for name, value in figures.items():
        print(f"  {name:40} {value:10.2f}")
    for row in report["ratios"]:
        median = "n/a" if row["median"] is None else f"{row['median']:.2f}x"
        print(f"{row['figure']:62} {median:>7}  goal {row['goal'] or '-':8} rounds {row['per_round']}")
    for part, why in bench.skipped.items():
        print(f"skipped {part}: {why}")


if __name__ == "__main__":
    main()
