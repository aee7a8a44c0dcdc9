"""The official OpenAI clients (openai, sync and async; langchain-openai) against a real `forgeflow serve` with a
deployment of the tiny model: every field forgeflow takes does what OpenAI's does, and every one it cannot
honour is an `openai.BadRequestError` whose `param` names it.

The chat calls go through the endpoint's gateway (`openai_base_url`). The items the gateway does not route yet
(`/v1/completions`, `GET /v1/models/{id}`) are asked of the deployment's instance itself, with the instance's
secret as the API key: the instance answers them in OpenAI's shapes, and the gateway forwards bodies as they are.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import openai
import pytest
from live_server import LiveServer

pytestmark = pytest.mark.integration

USER = {"role": "user", "content": "What is the capital of France?"}


def _instance_secret(pid: int) -> str:
    """The secret an instance was started with, as its owner can read it."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        for item in f.read().split(b"\0"):
            if item.startswith(b"FORGEFLOW_INSTANCE_SECRET="):
                return item.split(b"=", 1)[1].decode()
    raise AssertionError("the instance has no secret in its environment")


@pytest.fixture(scope="module")
def target(tmp_path_factory, tiny_model_dir):
    """A live server with endpoint `oai` serving deployment `blue` (the tiny model)."""
    server = LiveServer.on_loopback(tmp_path_factory.mktemp("openai-home"))
    server.start()
    try:
        server.cli("online-endpoint", "create", "--name", "oai")
        # eight requests at once per instance: what the transformers runtime decodes in one batch
        dep = server.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "oai",
                              "--model", str(tiny_model_dir), "--all-traffic",
                              "--set", "request_settings.max_concurrent_requests_per_instance=8")
        assert dep["provisioning_state"] == "Succeeded", dep
        key = server.cli_json("online-endpoint", "get-credentials", "--name", "oai")["primary_key"]
        base_url = server.cli_json("online-endpoint", "show", "--name", "oai")["openai_base_url"]
        instance = dep["instances"][0]
        yield {"key": key, "base_url": base_url, "instance_url": f"{instance['url']}/v1",
               "instance_key": _instance_secret(instance["pid"])}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(target) -> openai.OpenAI:
    return openai.OpenAI(api_key=target["key"], base_url=target["base_url"], max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def instance(target) -> openai.OpenAI:
    return openai.OpenAI(api_key=target["instance_key"], base_url=target["instance_url"], max_retries=0, timeout=120)


def _seeded(client, **fields):
    """A sampled answer that repeats (the tiny random model's greedy answer is mostly special tokens)."""
    return client.chat.completions.create(model="blue", messages=fields.pop("messages", [USER]), seed=3,
                                          **{"max_tokens": 12, **fields})


def test_n_choices_and_seeds(client):
    first = client.chat.completions.create(model="blue", messages=[USER], n=2, seed=11, max_tokens=10)
    assert first.created > 0 and [c.index for c in first.choices] == [0, 1]
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    again = client.chat.completions.create(model="blue", messages=[USER], n=2, seed=11, max_tokens=10)
    assert [c.message.content for c in again.choices] == [c.message.content for c in first.choices]
    # choice i samples with seed + i: it is the answer a single request with that seed gets
    second_alone = client.chat.completions.create(model="blue", messages=[USER], seed=12, max_tokens=10)
    assert second_alone.choices[0].message.content == first.choices[1].message.content

    stream = client.chat.completions.create(model="blue", messages=[USER], n=2, seed=11, max_tokens=10, stream=True,
                                            stream_options={"include_usage": True})
    texts, finished, usage = {0: "", 1: ""}, {}, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert [texts[0], texts[1]] == [c.message.content for c in first.choices]
    assert set(finished) == {0, 1} and usage.completion_tokens == first.usage.completion_tokens


def test_stop_content_parts_and_developer_role(client):
    plain = _seeded(client, max_tokens=16).choices[0].message.content
    stop = next(plain[i:i + 2] for i in range(2, len(plain) - 1) if plain[i:i + 2].isalnum())
    stopped = _seeded(client, max_tokens=16, stop=[stop]).choices[0]
    assert stopped.message.content == plain[: plain.find(stop)].strip() and stopped.finish_reason == "stop"

    as_parts = _seeded(client, messages=[{"role": "developer", "content": "Answer briefly."},
                                         {"role": "user", "content": [{"type": "text", "text": "Who founded"},
                                                                      {"type": "text", "text": "Microsoft?"}]}])
    as_text = _seeded(client, messages=[{"role": "system", "content": "Answer briefly."},
                                        {"role": "user", "content": "Who founded\nMicrosoft?"}])
    assert as_parts.choices[0].message.content == as_text.choices[0].message.content


def test_langchain_chat_and_stream(target):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=target["base_url"], api_key=target["key"], model="blue", seed=3, max_tokens=8,
                     max_retries=0)
    answer = llm.invoke("What is the capital of France?")
    assert answer.content and answer.response_metadata["finish_reason"] in ("stop", "length")
    streamed = "".join(chunk.content for chunk in llm.stream("What is the capital of France?"))
    assert streamed == answer.content


def test_completions_and_models_on_the_instance(instance):
    card = instance.models.retrieve("blue")
    assert card.id == "blue" and card.object == "model" and card.created > 0
    with pytest.raises(openai.NotFoundError):
        instance.models.retrieve("gpt-4")

    done = instance.completions.create(model="blue", prompt="The capital of France is", max_tokens=6, seed=3)
    assert done.object == "text_completion" and done.created > 0
    assert done.choices[0].text and done.choices[0].finish_reason in ("stop", "length")
    assert 0 < done.usage.completion_tokens <= 6
    again = instance.completions.create(model="blue", prompt=["The capital of France is"], max_tokens=6,
                                        seed=3)
    assert again.choices[0].text == done.choices[0].text
    streamed = instance.completions.create(model="blue", prompt="The capital of France is", max_tokens=6,
                                           seed=3, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == done.choices[0].text
    two = instance.completions.create(model="blue", prompt="Once", max_tokens=6, n=2, seed=5)
    assert [c.index for c in two.choices] == [0, 1]

    with pytest.raises(openai.BadRequestError) as caught:
        instance.completions.create(model="blue", prompt="x", suffix="y")
    assert caught.value.param == "suffix"
    with pytest.raises(openai.BadRequestError) as caught:
        instance.completions.create(model="blue", prompt=[1, 2, 3])
    assert caught.value.param == "prompt"


UNSUPPORTED = [
    ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
    ({"modalities": ["audio"]}, "modalities[0]"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"verbosity": "low"}, "verbosity"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"store": True}, "store"),
    ({"metadata": {"run": "1"}}, "metadata"),
    ({"prompt_cache_key": "k"}, "prompt_cache_key"),
    ({"stream_options": {"include_obfuscation": True}, "stream": True}, "stream_options.include_obfuscation"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"n": 9}, "n"),
    ({"logit_bias": {"abc": 1}}, "logit_bias.abc"),
    ({"extra_body": {"repetition_penalty": 1.2}}, "repetition_penalty"),
    ({"extra_body": {"best_of": 2}}, "best_of"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": "hi", "name": "dana"}]}, "messages[0].name"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "call_9"}]}, "messages[0].tool_call_id"),
]


@pytest.mark.parametrize(("fields", "param"), UNSUPPORTED, ids=[p for _, p in UNSUPPORTED])
def test_what_forgeflow_cannot_honour_is_a_bad_request_naming_it(client, fields, param):
    fields = {"messages": [USER], "max_tokens": 2, **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        result = client.chat.completions.create(model="blue", **fields)
        if fields.get("stream"):
            list(result)
    assert caught.value.status_code == 400 and caught.value.param == param, caught.value.body
    assert caught.value.body["type"] == "invalid_request_error"


def test_ten_concurrent_async_requests_all_succeed(target):
    async def burst():
        async with openai.AsyncOpenAI(api_key=target["key"], base_url=target["base_url"], max_retries=0,
                                      timeout=120) as aclient:
            return await asyncio.gather(*(aclient.chat.completions.create(
                model="blue", messages=[{"role": "user", "content": f"Count to {i}"}], max_tokens=8, seed=i)
                for i in range(10)))

    answers = asyncio.run(burst())
    assert len(answers) == 10 and all(a.choices[0].finish_reason in ("stop", "length") for a in answers)
    assert Counter(a.id for a in answers).most_common(1)[0][1] == 1
    json.dumps([a.model_dump() for a in answers])  # every answer is a well-formed ChatCompletion
