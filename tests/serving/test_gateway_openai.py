"""Auth (keys, key regeneration, expiring tokens) on every model-serving route, stream
pass-through, and the official openai client against an endpoint (fake model servers)."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from gateway_harness import CHAT, post

from forgeflow.errors import InvalidInput

ROUTES = (("score", None), ("v1/chat/completions", CHAT))


def _models(gw, endpoint, cred):
    return httpx.get(f"{gw.url}/endpoints/{endpoint}/v1/models", headers={"Authorization": f"Bearer {cred}"})


def test_every_route_checks_the_key_and_regenerated_keys_fail_at_once(gateway):
    gateway.endpoint("auth-ep")
    gateway.deploy("auth-ep", "blue")
    gateway.svc.update_endpoint("auth-ep", traffic={"blue": 100})
    old = gateway.svc.credentials("auth-ep")
    for path, body in ROUTES:
        assert post(gateway, "auth-ep", "nope", body, path=path).status_code == 401
        assert httpx.post(f"{gateway.url}/endpoints/auth-ep/{path}", json=body or {}).status_code == 401
        assert post(gateway, "auth-ep", old["secondary_key"], body, path=path).status_code == 200
        r = httpx.post(f"{gateway.url}/endpoints/auth-ep/{path}", json=body or json.loads("{}"),
                       headers={"api-key": old["primary_key"]})
        assert r.status_code in (200, 400), r.text  # api-key header works too (400: empty score body)
    assert _models(gateway, "auth-ep", "nope").status_code == 401
    assert _models(gateway, "auth-ep", old["primary_key"]).json()["data"][0]["id"] == "blue"

    r = httpx.post(f"{gateway.url}/api/endpoints/auth-ep/regenerate-keys", json={"key_type": "primary"},
                   headers=gateway.admin)
    new = r.json()
    assert r.status_code == 200 and new["primary_key"] != old["primary_key"]
    assert new["secondary_key"] == old["secondary_key"]
    assert post(gateway, "auth-ep", old["primary_key"]).status_code == 401
    assert post(gateway, "auth-ep", new["primary_key"]).status_code == 200
    gateway.svc.regenerate_keys("auth-ep", "secondary")
    assert post(gateway, "auth-ep", old["secondary_key"]).status_code == 401
    with pytest.raises(InvalidInput):
        gateway.svc.regenerate_keys("auth-ep", "tertiary")


def test_token_auth_expires_and_is_checked_everywhere(gateway, monkeypatch):
    token = gateway.endpoint("tok-ep", auth_mode="token")
    gateway.deploy("tok-ep", "blue")
    gateway.svc.update_endpoint("tok-ep", traffic={"blue": 100})
    creds = httpx.get(f"{gateway.url}/api/endpoints/tok-ep/credentials", headers=gateway.admin).json()
    assert creds["token_type"] == "Bearer" and creds["expiry_time_utc"] and "primary_key" not in creds
    for path, body in ROUTES:
        assert post(gateway, "tok-ep", creds["access_token"], body, path=path).status_code == 200
    assert _models(gateway, "tok-ep", token).status_code == 200
    # the signing secret is never a credential itself, and a tampered token fails
    assert post(gateway, "tok-ep", gateway.svc.config("tok-ep").primary).status_code == 401
    head, payload, sig = token.split(".")
    assert post(gateway, "tok-ep", f"{head}.{payload}.{sig[:-2]}AA").status_code == 401
    # a token for another endpoint does not open this one
    other = gateway.endpoint("tok-two", auth_mode="token")
    assert post(gateway, "tok-ep", other).status_code == 401

    monkeypatch.setenv("FORGEFLOW_ENDPOINT_TOKEN_TTL_S", "1")
    short = gateway.svc.credentials("tok-ep")["access_token"]
    assert post(gateway, "tok-ep", short).status_code == 200
    time.sleep(1.3)
    r = post(gateway, "tok-ep", short)
    assert r.status_code == 401
    for path, body in ROUTES:
        assert post(gateway, "tok-ep", short, body, path=path).status_code == 401
    assert _models(gateway, "tok-ep", short).status_code == 401
    # regenerating the primary key revokes every token issued
    gateway.svc.regenerate_keys("tok-ep", "primary")
    assert post(gateway, "tok-ep", token).status_code == 401


def test_streams_pass_through_chunk_by_chunk(gateway):
    key = gateway.endpoint("sse-ep")
    gateway.deploy("sse-ep", "blue", {"output": "tok", "chunks": 4, "chunk_delay": 0.4})
    gateway.svc.update_endpoint("sse-ep", traffic={"blue": 100})
    arrivals, text = [], b""
    start = time.monotonic()
    with httpx.stream("POST", f"{gateway.url}/endpoints/sse-ep/v1/chat/completions", json=CHAT | {"stream": True},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["azureml-model-deployment"] == "blue"
        for chunk in r.iter_raw():
            arrivals.append(time.monotonic() - start)
            text += chunk
    events = [line[6:] for line in text.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "tok0 tok1 tok2 tok3 "
    # the fake server spends 1.6 s streaming; a buffering gateway would deliver it all at the end
    assert len(arrivals) >= 3 and arrivals[-1] - arrivals[0] > 0.8, arrivals
    metrics = httpx.get(f"{gateway.url}/metrics", headers=gateway.admin).text
    assert 'forgeflow_time_to_first_token_seconds_count{endpoint="sse-ep",deployment="blue"} 1' in metrics
    assert 'forgeflow_generated_tokens_total{endpoint="sse-ep",deployment="blue"} 4' in metrics
    assert 'forgeflow_requests_total{endpoint="sse-ep",deployment="blue",code="200"} 1' in metrics
    assert gateway.svc.admission.pending(("sse-ep", "blue")) == 0


def test_the_openai_client_works_with_the_key_and_base_url(gateway):
    key = gateway.endpoint("oai-ep")
    gateway.deploy("oai-ep", "blue", {"output": "hello", "chunks": 3})
    gateway.svc.update_endpoint("oai-ep", traffic={"blue": 100})
    shown = httpx.get(f"{gateway.url}/api/endpoints/oai-ep", headers=gateway.admin).json()
    client = openai.OpenAI(api_key=key, base_url=shown["openai_base_url"], max_retries=0)
    out = client.chat.completions.create(model="blue", messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=5, temperature=0.5, top_p=0.9, seed=7, stop=["\n"])
    assert out.choices[0].message.content == "hello" and out.usage.completion_tokens == 2
    echoed = out.model_extra["echo"]  # what the model server received, passed through untouched
    assert echoed == {"max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 7, "stop": ["\n"]}
    parts = [c.choices[0].delta.content for c in client.chat.completions.create(
        model="blue", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices and c.choices[0].delta.content]
    assert "".join(parts) == "hello0 hello1 hello2 "
    assert [m.id for m in client.models.list()] == ["blue", "fake:1"]  # the deployment, its registered model
    bad = openai.OpenAI(api_key="wrong", base_url=shown["openai_base_url"], max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="blue", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="blue", messages=[])


def test_switching_auth_mode_retires_every_old_credential(gateway):
    key = gateway.endpoint("switch-ep")
    gateway.deploy("switch-ep", "blue")
    gateway.svc.update_endpoint("switch-ep", traffic={"blue": 100})
    old = gateway.svc.credentials("switch-ep")
    assert post(gateway, "switch-ep", key).status_code == 200

    r = httpx.patch(f"{gateway.url}/api/endpoints/switch-ep", json={"auth_mode": "token"}, headers=gateway.admin)
    assert r.status_code == 200 and r.json()["auth_mode"] == "token"
    for stale in (old["primary_key"], old["secondary_key"]):
        assert post(gateway, "switch-ep", stale).status_code == 401
    token = httpx.get(f"{gateway.url}/api/endpoints/switch-ep/credentials", headers=gateway.admin).json()
    assert post(gateway, "switch-ep", token["access_token"]).status_code == 200

    gateway.svc.update_endpoint("switch-ep", auth_mode="key")
    assert post(gateway, "switch-ep", token["access_token"]).status_code == 401
    fresh = gateway.svc.credentials("switch-ep")
    assert fresh["primary_key"] not in (old["primary_key"], old["secondary_key"])
    assert post(gateway, "switch-ep", fresh["secondary_key"]).status_code == 200
    r = httpx.patch(f"{gateway.url}/api/endpoints/switch-ep", json={"auth_mode": "aad"}, headers=gateway.admin)
    assert r.status_code == 400 and r.json()["field"] == "auth_mode"


def test_a_client_leaving_a_stream_early_frees_its_place(gateway):
    key = gateway.endpoint("leave-ep")
    gateway.deploy("leave-ep", "blue", {"output": "tok", "chunks": 20, "chunk_delay": 0.2})
    gateway.svc.update_endpoint("leave-ep", traffic={"blue": 100})
    for _ in range(3):
        with httpx.stream("POST", f"{gateway.url}/endpoints/leave-ep/v1/chat/completions", json=CHAT | {"stream": True},
                          headers={"Authorization": f"Bearer {key}"}, timeout=30) as r:
            assert r.status_code == 200  # headers only: the client leaves before reading a chunk
    deadline = time.monotonic() + 10
    while gateway.svc.admission.pending(("leave-ep", "blue")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.svc.admission.pending(("leave-ep", "blue")) == 0
    instances = gateway.svc.supervisor.ready_instances("leave-ep", "blue")
    assert [gateway.svc.admission.in_flight(i) for i in instances] == [0]
    metrics = httpx.get(f"{gateway.url}/metrics", headers=gateway.admin).text
    assert 'forgeflow_requests_total{endpoint="leave-ep",deployment="blue",code="499"} 3' in metrics


def test_a_stream_never_started_still_gives_back_its_place():
    """The client can go before the response even starts iterating: the release must still run, once."""
    import asyncio

    from forgeflow.serving.relay import RelayResponse

    started, released = [], []

    async def body():
        started.append(True)
        yield b"data: x\n\n"

    async def release():
        released.append(True)

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        raise OSError("client gone")

    response = RelayResponse(body(), release, media_type="text/event-stream")
    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    try:
        asyncio.run(response(scope, receive, send))
    except Exception:
        pass
    assert released == [True] and started == []


def _metric(gateway, name: str, endpoint: str, deployment: str, code: str | None = None) -> str | None:
    labels = f'endpoint="{endpoint}",deployment="{deployment}"' + (f',code="{code}"' if code else "")
    for line in httpx.get(f"{gateway.url}/metrics", headers=gateway.admin).text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return line.split()[-1]
    return None


def test_streamed_token_counts_come_from_the_instance(gateway):
    """The instance's usage comment gives the token counts when the client asked for no usage chunk, and never
    reaches the client (the Azure client raises on a line that is not `data:`); a stream with no counts at all
    takes the prompt's from the instance's header."""
    key = gateway.endpoint("count-ep")
    gateway.deploy("count-ep", "blue", {"output": "tok", "chunks": 4})
    gateway.deploy("count-ep", "bare", {"output": "tok", "chunks": 3, "no_usage": True})
    gateway.svc.update_endpoint("count-ep", traffic={"blue": 100})
    streamed = post(gateway, "count-ep", key, CHAT | {"stream": True}, path="v1/chat/completions")
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    assert "forgeflow-usage" not in streamed.text
    assert all(b.startswith("data: ") for b in streamed.text.split("\n\n") if b)
    assert _metric(gateway, "forgeflow_generated_tokens_total", "count-ep", "blue") == "4"
    assert _metric(gateway, "forgeflow_prompt_tokens_total", "count-ep", "blue") == "3"
    bare = post(gateway, "count-ep", key, CHAT | {"stream": True}, path="v1/chat/completions",
                headers={"azureml-model-deployment": "bare"})
    assert bare.status_code == 200 and bare.text.endswith("data: [DONE]\n\n")
    assert _metric(gateway, "forgeflow_generated_tokens_total", "count-ep", "bare") == "3"  # one per content chunk
    assert _metric(gateway, "forgeflow_prompt_tokens_total", "count-ep", "bare") == "3"


def test_a_stream_that_fails_mid_way_is_no_success(gateway):
    """The instance's error event passes through with no [DONE] after it, the openai client raises it, and the
    request counts as a 424, not a 200."""
    key = gateway.endpoint("fail-ep")
    gateway.deploy("fail-ep", "blue", {"output": "tok", "chunks": 5, "fail_after": 2})
    gateway.svc.update_endpoint("fail-ep", traffic={"blue": 100})
    streamed = post(gateway, "fail-ep", key, CHAT | {"stream": True}, path="v1/chat/completions")
    assert streamed.status_code == 200 and "[DONE]" not in streamed.text
    last = json.loads(streamed.text.strip().split("\n\n")[-1].removeprefix("data: "))
    assert last["error"]["message"] == "generation failed: boom"
    shown = httpx.get(f"{gateway.url}/api/endpoints/fail-ep", headers=gateway.admin).json()
    client = openai.OpenAI(api_key=key, base_url=shown["openai_base_url"], max_retries=0)
    with pytest.raises(openai.APIError, match="boom"):
        for _ in client.chat.completions.create(model="blue", messages=[{"role": "user", "content": "hi"}],
                                                stream=True):
            pass
    assert _metric(gateway, "forgeflow_requests_total", "fail-ep", "blue", "424") == "2"
    assert _metric(gateway, "forgeflow_requests_total", "fail-ep", "blue", "200") is None


def test_either_kind_of_error_event_marks_a_relayed_stream_failed():
    """An instance's OpenAI-shaped error event and a flow server's `event: error` both make the request a 424."""
    import asyncio
    from types import SimpleNamespace

    from forgeflow.errors import RequestTimeout
    from forgeflow.serving.metrics import Metrics
    from forgeflow.serving.relay import Release, relay
    from forgeflow.serving.schemas import Dialect

    class Upstream:
        headers = {"x-forgeflow-prompt-tokens": "7"}

        def __init__(self, tail: bytes) -> None:
            self.tail = tail
            self.content = self  # aiohttp's response body, read with iter_any()
            self.ended = None

        async def iter_any(self):
            yield b'data: {"answer": "a"}\n\n' + self.tail

        def release(self):
            self.ended = "released"

        def close(self):
            self.ended = "closed"

    class Ticket:
        def release(self):
            pass

    for tail in (b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n',
                 b'event: error\ndata: {"error": "UpstreamError", "message": "boom"}\n\n', b"data: [DONE]\n\n"):
        recorded = []
        call = SimpleNamespace(svc=SimpleNamespace(metrics=Metrics()), endpoint="e", deployment="d",
                               started=time.perf_counter(), dialect=Dialect.SCORE,
                               record=lambda *args: recorded.append(args))
        done = Release(call, Upstream(tail), Ticket())

        async def collect():
            return b"".join([chunk async for chunk in relay(call, done.resp, done, RequestTimeout("slow"))])

        assert asyncio.run(collect()).endswith(tail)
        complete = tail.endswith(b"[DONE]\n\n")
        assert recorded == [(200 if complete else 424, 0, 7)], tail
        # a whole stream gives its connection back to the pool; a failed one closes it
        assert done.resp.ended == ("released" if complete else "closed")
