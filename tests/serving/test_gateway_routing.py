"""The gateway against fake model servers: traffic split, header routing, mirror, and every
status code it answers (400, 404, 408, 413, 424, 429, 503), with the deployment header."""

from __future__ import annotations

import asyncio
import collections
import time

import httpx
import pytest
from gateway_harness import CHAT, SCORE, post


def _many(gw, endpoint, key, n, *, concurrency=16, path="score", body=None, headers=None):
    async def run():
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=30) as c:
            async def one():
                async with sem:
                    return await c.post(f"{gw.url}/endpoints/{endpoint}/{path}", json=body or SCORE,
                                        headers={"Authorization": f"Bearer {key}"} | (headers or {}))
            return await asyncio.gather(*[one() for _ in range(n)])
    return asyncio.run(run())


def _count(gw, endpoint, deployment):
    """How many requests the deployment's one instance got, asked with its secret as the gateway does."""
    [inst] = gw.svc.supervisor.instances(endpoint, deployment)
    return httpx.get(f"{inst.url}/count", headers=inst.auth).json()["count"]


def test_traffic_split_follows_the_percentages(gateway):
    key = gateway.endpoint("split-ep")
    gateway.deploy("split-ep", "blue", {"output": "B"})
    gateway.deploy("split-ep", "green", {"output": "G"})
    gateway.svc.update_endpoint("split-ep", traffic={"blue": 70, "green": 30})
    answers = _many(gateway, "split-ep", key, 400)
    assert all(r.status_code == 200 for r in answers)
    served = collections.Counter(r.headers["azureml-model-deployment"] for r in answers)
    assert all(r.json()["output"] == r.headers["azureml-model-deployment"][0].upper() for r in answers)
    # binomial(400, 0.3): sd ~9.2; 5 sd either side
    assert abs(served["green"] - 120) <= 46, served
    assert served["blue"] + served["green"] == 400


def test_header_and_model_route_regardless_of_traffic(gateway):
    key = gateway.endpoint("hdr-ep")
    gateway.deploy("hdr-ep", "blue", {"output": "B"})
    gateway.deploy("hdr-ep", "green", {"output": "G"})
    gateway.svc.update_endpoint("hdr-ep", traffic={"blue": 100})
    for _ in range(5):
        r = post(gateway, "hdr-ep", key, headers={"azureml-model-deployment": "green"})
        assert r.status_code == 200 and r.json() == {"output": "G"}
        assert r.headers["azureml-model-deployment"] == "green"
    r = post(gateway, "hdr-ep", key, CHAT | {"model": "green"}, path="v1/chat/completions")
    assert r.headers["azureml-model-deployment"] == "green"
    r = post(gateway, "hdr-ep", key, headers={"azureml-model-deployment": "purple"})
    assert r.status_code == 404 and "purple" in r.json()["message"]
    gateway.svc.update_endpoint("hdr-ep", traffic={})
    r = post(gateway, "hdr-ep", key)
    assert r.status_code == 404 and "--traffic" in r.json()["message"]


def test_mirror_copies_traffic_and_never_touches_the_caller(gateway):
    key = gateway.endpoint("mirror-ep")
    gateway.deploy("mirror-ep", "blue", {"output": "B"})
    gateway.deploy("mirror-ep", "green", {"fail": True, "delay": 0.2},
                           request_settings={"max_concurrent_requests_per_instance": 100})
    svc = gateway.svc
    for bad, why in (({"green": 60}, "at most 50"), ({"blue": 10}, "live traffic")):
        with pytest.raises(Exception, match=why):
            svc.update_endpoint("mirror-ep", traffic={"blue": 100}, mirror_traffic=bad)
    svc.update_endpoint("mirror-ep", traffic={"blue": 100}, mirror_traffic={"green": 50})
    answers = _many(gateway, "mirror-ep", key, 200)
    # the mirror fails (500) and is slow: the caller sees neither
    assert all(r.status_code == 200 and r.headers["azureml-model-deployment"] == "blue" for r in answers)
    # mirrored copies are sent in the background: wait until the mirror's count stops moving
    deadline = time.monotonic() + 20
    got, last_change, seen = -1, time.monotonic(), -1
    while time.monotonic() < deadline and time.monotonic() - last_change < 1.5:
        got = _count(gateway, "mirror-ep", "green")
        if got != seen:
            seen, last_change = got, time.monotonic()
        time.sleep(0.1)
    assert abs(got - 100) <= 36, got  # binomial(200, .5): sd ~7
    mirrored = svc.metrics.value("forgeflow_mirrored_requests_total",
                                 (("endpoint", "mirror-ep"), ("deployment", "green"), ("code", "500")))
    assert mirrored == got
    # header-routed requests are not mirrored
    post(gateway, "mirror-ep", key, headers={"azureml-model-deployment": "blue"})
    time.sleep(0.3)
    assert _count(gateway, "mirror-ep", "green") == got
    with pytest.raises(Exception, match="mirrored"):
        svc.delete_deployment("mirror-ep", "green")


def test_408_424_429_503_carry_the_deployment(gateway):
    key = gateway.endpoint("codes-ep")
    gateway.deploy("codes-ep", "slow", {"delay": 1.5}, request_settings={"request_timeout_ms": 300})
    gateway.deploy("codes-ep", "broken", {"fail": True})
    gateway.deploy("codes-ep", "busy", {"delay": 1.0}, request_settings={"max_concurrent_requests_per_instance": 1})
    gateway.deploy("codes-ep", "loading", {"load": -1}, wait=False)

    r = post(gateway, "codes-ep", key, headers={"azureml-model-deployment": "slow"})
    assert r.status_code == 408 and "request_timeout_ms=300" in r.json()["message"]
    assert r.headers["azureml-model-deployment"] == "slow"

    r = post(gateway, "codes-ep", key, headers={"azureml-model-deployment": "broken"})
    assert r.status_code == 424 and r.headers["ms-azureml-model-error-reason"] == "model_error"
    assert "boom" in r.json()["message"] and r.headers["azureml-model-deployment"] == "broken"

    answers = _many(gateway, "codes-ep", key, 6, headers={"azureml-model-deployment": "busy"})
    codes = collections.Counter(r.status_code for r in answers)
    assert codes == {200: 2, 429: 4}, codes  # 2 x 1 per instance x 1 instance
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and refused.headers["azureml-model-deployment"] == "busy"
    assert "max_concurrent_requests_per_instance" in refused.json()["message"]

    r = post(gateway, "codes-ep", key, headers={"azureml-model-deployment": "loading"})
    assert r.status_code == 503 and r.headers["azureml-model-deployment"] == "loading"


def test_body_limit_is_per_endpoint_or_server_setting(gateway, monkeypatch):
    key = gateway.endpoint("small-ep", max_body_bytes=2048)
    gateway.deploy("small-ep", "blue")
    gateway.svc.update_endpoint("small-ep", traffic={"blue": 100})
    big = {"input_data": {"input_string": [{"role": "user", "content": "x" * 3000}]}}
    r = post(gateway, "small-ep", key, big)
    assert r.status_code == 413 and "2048" in r.json()["message"]
    assert post(gateway, "small-ep", key).status_code == 200
    gateway.svc.update_endpoint("small-ep", max_body_bytes=8192)
    assert post(gateway, "small-ep", key, big).status_code == 200
    key2 = gateway.endpoint("default-ep")
    monkeypatch.setenv("FORGEFLOW_MAX_BODY_BYTES", "1500")
    r = post(gateway, "default-ep", key2, big)
    assert r.status_code == 413 and "1500" in r.json()["message"]


BAD = [
    (b"{not json", None, "not valid JSON"),
    ({"input_data": {"input_string": []}}, "input_data.input_string", "non-empty"),
    ({"input_data": {"input_string": [{"role": "wizard", "content": "x"}]}}, "input_data.input_string[0].role", "one of"),
    ({"input_data": {"input_string": [{"role": "user", "content": 5}]}}, "input_data.input_string[0].content", "string"),
    ({"input_data": {"input_string": [{"role": "user", "content": "x"}], "parameters": {"max_new_tokens": 10**9}}},
     "input_data.parameters.max_new_tokens", "4096"),
    ({"input_data": {"input_string": [{"role": "user", "content": "x"}], "parameters": {"temperature": "hot"}}},
     "input_data.parameters.temperature", "number"),
]
BAD_CHAT = [
    (b"[1,", None, "not valid JSON"),
    ({"messages": []}, "messages", "non-empty"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "one of"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**7}, "max_tokens", "4096"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream", "true or false"),
    ({"messages": "hello"}, "messages", "list"),
]


def test_malformed_bodies_are_400_naming_the_field(gateway):
    key = gateway.endpoint("bad-ep")
    gateway.deploy("bad-ep", "blue")
    gateway.svc.update_endpoint("bad-ep", traffic={"blue": 100})
    auth = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    import json as _json

    for body, field, words in BAD:
        content = body if isinstance(body, bytes) else _json.dumps(body).encode()
        r = httpx.post(f"{gateway.url}/endpoints/bad-ep/score", content=content, headers=auth)
        assert r.status_code == 400, (body, r.text)
        assert words in r.json()["message"] and r.json().get("field") == field, r.json()
    for body, field, words in BAD_CHAT:
        content = body if isinstance(body, bytes) else _json.dumps(body).encode()
        r = httpx.post(f"{gateway.url}/endpoints/bad-ep/v1/chat/completions", content=content, headers=auth)
        assert r.status_code == 400, (body, r.text)
        err = r.json()["error"]
        assert words in err["message"] and err["param"] == field, err


def test_metrics_need_the_admin_token_and_count_by_status(gateway):
    key = gateway.endpoint("met-ep")
    gateway.deploy("met-ep", "blue")
    gateway.svc.update_endpoint("met-ep", traffic={"blue": 100})
    for _ in range(3):
        assert post(gateway, "met-ep", key).status_code == 200
    assert post(gateway, "met-ep", "wrong").status_code == 401
    assert httpx.get(f"{gateway.url}/metrics").status_code == 401
    r = httpx.get(f"{gateway.url}/metrics", headers=gateway.admin)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'forgeflow_requests_total{endpoint="met-ep",deployment="blue",code="200"} 3' in text
    assert 'forgeflow_requests_total{endpoint="met-ep",deployment="",code="401"} 1' in text
    assert 'forgeflow_request_duration_seconds_count{endpoint="met-ep",deployment="blue"} 3' in text
    assert 'forgeflow_request_duration_seconds_bucket{endpoint="met-ep",deployment="blue",le="+Inf"} 3' in text
    assert 'forgeflow_instance_request_duration_seconds_count{endpoint="met-ep",deployment="blue"} 3' in text
    assert 'forgeflow_generated_tokens_total{endpoint="met-ep",deployment="blue"} 6' in text
    assert 'forgeflow_pending_requests{endpoint="met-ep",deployment="blue"} 0' in text
    assert 'forgeflow_ready_instances{endpoint="met-ep",deployment="blue"} 1' in text
    assert "# TYPE forgeflow_time_to_first_token_seconds histogram" in text


def test_openapi_describes_scoring_and_openai_routes(gateway):
    doc = httpx.get(f"{gateway.url}/openapi.json").json()
    score = doc["paths"]["/endpoints/{endpoint}/score"]["post"]
    assert score["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ScoreRequest")
    assert {"200", "400", "401", "408", "413", "424", "429", "503"} <= set(score["responses"])
    chat = doc["paths"]["/endpoints/{endpoint}/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert "/endpoints/{endpoint}/v1/models" in doc["paths"]
    schemas = doc["components"]["schemas"]
    for name in ("ScoreRequest", "InputData", "ChatMessage", "ChatCompletionRequest", "ChatCompletion", "ModelList"):
        assert name in schemas, name
    assert "messages" in schemas["ChatCompletionRequest"]["properties"]
