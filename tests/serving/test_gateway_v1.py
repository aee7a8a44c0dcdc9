"""The OpenAI routes beyond chat (text completions, one model), OpenAI's error shape for every error on /v1
whoever answers it (the guard, the gateway, the instance), and the default request settings taking a burst."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from gateway_harness import CHAT, FAST_LIVENESS, FAST_PROBES, SCORE, post

OPENAI_KEYS = {"message", "type", "param", "code"}


def _openai_error(r: httpx.Response, status: int) -> dict:
    """The error of an answer, checked to be in OpenAI's shape with the status."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == OPENAI_KEYS and error["message"], error
    return error


def _client(gw, endpoint: str, key: str, cls=openai.OpenAI):
    return cls(api_key=key, base_url=f"{gw.url}/endpoints/{endpoint}/v1", max_retries=0)


def test_text_completions_are_forwarded_and_routed_like_chat(gateway):
    key = gateway.endpoint("cmpl-ep")
    gateway.deploy("cmpl-ep", "blue", {"output": "B", "chunks": 3})
    gateway.deploy("cmpl-ep", "green", {"output": "G"})
    gateway.svc.update_endpoint("cmpl-ep", traffic={"blue": 100})
    client = _client(gateway, "cmpl-ep", key)
    out = client.completions.create(model="blue", prompt="Once upon", max_tokens=4)
    assert out.choices[0].text == "B" and out.usage.completion_tokens == 2
    # a model naming a deployment routes to it; one naming none (a Prompt flow file's gpt-4) takes the traffic split
    assert client.completions.create(model="green", prompt="x").choices[0].text == "G"
    raw = client.completions.with_raw_response.create(model="gpt-4", prompt="x")
    assert raw.headers["azureml-model-deployment"] == "blue" and raw.parse().choices[0].text == "B"
    parts = [c.choices[0].text for c in client.completions.create(model="blue", prompt="x", stream=True)
             if c.choices and c.choices[0].text]
    assert "".join(parts) == "B0 B1 B2 "
    metrics = httpx.get(f"{gateway.url}/metrics", headers=gateway.admin).text
    assert 'forgeflow_generated_tokens_total{endpoint="cmpl-ep",deployment="blue"} 7' in metrics  # 2 + 2 + 3
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="blue", prompt="x", stream="yes")  # type: ignore[arg-type]
    assert bad.value.body["param"] == "stream"


def test_one_model_is_a_deployment_and_its_registered_model_and_anything_else_a_404(gateway):
    key = gateway.endpoint("card-ep")
    gateway.deploy("card-ep", "blue")
    gateway.svc.update_endpoint("card-ep", traffic={"blue": 100})
    client = _client(gateway, "card-ep", key)
    card = client.models.retrieve("blue")
    assert card.id == "blue" and card.owned_by == "forgeflow" and card.created > 1_600_000_000
    listed = client.models.list().data
    assert [(m.id, m.created) for m in listed] == [("blue", card.created), ("fake:1", card.created)]
    assert listed[1].model_extra["parent"] == "blue"  # a request naming it goes to blue
    for name in ("gpt-4", "org/model"):
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve(name)
        assert missing.value.body["param"] == "model" and "blue" in missing.value.body["message"]
    r = httpx.get(f"{gateway.url}/endpoints/card-ep/v1/models/blue", headers={"Authorization": "Bearer wrong"})
    _openai_error(r, 401)


def test_every_error_on_v1_is_in_openai_shape_whoever_answers_it(gateway, monkeypatch):
    key = gateway.endpoint("shape-ep", max_body_bytes=2048)
    instance_400 = {"error": "InvalidInput", "message": "tools: this model's chat template takes no tools",
                    "field": "tools"}
    gateway.deploy("shape-ep", "refuses", {"refuse": [400, instance_400]})
    gateway.deploy("shape-ep", "routeless", {"refuse": [404, {"detail": "Not Found"}]})
    gateway.deploy("shape-ep", "broken", {"fail": True})
    gateway.svc.update_endpoint("shape-ep", traffic={"refuses": 100})
    auth = {"Authorization": f"Bearer {key}"}
    chat = f"{gateway.url}/endpoints/shape-ep/v1/chat/completions"

    # the guard, before the gateway: no key at all, a NUL in the path, a body streaming past its cap
    _openai_error(httpx.post(chat, json=CHAT), 401)
    assert _openai_error(httpx.post(chat + "%00", json=CHAT, headers=auth), 400)["param"] == "path"
    monkeypatch.setattr("forgeflow.api.guard.SCORING_MAX_BYTES", 4096)
    _openai_error(httpx.post(chat, content=iter([b"{" + b" " * 8192]), headers=auth), 413)
    # the gateway: over the endpoint's own cap, a body the contract refuses, an unknown deployment header
    _openai_error(httpx.post(chat, json=CHAT | {"stop": ["x" * 4096]}, headers=auth), 413)
    assert _openai_error(httpx.post(chat, json=CHAT | {"messages": []}, headers=auth), 400)["param"] == "messages"
    r = httpx.post(chat, json=CHAT, headers=auth | {"azureml-model-deployment": "purple"})
    assert _openai_error(r, 404)["param"] == "azureml-model-deployment"
    # the instance: its refusal in forgeflow's shape, FastAPI's, and its failure (a 424 from the gateway)
    error = _openai_error(httpx.post(chat, json=CHAT, headers=auth), 400)
    assert error == {"message": instance_400["message"], "type": "invalid_request_error", "param": "tools",
                     "code": "InvalidInput"}
    r = httpx.post(chat, json=CHAT, headers=auth | {"azureml-model-deployment": "routeless"})
    assert _openai_error(r, 404)["message"] == "Not Found"
    r = httpx.post(chat, json=CHAT, headers=auth | {"azureml-model-deployment": "broken"})
    error = _openai_error(r, 424)
    assert "boom" in error["message"] and error["type"] == "server_error"
    # no such route under /v1, a route asked with the wrong method
    assert "/v1/embeddings" in _openai_error(
        httpx.post(f"{gateway.url}/endpoints/shape-ep/v1/embeddings", json={}, headers=auth), 404)["message"]
    r = httpx.get(chat, headers=auth)
    assert "use POST" in _openai_error(r, 405)["message"] and r.headers["allow"] == "POST"
    # /score keeps forgeflow's own shape for the same refusal
    r = post(gateway, "shape-ep", key, SCORE)
    assert r.status_code == 400 and r.json() == instance_400
    # past the failed-credential limit the guard's 429 is in OpenAI's shape too
    for _ in range(10):
        httpx.post(chat, json=CHAT, headers={"Authorization": "Bearer wrong"})
    r = httpx.post(chat, json=CHAT, headers={"Authorization": "Bearer wrong"})
    assert _openai_error(r, 429)["code"] == "TooManyRequests" and r.headers["retry-after"]


def test_a_default_deployment_takes_a_burst_of_ten_and_still_refuses_past_twice_its_concurrency(gateway):
    key = gateway.endpoint("burst-ep")
    gateway.svc.create_deployment("burst-ep", "blue", "fake:1", json.dumps({"output": "ok", "delay": 3.0}),
                                  liveness_probe=FAST_LIVENESS, readiness_probe=FAST_PROBES)
    dep = gateway.wait("burst-ep", "blue")
    assert dep["request_settings"]["max_concurrent_requests_per_instance"] == 8
    gateway.svc.update_endpoint("burst-ep", traffic={"blue": 100})

    async def burst(n: int) -> list:
        client = _client(gateway, "burst-ep", key, openai.AsyncOpenAI)
        async with client:
            return await asyncio.gather(*[client.chat.completions.create(
                model="blue", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=4) for i in range(n)],
                return_exceptions=True)

    answers = asyncio.run(burst(10))
    assert [a.choices[0].message.content for a in answers] == ["ok"] * 10, answers
    # Azure's rule still holds past 2 x 8 x 1 pending: the rest are 429 naming the setting
    answers = asyncio.run(burst(24))
    refused = [a for a in answers if isinstance(a, openai.RateLimitError)]
    assert refused and all(not isinstance(a, Exception) or a in refused for a in answers), answers
    assert "max_concurrent_requests_per_instance 8" in refused[0].body["message"]
