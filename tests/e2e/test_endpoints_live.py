"""Endpoints for real: `forgeflow serve`, the CLI, and model servers on the tiny model. Each status
the gateway answers is provoked against a real model-server process where one can provoke it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from forgeflow.serving.specs import SCORING_MAX_BYTES

pytestmark = pytest.mark.integration


def _body(n=4, text="hi"):
    return {"input_data": {"input_string": [{"role": "user", "content": text}], "parameters": {"max_new_tokens": n}}}


def _score(s, key, body=None, headers=None, timeout=60):
    return httpx.post(f"{s.url}/endpoints/live-ep/score", json=body or _body(),
                      headers={"Authorization": f"Bearer {key}"} | (headers or {}), timeout=timeout)


def _settled(s, name):
    from forgeflow.store.workspace import Workspace

    admin = {"Authorization": f"Bearer {Workspace.open().admin_token()}"}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        dep = httpx.get(f"{s.url}/api/endpoints/live-ep/deployments/{name}", headers=admin).json()
        if dep["provisioning_state"] in ("Succeeded", "Failed") and all(i["ready"] for i in dep["instances"]):
            return dep
        time.sleep(0.3)
    raise AssertionError(dep)


def _instance_secret(pid):
    """The secret an instance was started with, as its owner can read it (other users cannot)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        for item in f.read().split(b"\0"):
            if item.startswith(b"FORGEFLOW_INSTANCE_SECRET="):
                return item.split(b"=", 1)[1].decode()
    return None


def _declares_a_huge_body(url, secret):
    """The status answered to a request whose headers announce a body past the instance's cap (the scoring cap:
    it takes whatever its endpoint may take), before any of it is sent."""
    u = httpx.URL(url)
    conn = http.client.HTTPConnection(u.host, u.port, timeout=10)
    try:
        conn.putrequest("POST", u.path)
        conn.putheader("Authorization", f"Bearer {secret}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(SCORING_MAX_BYTES + 1))
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_statuses_updates_keys_and_metrics_on_the_tiny_model(live_server, tiny_model_dir):
    s = live_server
    s.cli("online-endpoint", "create", "--name", "live-ep", "--max-body-bytes", "4096")
    dep = s.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "live-ep",
                     "--model", str(tiny_model_dir), "--all-traffic",
                     "--set", "request_settings.max_concurrent_requests_per_instance=1",
                     "--set", "readiness_probe.period=0.5")
    assert dep["provisioning_state"] == "Succeeded", dep
    assert dep["readiness_probe"]["period"] == 0.5
    key = s.cli_json("online-endpoint", "get-credentials", "--name", "live-ep")["primary_key"]
    r = _score(s, key)
    assert r.status_code == 200 and isinstance(r.json()["output"], str)
    assert r.headers["azureml-model-deployment"] == "blue"

    # issue 10, finding 1: the instance at the address `show` lists answers only with its own secret
    inst = dep["instances"][0]
    secret = _instance_secret(inst["pid"])
    assert secret and secret not in json.dumps(dep)
    direct = f"{inst['url']}/score"
    for headers in ({}, {"Authorization": f"Bearer {key}"}):
        assert httpx.post(direct, json=_body(), headers=headers, timeout=10).status_code == 401
    own = {"Authorization": f"Bearer {secret}"}
    assert httpx.post(direct, json=_body(), headers=own | {"Host": "rebound.example"}, timeout=10).status_code == 400
    assert _declares_a_huge_body(direct, secret) == 413
    assert httpx.post(direct, json=_body(), headers=own, timeout=60).status_code == 200

    # 413: over the endpoint's body limit
    assert _score(s, key, _body(text="x" * 5000)).status_code == 413

    # 429: 2 x 1 x 1 pending at most
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: _score(s, key, _body(48)).status_code, range(8)))
    assert 429 in codes and 200 in codes, codes

    # 408: past request_timeout_ms, changed at once by an update (no restart)
    pid = dep["instances"][0]["pid"]
    out = s.cli_json("online-deployment", "update", "--name", "blue", "--endpoint-name", "live-ep",
                     "--set", "request_settings.request_timeout_ms=1")
    assert out["provisioning_state"] == "Succeeded" and out["instances"][0]["pid"] == pid
    r = _score(s, key, _body(200))
    assert r.status_code == 408 and r.headers["azureml-model-deployment"] == "blue"
    s.cli("online-deployment", "update", "--name", "blue", "--endpoint-name", "live-ep",
          "--set", "request_settings.request_timeout_ms=60000")

    # 424: the model server dies with the request in it (stopped first, so the request is surely inside)
    os.kill(pid, signal.SIGSTOP)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", _score(s, key)))
    t.start()
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    r = result["r"]
    assert r.status_code == 424 and r.headers["ms-azureml-model-error-reason"] == "model_server_unreachable", r.text
    # 503: its only instance is gone until the supervisor has replaced it
    r = _score(s, key)
    assert r.status_code == 503 and r.headers["azureml-model-deployment"] == "blue", r.text
    deadline = time.monotonic() + 120
    while True:  # the supervisor notices the death on its next probe, then starts a replacement
        dep = _settled(s, "blue")
        if dep["instances"][0]["pid"] != pid or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert dep["instances"][0]["pid"] != pid and dep["instances"][0]["restarts"] == 1
    assert _score(s, key).status_code == 200
    # the replacement has a fresh secret: the old one opens nothing
    fresh = dep["instances"][0]
    assert _instance_secret(fresh["pid"]) not in (None, secret)
    r = httpx.post(f"{fresh['url']}/score", json=_body(), headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert r.status_code == 401

    # traffic and mirror from the CLI
    bad = s.cli("online-endpoint", "update", "--name", "live-ep", "--traffic", "blue=90", "--traffic", "green=10",
                check=False)
    assert bad.returncode == 1 and "green" in bad.stderr
    bad = s.cli("online-endpoint", "update", "--name", "live-ep", "--mirror-traffic", "blue=10", check=False)
    assert bad.returncode == 1 and "live traffic" in bad.stderr

    # keys: regenerated from the CLI, the old one fails at once
    new = s.cli_json("online-endpoint", "regenerate-keys", "--name", "live-ep", "--key-type", "primary")
    assert _score(s, key).status_code == 401
    assert _score(s, new["primary_key"]).status_code == 200

    logs = s.cli("online-deployment", "get-logs", "--name", "blue", "--endpoint-name", "live-ep", "--lines", "3").stdout
    assert "blue-0.log" in logs

    from forgeflow.store.workspace import Workspace

    admin = Workspace.open().admin_token()
    metrics = httpx.get(f"{s.url}/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    for code in (200, 401, 408, 413, 424, 429, 503):
        assert f'code="{code}"' in metrics, code
    assert 'forgeflow_generated_tokens_total{endpoint="live-ep",deployment="blue"}' in metrics


def test_openai_client_on_the_tiny_model(live_server, tiny_model_dir):
    s = live_server
    s.cli("online-endpoint", "create", "--name", "live-ep")
    s.cli("online-deployment", "create", "--name", "blue", "--endpoint-name", "live-ep",
          "--model", str(tiny_model_dir), "--all-traffic")
    key = s.cli_json("online-endpoint", "get-credentials", "--name", "live-ep")["primary_key"]
    base_url = s.cli_json("online-endpoint", "show", "--name", "live-ep")["openai_base_url"]
    client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=60)
    out = client.chat.completions.create(model="blue", messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=6, temperature=0, seed=1)
    assert out.usage.completion_tokens <= 6 and out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert isinstance(out.choices[0].message.content, str)
    assert [m.id for m in client.models.list()] == ["blue"]
    try:
        stream = client.chat.completions.create(model="blue", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=6, temperature=0, seed=1, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    except openai.BadRequestError as e:
        if "stream" in str(e):
            pytest.skip(f"the model server does not stream yet: {e}")
        raise
    assert text == out.choices[0].message.content, json.dumps([text, out.choices[0].message.content])
