"""Azure AI model inference on an endpoint's base URL (fake model servers): azure-ai-inference's
ChatCompletionsClient, the `extra-parameters` header, the model info, and Azure's error shape."""

from __future__ import annotations

import httpx
import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import ModelType, UserMessage
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from gateway_harness import CHAT

from forgeflow.serving import azure_inference

MESSAGES = [{"role": "user", "content": "hi"}]


def _base(gw, endpoint: str) -> str:
    """The endpoint's base URL: its scoring URI without /score."""
    shown = httpx.get(f"{gw.url}/api/endpoints/{endpoint}", headers=gw.admin).json()
    return shown["scoring_uri"].removesuffix("/score")


def _azure_error(r: httpx.Response, status: int) -> dict:
    """The error of an answer, checked to be in Azure's shape with the status."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert {"code", "message", "status"} <= set(error) and error["status"] == status, error
    return error


def test_the_azure_inference_client_completes_streams_and_reads_the_model_info(gateway):
    key = gateway.endpoint("az-ep")
    gateway.deploy("az-ep", "blue", {"output": "hello", "chunks": 3})
    gateway.svc.update_endpoint("az-ep", traffic={"blue": 100})
    client = ChatCompletionsClient(endpoint=_base(gateway, "az-ep"), credential=AzureKeyCredential(key))
    out = client.complete(messages=[UserMessage(content="hi")], max_tokens=5, temperature=0.5, seed=7)
    assert out.choices[0].message.content == "hello" and out.usage.completion_tokens == 2
    assert out.choices[0].finish_reason == "stop" and out.created.year >= 2024
    parts = [u.choices[0].delta.content for u in client.complete(messages=[UserMessage(content="hi")], stream=True)
             if u.choices and u.choices[0].delta.content]
    assert "".join(parts) == "hello0 hello1 hello2 "
    info = client.get_model_info()
    assert (info.model_name, info.model_type, info.model_provider_name) == ("fake:1", ModelType.CHAT_COMPLETION,
                                                                            "forgeflow")

    bad = ChatCompletionsClient(endpoint=_base(gateway, "az-ep"), credential=AzureKeyCredential("wrong"))
    with pytest.raises(ClientAuthenticationError, match="missing or wrong key"):
        bad.complete(messages=[UserMessage(content="hi")])
    with pytest.raises(ClientAuthenticationError):
        bad.get_model_info()
    # an extra parameter the client hands over (model_extras: pass-through) that forgeflow cannot honour
    with pytest.raises(HttpResponseError, match="safe_prompt") as refused:
        client.complete(messages=[UserMessage(content="hi")], model_extras={"safe_prompt": True})
    assert refused.value.status_code == 400 and refused.value.error.target == "safe_prompt"
    with pytest.raises(ResourceNotFoundError, match="purple"):
        client.complete(messages=[UserMessage(content="hi")], headers={"azureml-model-deployment": "purple"})


def test_a_stream_that_fails_mid_way_raises_in_the_azure_client(gateway):
    """azure-ai-inference skips an event with no choices, so the error event alone would make a failed stream look
    complete: the gateway closes the connection before the body's end, and azure-core raises."""
    key = gateway.endpoint("azfail-ep")
    gateway.deploy("azfail-ep", "blue", {"output": "tok", "chunks": 5, "fail_after": 2})
    gateway.deploy("azfail-ep", "dies", {"output": "tok", "chunks": 5, "die_after": 2})
    gateway.svc.update_endpoint("azfail-ep", traffic={"blue": 100})
    client = ChatCompletionsClient(endpoint=_base(gateway, "azfail-ep"), credential=AzureKeyCredential(key))
    for deployment in ("blue", "dies"):  # the instance's error event, and the gateway's when the instance dies
        got = []
        with pytest.raises(HttpResponseError):
            for update in client.complete(messages=[UserMessage(content="hi")], stream=True,
                                          headers={"azureml-model-deployment": deployment}):
                got.extend(c.delta.content for c in update.choices if c.delta.content)
        assert got == ["tok0 ", "tok1 "]
    # what reached the client before the connection closed: the error event, in OpenAI's shape
    with httpx.stream("POST", f"{_base(gateway, 'azfail-ep')}/chat/completions", json={"messages": MESSAGES,
                      "stream": True}, headers={"api-key": key}, timeout=30) as r:
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in r.iter_raw():
                received += chunk
    assert b'"generation failed: boom"' in received and b"[DONE]" not in received
    metrics = httpx.get(f"{gateway.url}/metrics", headers=gateway.admin).text
    assert 'forgeflow_requests_total{endpoint="azfail-ep",deployment="blue",code="424"} 2' in metrics
    assert 'forgeflow_requests_total{endpoint="azfail-ep",deployment="dies",code="424"} 1' in metrics


def test_extra_parameters_are_refused_dropped_or_passed_as_the_header_says(gateway, monkeypatch):
    key = gateway.endpoint("extra-ep")
    gateway.deploy("extra-ep", "blue")
    gateway.svc.update_endpoint("extra-ep", traffic={"blue": 100})
    url = f"{_base(gateway, 'extra-ep')}/chat/completions?api-version=2024-05-01-preview"

    def ask(body: dict, mode: str | None = None) -> httpx.Response:
        headers = {"api-key": key} | ({"extra-parameters": mode} if mode else {})  # the key as api-key alone
        return httpx.post(url, json={"messages": MESSAGES} | body, headers=headers, timeout=30)

    ok = ask({"max_tokens": 4})
    assert ok.status_code == 200 and ok.headers["azureml-model-deployment"] == "blue"
    for mode in (None, "error", "ERROR"):  # Azure's default: an extra parameter is refused, named
        error = _azure_error(ask({"safe_prompt": True}, mode), 400)
        assert error["target"] == "safe_prompt" and "pass-through" in error["message"]
    r = ask({"safe_prompt": True, "max_tokens": 4}, "drop")  # left out, as asked, and the rest goes on
    assert r.status_code == 200 and r.json()["received"] == ["max_tokens", "messages"]
    assert _azure_error(ask({"safe_prompt": True}, "pass-through"), 400)["target"] == "safe_prompt"
    # pass-through hands over what forgeflow's chat contract takes beyond Azure's parameters
    r = ask({"max_completion_tokens": 3}, "pass-through")
    assert r.status_code == 200 and "max_completion_tokens" in r.json()["received"]
    assert _azure_error(ask({}, "keep"), 400)["target"] == "extra-parameters"
    # one of Azure's own parameters that forgeflow could not honour is refused whatever the header says
    monkeypatch.setattr(azure_inference, "AZURE_CHAT_PARAMETERS", azure_inference.AZURE_CHAT_PARAMETERS | {"n_gpu"})
    for mode in (None, "drop", "pass-through"):
        error = _azure_error(ask({"n_gpu": 2}, mode), 400)
        assert error["target"] == "n_gpu" and "cannot honour" in error["message"]


def test_model_info_follows_the_header_else_the_most_traffic(gateway):
    key = gateway.endpoint("info-ep")
    gateway.deploy("info-ep", "blue")
    gateway.deploy("info-ep", "green")
    auth = {"Authorization": f"Bearer {key}"}
    info = f"{_base(gateway, 'info-ep')}/info"
    assert _azure_error(httpx.get(info, headers=auth), 404)["code"] == "NotFound"  # no traffic yet
    gateway.svc.update_endpoint("info-ep", traffic={"blue": 30, "green": 70})
    for _ in range(5):
        r = httpx.get(info, params={"api-version": "2024-05-01-preview"}, headers=auth)
        assert r.status_code == 200 and r.headers["azureml-model-deployment"] == "green"
    assert r.json() == {"model_name": "fake:1", "model_type": "chat_completion", "model_provider_name": "forgeflow"}
    r = httpx.get(info, headers=auth | {"azureml-model-deployment": "blue"})
    assert r.headers["azureml-model-deployment"] == "blue"
    assert _azure_error(httpx.get(info, headers=auth | {"azureml-model-deployment": "red"}), 404)["target"] == \
        "azureml-model-deployment"


def test_every_error_on_the_azure_routes_is_in_azure_shape(gateway):
    key = gateway.endpoint("azerr-ep")
    refusal = {"error": "InvalidInput", "message": "response_format: json_schema needs a schema",
               "field": "response_format.json_schema"}
    gateway.deploy("azerr-ep", "refuses", {"refuse": [400, refusal]})
    gateway.deploy("azerr-ep", "broken", {"fail": True})
    gateway.svc.update_endpoint("azerr-ep", traffic={"refuses": 100})
    base = _base(gateway, "azerr-ep")
    auth = {"Authorization": f"Bearer {key}"}
    _azure_error(httpx.post(f"{base}/chat/completions", json=CHAT), 401)  # the guard's: no key at all
    _azure_error(httpx.get(f"{base}/info"), 401)
    _azure_error(httpx.post(f"{base}/chat/completions", json=CHAT, headers={"api-key": "wrong"}), 401)
    error = _azure_error(httpx.post(f"{base}/chat/completions", json={"messages": "hi"}, headers=auth), 400)
    assert error["target"] == "messages"
    error = _azure_error(httpx.post(f"{base}/chat/completions", json={"messages": MESSAGES}, headers=auth), 400)
    assert error == {"code": "InvalidInput", "message": refusal["message"], "status": 400,
                     "target": "response_format.json_schema"}
    r = httpx.post(f"{base}/chat/completions", json={"messages": MESSAGES},
                   headers=auth | {"azureml-model-deployment": "broken"})
    assert "boom" in _azure_error(r, 424)["message"]
    r = httpx.get(f"{base}/chat/completions", headers=auth)
    assert "use POST" in _azure_error(r, 405)["message"]
