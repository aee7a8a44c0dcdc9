"""The shipped example flows, run through the CLI against fake servers on loopback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from flow_fixtures import JsonHandler, Loopback, fresh_shim, no_proxy  # noqa: F401 - fresh_shim is autouse
from typer.testing import CliRunner

from forgeflow.cli.flows import connection_lookup
from forgeflow.cli.main import app
from forgeflow.flows.examples import HERE as EXAMPLES
from forgeflow.store.connections import ConnectionStore
from forgeflow.store.workspace import Workspace

runner = CliRunner()
SAMPLE = Path(__file__).resolve().parents[2] / "src" / "forgeflow" / "data" / "sample" / "quillfeather.jsonl"


class FakeOpenAI(Loopback):
    """An OpenAI-compatible chat server: `model` "fine-tuned" knows the sample facts, others do not."""

    def __init__(self, key: str, facts: dict[str, str]) -> None:
        self.key, self.facts, self.requests = key, facts, []
        fake = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if self.headers.get("Authorization") != f"Bearer {fake.key}":
                    return self._reply(401, {"message": "bad key"})
                question = body["messages"][-1]["content"].strip()
                answer = fake.facts.get(question, "Sorry, I don't know.") if body.get("model") == "fine-tuned" \
                    else f"turn {len(body['messages'])}: I don't know about {question}"
                if body.get("stream"):
                    events = [{"choices": [{"delta": {"content": w}}]} for w in answer.split(" ")]
                    for e in events[1:]:
                        e["choices"][0]["delta"]["content"] = " " + e["choices"][0]["delta"]["content"]
                    data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                    return self._events(data.encode())
                self._reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]})

            def _events(self, data: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.base_url = self._serve(Handler) + "/endpoints/ep/v1"


def sample_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()[:n]]


@pytest.fixture
def endpoint(monkeypatch):
    """A fake endpoint plus the `forgeflow-endpoint` connection (key read from the environment)."""
    no_proxy(monkeypatch)
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
    with TestClient(create_flow_app(flow, connection_provider=connection_lookup())) as c:
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
    bad = runner.invoke(app, ["flow", "test", "--flow", str(examples / "chat-with-endpoint"), "--inputs", "question"])
    assert bad.exit_code == 1 and "--inputs 'question': expected NAME=VALUE" in bad.output


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
