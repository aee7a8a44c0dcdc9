"""Fixtures and loopback servers of the flow tests, shared by tests/flows and the CLI tests in tests/cli.

Imported by name (tests/ is on the pytest pythonpath): a conftest or test module that imports a fixture
from here gets it, autouse ones included.
"""

from __future__ import annotations

import json
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from forgeflow.flows import compat

# A flow of the project's own laid out as Prompt flow's chat-math-variant is: an llm node with three variants
# (use_variants, node_variants, default_variant_id; connection open_ai_connection, deployment_name and model
# gpt-4, api chat) and a python node after it.
VARIANT_FLOW = Path(__file__).resolve().parent / "flows" / "prompt_variants"
VARIANT_EVAL_FLOW = VARIANT_FLOW.with_name("prompt_variants_eval")  # scores a VARIANT_FLOW run; logs metrics


@pytest.fixture(autouse=True)
def fresh_shim():
    """Each test starts and ends without the stand-in promptflow modules."""
    compat.uninstall_promptflow_shim()
    yield
    compat.uninstall_promptflow_shim()


@pytest.fixture
def make_flow(tmp_path):
    """Write a flow folder: make_flow(dag_yaml, {"file.py": source}) -> Path."""

    def make(dag: str, files: dict[str, str] | None = None, name: str = "flow") -> Path:
        flow_dir = tmp_path / name
        flow_dir.mkdir(parents=True, exist_ok=True)
        (flow_dir / "flow.dag.yaml").write_text(textwrap.dedent(dag))
        for rel, src in (files or {}).items():
            (flow_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (flow_dir / rel).write_text(textwrap.dedent(src))
        return flow_dir

    return make


class JsonHandler(BaseHTTPRequestHandler):
    def _reply(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


class Loopback:
    """A threaded HTTP server on a free loopback port."""

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> str:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def no_proxy(monkeypatch) -> None:
    """Loopback requests go straight to the server, whatever proxy the environment names."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


class ScoringServer(Loopback):
    """A loopback Azure-style scoring endpoint that records what it receives."""

    def __init__(self, key: str, answer: str) -> None:
        self.key, self.answer, self.requests = key, answer, []
        server = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append({"headers": dict(self.headers), "path": self.path, "body": json.loads(body)})
                if self.headers.get("Authorization") != f"Bearer {server.key}":
                    self._reply(401, {"message": "missing or wrong key"})
                else:
                    self._reply(200, {"output": server.answer})

        self.url = self._serve(Handler) + "/score"


@pytest.fixture
def scoring_server(monkeypatch):
    no_proxy(monkeypatch)
    server = ScoringServer(key="k-primary-123", answer="Bill Gates and Paul Allen founded Microsoft.")
    yield server
    server.close()


class FakeLLMServer(Loopback):
    """A loopback OpenAI-compatible (/v1/chat/completions, also SSE) and Azure-scoring (/score) server.

    `fail` holds (status, headers) answers given before the real ones, to exercise retries.
    """

    def __init__(self, key: str = "sk-test") -> None:
        self.key, self.requests, self.fail = key, [], []
        server = self

        class Handler(JsonHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                server.requests.append({"headers": dict(self.headers), "path": self.path, "body": body})
                if server.fail:
                    status, headers = server.fail.pop(0)
                    return self._reply(status, {"error": "busy"}, headers)
                auth = self.headers.get("Authorization") or f"Bearer {self.headers.get('api-key')}"
                if auth != f"Bearer {server.key}":
                    return self._reply(401, {"error": "bad key"})
                messages = body.get("messages") or body.get("input_data", {}).get("input_string") or []
                answer = "echo: " + " | ".join(f"{m['role']}={m['content']}" for m in messages)
                if self.path.startswith("/score"):
                    return self._reply(200, {"output": answer})
                if body.get("stream"):
                    return self._stream(answer)
                self._reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]})

            def _stream(self, answer: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for word in answer.split(" "):
                    chunk = {"choices": [{"index": 0, "delta": {"content": word + " "}}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

        self.base = self._serve(Handler)


@pytest.fixture
def llm_server(monkeypatch):
    no_proxy(monkeypatch)
    server = FakeLLMServer()
    yield server
    server.close()


def variant_connection(server, key: str | None = None):
    """The `open_ai_connection` VARIANT_FLOW names, pointed at an OpenAI-compatible server (its `base`)."""

    def provide(name: str) -> dict | None:
        if name != "open_ai_connection":
            return None
        return {"name": name, "type": "open_ai", "configs": {"base_url": server.base + "/v1"},
                "secrets": {"api_key": key or server.key}}

    return provide
