"""The shipped example flows, run through the CLI against fake servers on loopback."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from forgeflow.cli.main import app
from forgeflow.flows.examples import HERE as EXAMPLES
from forgeflow.store.connections import ConnectionStore, connection_provider
from forgeflow.store.workspace import Workspace

runner = CliRunner()
SAMPLE = Path(__file__).resolve().parents[2] / "src" / "forgeflow" / "data" / "sample" / "quillfeather.jsonl"


class FakeOpenAI:
    """An OpenAI-compatible chat server: `model` "fine-tuned" knows the sample facts, others do not."""

    def __init__(self, key: str, facts: dict[str, str]) -> None:
        self.key, self.facts, self.requests = key, facts, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if self.headers.get("Authorization") != f"Bearer {fake.key}":
                    return self._send(401, "application/json", b'{"message": "bad key"}')
                question = body["messages"][-1]["content"].strip()
                answer = fake.facts.get(question, "Sorry, I don't know.") if body.get("model") == "fine-tuned" \
                    else f"turn {len(body['messages'])}: I don't know about {question}"
                if body.get("stream"):
                    events = [{"choices": [{"delta": {"content": w}}]} for w in answer.split(" ")]
                    for e in events[1:]:
                        e["choices"][0]["delta"]["content"] = " " + e["choices"][0]["delta"]["content"]
                    data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                    return self._send(200, "text/event-stream", data.encode())
                out = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
                self._send(200, "application/json", json.dumps(out).encode())

            def _send(self, status: int, ctype: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/endpoints/ep/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sample_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()[:n]]


@pytest.fixture
def endpoint(monkeypatch):
    """A fake endpoint plus the `forgeflow-endpoint` connection (key read from the environment)."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("FORGEFLOW_URL", "http://127.0.0.1:9")  # no server: flows read the local store
    monkeypatch.setenv("FORGEFLOW_ENDPOINT_KEY", "ep-key-1")
    facts = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in sample_rows(200)}
    server = FakeOpenAI("ep-key-1", facts)
    ConnectionStore(Workspace.open()).upsert("forgeflow-endpoint", "open_ai", {"base_url": server.base_url},
                                             {"api_key": "${env:FORGEFLOW_ENDPOINT_KEY}"})
    yield server
    server.close()


@pytest.fixture
def examples(tmp_path):
    dest = tmp_path / "examples"
    shutil.copytree(EXAMPLES, dest, ignore=shutil.ignore_patterns(".forgeflow", "__pycache__", "*.py[co]"))
    return dest


def test_examples_are_linked_from_the_repository():
    repo_examples = Path(__file__).resolve().parents[2] / "examples"
    for name in ("walkthrough-chat-flow", "chat-with-endpoint", "evaluate-fine-tuned"):
        assert (repo_examples / name / "flow.dag.yaml").is_file(), name


def test_chat_example_keeps_history_across_turns(endpoint, examples):
    flow = examples / "chat-with-endpoint"
    res = runner.invoke(app, ["flow", "chat", "--flow", str(flow), "--json"], input="What is Saltmere?\nAnd then?\n")
    assert res.exit_code == 0, res.output
    history = json.loads(res.stdout)["chat_history"]
    assert [t["inputs"]["question"] for t in history] == ["What is Saltmere?", "And then?"]
    first = history[0]["outputs"]["answer"]
    assert first == "turn 2: I don't know about What is Saltmere?"
    second = endpoint.requests[1]["body"]
    assert endpoint.requests[0]["auth"] == "Bearer ep-key-1"
    assert endpoint.requests[0]["body"].get("stream") is True  # streamed, yet the history holds text
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][2]["content"].strip() == first
    assert second["model"] == "default" and second["max_tokens"] == 128


def test_chat_example_served_with_events(endpoint, examples):
    from forgeflow.flows.serve import create_flow_app

    flow = examples / "chat-with-endpoint"
    with TestClient(create_flow_app(flow, connection_provider=connection_provider())) as c:
        plain = c.post("/score", json={"question": "Hi"})
        assert plain.status_code == 200 and plain.json() == {"answer": "turn 2: I don't know about Hi"}
        with c.stream("POST", "/score", json={"question": "Hi"}, headers={"Accept": "text/event-stream"}) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert "".join(e.get("answer", "") for e in events) == "turn 2: I don't know about Hi"
    assert endpoint.requests[-1]["body"].get("stream") is True


def test_flow_test_prints_outputs_and_node_timings(endpoint, examples):
    res = runner.invoke(app, ["flow", "test", "--flow", str(examples / "chat-with-endpoint"), "--inputs",
                              "question=Who founded Quillfeather Robotics?", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["outputs"]["answer"].startswith("turn 2") and out["nodes"]["chat"]["duration_s"] >= 0


def test_evaluation_example_scores_fine_tuned_against_base(endpoint, examples, tmp_path):
    rows = sample_rows(8)
    data = tmp_path / "test_data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = runner.invoke(app, ["flow", "run", "--flow", str(examples / "evaluate-fine-tuned"), "--data", str(data),
                              "--name", "eval-1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["status"] == "Completed" and out["completed_lines"] == 8, out
    metrics = json.loads(runner.invoke(app, ["flow", "run", "show-metrics", "eval-1", "--json"]).stdout)
    assert metrics == {"fine_tuned_accuracy": 1.0, "base_accuracy": 0.0, "lines": 8}
    lines = json.loads(runner.invoke(app, ["flow", "run", "show-details", "eval-1", "--json"]).stdout)
    assert lines[0]["outputs"]["fine_tuned_correct"] is True and lines[0]["outputs"]["base_correct"] is False
    assert {r["body"]["model"] for r in endpoint.requests} == {"fine-tuned", "base"}
