"""The serving benchmarks' streaming client: OpenAI-style chat completions over one keep-alive connection per
thread, read with the standard library's http.client, each content chunk's arrival time kept.

llama.cpp's own `llama-batched-bench` has no client at all; every millisecond of CPU a benchmark's client takes on
a 2-core machine is taken from one of the engine's two threads, which the other then waits for at its next
barrier. httpx reads a stream through h11 and three layers of decoders; http.client reads a line in a few calls.
`Client.cpu_s` over `Client.chunks` says what the client itself cost per chunk, so a run can show it.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from urllib.parse import urlsplit


class Client:
    """One thread's client: a keep-alive connection per host, reopened after a failure."""

    def __init__(self) -> None:
        self._conns: dict[str, http.client.HTTPConnection] = {}
        self.cpu_s, self.chunks = 0.0, 0

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        for conn in self._conns.values():
            conn.close()

    def _conn(self, netloc: str) -> http.client.HTTPConnection:
        conn = self._conns.get(netloc)
        if conn is None:  # http.client sets TCP_NODELAY on each socket it opens
            conn = self._conns[netloc] = http.client.HTTPConnection(netloc, timeout=600)
        return conn

    def stream_chat(self, url: str, headers: dict, body: dict) -> dict:
        """One streamed chat completion: latency, time to first token, tokens (usage, else content chunks), text,
        when it was sent (`perf_counter`) and the arrival time of each content chunk (seconds since the send)."""
        parts = urlsplit(url)
        conn = self._conn(parts.netloc)
        cpu0, t0 = time.thread_time(), time.perf_counter()
        times, usage, text = [], None, []
        try:
            try:
                answer = self._send(conn, parts.path, headers, body)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # a keep-alive connection the server closed while idle (llama-server does): once more, on a new one
                self._conns.pop(parts.netloc).close()
                conn = self._conn(parts.netloc)
                answer = self._send(conn, parts.path, headers, body)
            if answer.status != 200:
                raise RuntimeError(f"{answer.status}: {answer.read()[:300]!r}")
            while line := answer.readline():
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:  # the stream broke off: the answer is incomplete
                    raise RuntimeError(f"error event: {json.dumps(chunk['error'])[:300]}")
                delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
                if delta.get("content"):
                    times.append(time.perf_counter() - t0)
                    text.append(delta["content"])
                usage = chunk.get("usage") or usage
        except BaseException:
            if (dead := self._conns.pop(parts.netloc, None)) is not None:
                dead.close()
            raise
        took = time.perf_counter() - t0
        self.cpu_s += time.thread_time() - cpu0
        self.chunks += len(times)
        return {"latency": took, "ttft": times[0] if times else took, "times": times, "sent": t0,
                "tokens": usage["completion_tokens"] if usage else len(times), "text": "".join(text)}

    @staticmethod
    def _send(conn: http.client.HTTPConnection, path: str, headers: dict, body: dict) -> http.client.HTTPResponse:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers=headers | {"Content-Type": "application/json"})
        return conn.getresponse()


def burst(url: str, headers: dict, clients: int, bursts: int, body_of) -> dict:
    """`clients` threads that send one streamed request each at the same moment, `bursts` times over, as
    `llama-batched-bench` starts B sequences together. Per burst:

    - decode: content chunks that arrived while every stream was past its first token and none had ended,
      over that window's length, as `llama-batched-bench`'s S_TG counts decoding alone;
    - whole: completion tokens over the time from the send to the last stream's end, as its prompt and
      decoding time together.

    Medians over the bursts; `body_of(client, burst)` gives each request's body."""
    barrier = threading.Barrier(clients)
    results: list[list[dict]] = [[] for _ in range(bursts)]
    errors: list[str] = []
    cpu = []
    lock = threading.Lock()

    def loop(index: int) -> None:
        with Client() as http:
            for b in range(bursts):
                body = body_of(index, b)
                barrier.wait(timeout=900)  # a thread that died leaves the others an error, not a hang
                try:
                    res = http.stream_chat(url, headers, body)
                except Exception as exc:  # counted and shown; a benchmark run goes on
                    errors.append(str(exc))
                    continue
                with lock:
                    results[b].append(res)
            with lock:
                cpu.append((http.cpu_s, http.chunks))

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decode, whole, tokens = [], [], []
    for streams in results:
        tokens += [s["tokens"] for s in streams]
        if len(streams) != clients:
            continue  # a burst with a failed request is no burst of `clients`
        start, end = min(s["sent"] for s in streams), max(s["sent"] + s["latency"] for s in streams)
        whole.append(sum(s["tokens"] for s in streams) / (end - start))
        if any(len(s["times"]) < 2 for s in streams):
            continue  # a one-chunk stream leaves no window where all decode
        lo = max(s["sent"] + s["times"][0] for s in streams)
        hi = min(s["sent"] + s["times"][-1] for s in streams)
        if hi > lo:
            decode.append(sum(lo < s["sent"] + t <= hi for s in streams for t in s["times"]) / (hi - lo))
    if not whole:
        raise RuntimeError(f"no burst completed: {errors[:2]}")
    return {"clients": clients, "bursts": len(whole), "errors": len(errors), "first_error": errors[:1],
            "decode_tokens_per_s": statistics.median(decode) if decode else None, "decode_windows": len(decode),
            "whole_tokens_per_s": statistics.median(whole), "tokens_per_stream": statistics.mean(tokens),
            "client_cpu_ms_per_chunk": cpu_ms_per_chunk(cpu)}


def cpu_ms_per_chunk(spent: list[tuple[float, int]]) -> float:
    """The clients' CPU per content chunk, ms, from each Client's (cpu_s, chunks)."""
    chunks = sum(n for _, n in spent)
    return 1000 * sum(c for c, _ in spent) / chunks if chunks else 0.0
