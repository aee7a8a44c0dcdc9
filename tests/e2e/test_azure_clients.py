"""The Azure AI inference client and a burst from the async OpenAI client against a real `forgeflow serve`, its
model server on the tiny model, deployed with the default request settings through the CLI."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import ModelType, SystemMessage, UserMessage
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from endpoint_ports import free_endpoint_port
from waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def deployed(live_server, tiny_model_dir):
    """(server, endpoint show, key) for endpoint az-ep with deployment blue on the tiny model, default settings."""
    s = live_server
    s.cli("online-endpoint", "create", "--name", "az-ep")
    dep = s.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "az-ep",
                     "--model", str(tiny_model_dir), "--all-traffic")
    assert dep["provisioning_state"] == "Succeeded", dep
    assert dep["request_settings"]["max_concurrent_requests_per_instance"] == 8
    key = s.cli_json("online-endpoint", "get-credentials", "--name", "az-ep")["primary_key"]
    return s, s.cli_json("online-endpoint", "show", "--name", "az-ep"), key


def test_the_azure_inference_client_on_the_endpoints_base_url(deployed, tiny_model_dir):
    s, shown, key = deployed
    base = shown["scoring_uri"].removesuffix("/score")
    client = ChatCompletionsClient(endpoint=base, credential=AzureKeyCredential(key))
    messages = [SystemMessage(content="Answer briefly."), UserMessage(content="Who founded Microsoft?")]
    out = client.complete(messages=messages, max_tokens=6, temperature=0)
    assert isinstance(out.choices[0].message.content, str) and out.choices[0].finish_reason in ("stop", "length")
    assert 1 <= out.usage.completion_tokens <= 6 and out.usage.prompt_tokens > 0
    updates = list(client.complete(messages=messages, max_tokens=6, temperature=0, stream=True))
    streamed = "".join(u.choices[0].delta.content or "" for u in updates if u.choices)
    assert streamed == out.choices[0].message.content  # greedy: the same answer, in pieces
    assert updates[-1].choices[0].finish_reason == out.choices[0].finish_reason

    info = client.get_model_info()
    assert info.model_name == tiny_model_dir.name
    assert (info.model_type, info.model_provider_name) == (ModelType.CHAT_COMPLETION, "forgeflow")

    with pytest.raises(ClientAuthenticationError, match="missing or wrong key"):
        ChatCompletionsClient(endpoint=base, credential=AzureKeyCredential("not-the-key")).complete(messages=messages)
    # a parameter the client hands over that forgeflow cannot honour is refused, named, never ignored
    with pytest.raises(HttpResponseError, match="safe_prompt") as refused:
        client.complete(messages=messages, max_tokens=6, model_extras={"safe_prompt": True})
    assert refused.value.status_code == 400 and refused.value.error.target == "safe_prompt"
    # the instance's own refusal (a prompt past the model's context) comes back in Azure's shape
    with pytest.raises(HttpResponseError) as too_long:
        client.complete(messages=[UserMessage(content="word " * 2000)], max_tokens=6)
    assert too_long.value.status_code == 400 and too_long.value.error.code == "InvalidInput"
    assert too_long.value.error.message

    # on a port of the endpoint's own, the base URL is the port's (Azure's shape: the host, then /score)
    s.cli("online-endpoint", "update", "--name", "az-ep", "--set", f"port={free_endpoint_port()}")
    port_base = s.cli_json("online-endpoint", "show", "--name", "az-ep")["port_scoring_uri"].removesuffix("/score")
    wait_until(lambda: _listening(port_base), timeout=30, what="the endpoint's own port")
    on_port = ChatCompletionsClient(endpoint=port_base, credential=AzureKeyCredential(key))
    assert on_port.get_model_info().model_name == tiny_model_dir.name
    assert on_port.complete(messages=messages, max_tokens=6, temperature=0).choices[0].message.content == \
        out.choices[0].message.content


def _listening(url: str) -> bool:
    try:
        httpx.get(f"{url}/info", timeout=5)
    except httpx.ConnectError:
        return False
    return True


def test_a_burst_of_ten_from_the_async_openai_client_queues_and_succeeds(deployed):
    _, shown, key = deployed

    async def burst() -> list:
        async with openai.AsyncOpenAI(api_key=key, base_url=shown["openai_base_url"], max_retries=0,
                                      timeout=120) as client:
            return await asyncio.gather(*[client.chat.completions.create(
                model="blue", messages=[{"role": "user", "content": f"Question {i}?"}], max_tokens=8)
                for i in range(10)], return_exceptions=True)

    answers = asyncio.run(burst())
    failed = [a for a in answers if isinstance(a, Exception)]
    assert not failed, failed
    assert all(a.choices[0].finish_reason in ("stop", "length") and a.usage.completion_tokens >= 1 for a in answers)

    # the deployment as a model, and the instance's own refusal in OpenAI's shape
    client = openai.OpenAI(api_key=key, base_url=shown["openai_base_url"], max_retries=0, timeout=60)
    assert client.models.retrieve("blue").id == "blue"
    # a raw prompt, its model named as a Prompt flow file would: served by the traffic split
    done = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time", max_tokens=4)
    assert isinstance(done.choices[0].text, str) and 1 <= done.usage.completion_tokens <= 4
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    with pytest.raises(openai.BadRequestError) as too_long:  # past the model's context
        client.chat.completions.create(model="blue", messages=[{"role": "user", "content": "word " * 2000}])
    assert too_long.value.body["code"] == "InvalidInput" and too_long.value.body["message"]
