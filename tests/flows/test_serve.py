"""`forgeflow flow serve`: /score, /health, key auth, server-sent events, concurrent requests."""

from __future__ import annotations

import json
import sys
import threading
import time
import types

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from forgeflow.flows import serve as serve_mod
from forgeflow.flows.result import FlowResult
from forgeflow.flows.serve import create_flow_app
from forgeflow.processes import free_port

ECHO_DAG = """
inputs:
  question: {type: string}
  wait: {type: bool, default: false}
outputs:
  answer: {reference: "${echo.output}"}
nodes:
- name: echo
  type: python
  source: {type: code, path: echo.py}
  inputs: {question: "${inputs.question}", wait: "${inputs.wait}"}
"""
ECHO_PY = """
import sys
from promptflow import tool

@tool
def echo(question: str, wait: bool) -> str:
    if wait:
        sys.modules["ff_serve_sync"].barrier.wait(timeout=20)
    return "echo: " + question
"""


@pytest.fixture
def echo_flow(make_flow):
    return make_flow(ECHO_DAG, {"echo.py": ECHO_PY})


def test_score_and_health(echo_flow):
    with TestClient(create_flow_app(echo_flow)) as c:
        assert c.get("/health").json()["status"] == "Healthy"
        r = c.post("/score", json={"question": "hi"})
        assert r.status_code == 200 and r.json() == {"answer": "echo: hi"}
        bad = c.post("/score", json={"nope": 1})
        assert bad.status_code == 400 and "nope" in bad.json()["message"]
        missing = c.post("/score", json={})
        assert missing.status_code == 400 and "question" in missing.json()["message"]
        assert c.post("/score", content=b"[1]").status_code == 400


def test_key_auth(echo_flow):
    with TestClient(create_flow_app(echo_flow, key="s3cret")) as c:
        assert c.get("/health").status_code == 200
        assert c.post("/score", json={"question": "hi"}).status_code == 401
        assert c.post("/score", json={"question": "hi"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.post("/score", json={"question": "hi"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json() == {"answer": "echo: hi"}
        assert c.post("/score", json={"question": "x"}, headers={"api-key": "s3cret"}).status_code == 200


def test_event_stream_when_an_output_streams(echo_flow, monkeypatch):
    def fake_call(flow_dir, inputs, *, connection_provider=None, stream=False):
        answer = iter(["Hel", "lo"]) if stream else "Hello"
        return FlowResult(outputs={"answer": answer, "n": 2}, node_results={}, duration_s=0.0, inputs=inputs)

    monkeypatch.setattr(serve_mod, "run_flow", fake_call)
    with TestClient(create_flow_app(echo_flow)) as c:
        with c.stream("POST", "/score", json={"question": "x"}, headers={"Accept": "text/event-stream"}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
        assert events == [{"n": 2}, {"answer": "Hel"}, {"answer": "lo"}]
        assert c.post("/score", json={"question": "x"}).json() == {"answer": "Hello", "n": 2}


@pytest.mark.integration
def test_requests_are_served_concurrently(echo_flow, monkeypatch):
    """Two requests whose tools wait for each other only finish if they run at the same time."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(sys.modules, "ff_serve_sync", types.SimpleNamespace(barrier=threading.Barrier(2)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_flow_app(echo_flow, workers=4), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        results: list = []

        def ask(q: str) -> None:
            results.append(httpx.post(f"{url}/score", json={"question": q, "wait": True}, timeout=30).json())

        threads = [threading.Thread(target=ask, args=(q,)) for q in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(r["answer"] for r in results) == ["echo: a", "echo: b"]
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.integration
def test_cli_serve_process_with_key(echo_flow, monkeypatch, tmp_path):
    """`forgeflow flow serve` as a real process: health, key auth, scoring."""
    import os
    import subprocess

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "forgeflow.cli.main", "flow", "serve", "--flow", str(echo_flow),
                             "--port", str(port), "--key", "k1"], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, FORGEFLOW_URL="http://127.0.0.1:9"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.1)
        assert httpx.post(f"{url}/score", json={"question": "q"}).status_code == 401
        r = httpx.post(f"{url}/score", json={"question": "q"}, headers={"Authorization": "Bearer k1"})
        assert r.status_code == 200 and r.json() == {"answer": "echo: q"}
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
