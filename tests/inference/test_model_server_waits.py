"""What a model server does while answers wait: a non-streamed answer whose client hangs up before it is ready is
not finished, its sequences leave the runtime (the gateway closes its connection to the instance when its own
client leaves or its request times out); /stats waiting on a busy runtime holds up no other request; a runtime
that stops serving ends the server."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import uvicorn
from waiting import wait_until

from forgeflow.inference.model_server import create_app
from forgeflow.inference.runtimes.base import TokenStream
from forgeflow.processes import free_port

USER = {"role": "user", "content": "What is the capital of France?"}


class Endless:
    """A runtime whose answers never end on their own: a token every 10 ms until their stream is cancelled."""

    name = "endless"
    failure = None

    def __init__(self) -> None:
        self.streams: list[threading.Event] = []  # each stream's cancel, set once cancelled
        self.ended: list[threading.Event] = []  # set once a stream's steps have stopped

    def stream(self, request, adapter=None):
        cancelled, ended = threading.Event(), threading.Event()
        self.streams.append(cancelled)
        self.ended.append(ended)

        def steps():
            try:
                while not cancelled.is_set():
                    time.sleep(0.01)
                    yield 0, None
            finally:
                ended.set()

        return TokenStream(steps(), lambda ids: "a" * len(ids), 5, request.stop, cancelled.set)

    def generate(self, request, adapter=None):
        return self.stream(request, adapter).run()

    def health(self):
        return {"runtime": self.name}

    def close(self):
        for cancelled in self.streams:
            cancelled.set()


@contextmanager
def serving(runtime):
    """The model server app over `runtime`, on a loopback port (uvicorn in a thread) until the block ends."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(lambda: runtime, name=runtime.name), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "the model server started")
    try:
        wait_until(lambda: _get(port, "/health").startswith("HTTP/1.1 200"), 30, "the runtime loaded")
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def served():
    runtime = Endless()
    with serving(runtime) as port:
        yield runtime, port


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [USER], "max_tokens": 4096, "n": 2}),
    ("/v1/completions", {"prompt": "The capital of France is", "max_tokens": 4096}),
    ("/score", {"input_data": {"input_string": [USER], "parameters": {"max_new_tokens": 4096}}}),
])
def test_a_client_that_hangs_up_before_its_answer_cancels_it(served, path, body):
    runtime, port = served
    choices = body.get("n", 1)
    data = json.dumps(body).encode()
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    wait_until(lambda: len(runtime.streams) == choices, 30, "the request reached the runtime")
    time.sleep(0.2)  # it decodes a while; nothing has answered the client
    assert not any(c.is_set() for c in runtime.streams)
    client.close()
    wait_until(lambda: all(c.is_set() for c in runtime.streams), 30, "every choice cancelled")
    wait_until(lambda: all(e.is_set() for e in runtime.ended), 30, "every choice's steps stopped")
    # the instance goes on answering, and a client that stays gets its answer
    assert _get(port, "/stats").startswith("HTTP/1.1 200")


def test_a_client_that_stays_gets_the_whole_answer(served):
    runtime, port = served
    data = json.dumps({"messages": [USER], "max_tokens": 4096}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        wait_until(lambda: runtime.streams, 30, "the request reached the runtime")
        time.sleep(0.2)
        runtime.streams[0].set()  # the runtime ends the answer (as a server closing would): the client reads it
        answer = _read_all(client)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["choices"][0]["message"]["content"].startswith("aaa")


def test_stats_waiting_on_the_runtime_holds_up_no_other_request():
    """/stats reads the runtime's health on a worker thread: one that waits (for an adapter being loaded) must not
    stop the event loop, so probes and answers go on meanwhile."""
    release, asked = threading.Event(), threading.Event()

    class Busy(Endless):
        name = "busy"

        def health(self):
            if asked.is_set():
                release.wait(30)
            return {"runtime": self.name}

    with serving(Busy()) as port:
        asked.set()
        stats: list[str] = []
        waiting = threading.Thread(target=lambda: stats.append(_get(port, "/stats")))
        waiting.start()
        try:
            time.sleep(0.2)
            assert _get(port, "/health").startswith("HTTP/1.1 200") and not stats  # answered meanwhile
        finally:
            release.set()
            waiting.join(30)
        assert stats[0].startswith("HTTP/1.1 200") and '"busy"' in stats[0]


def test_a_runtime_that_stops_serving_fails_its_health_and_requests_and_ends_the_server(monkeypatch):
    """A runtime whose worker stopped (Runtime.failure) answers nothing more: /health says failed, requests get
    a 503 naming why (retry on another instance), and on_failed is told (it makes the model server process exit,
    so its supervisor replaces it)."""
    from fastapi.testclient import TestClient

    from forgeflow.inference import model_server

    class Ending(Endless):  # answers at once (with nothing)
        def stream(self, request, adapter=None):
            stream = super().stream(request, adapter)
            self.streams[-1].set()
            return stream

    monkeypatch.setattr(model_server, "FAILURE_CHECK_S", 0.01)
    runtime, failed = Ending(), []
    with TestClient(create_app(lambda: runtime, name="endless", on_failed=failed.append)) as http:
        wait_until(lambda: http.get("/health").status_code == 200, 30, "the runtime loaded")
        assert http.post("/score", json={"input_data": {"input_string": [USER]}}).status_code == 200
        runtime.failure = "the llama.cpp worker stopped: RuntimeError: context lost"
        wait_until(lambda: failed, 30, "on_failed was told")
        assert failed == ["the model stopped serving: the llama.cpp worker stopped: RuntimeError: context lost"]
        health = http.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert "context lost" in health.json()["message"]
        score = http.post("/score", json={"input_data": {"input_string": [USER]}})
        assert score.status_code == 503 and "context lost" in score.json()["message"]
        openai = http.post("/v1/chat/completions", json={"messages": [USER]})
        assert openai.status_code == 503 and "context lost" in openai.json()["error"]["message"]


def _get(port: int, path: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        return _read_all(client).decode(errors="replace")


def _read_all(client: socket.socket) -> bytes:
    """The whole response on a connection the server closes, or whose Content-Length it gives."""
    data = b""
    while chunk := client.recv(65536):
        data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and len(rest) >= int(value):
                return data
    return data
