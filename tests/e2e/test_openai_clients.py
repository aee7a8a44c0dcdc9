"""The official OpenAI clients (openai, sync and async; langchain-openai) against a real `forgeflow serve` with a
deployment of the tiny model: every field forgeflow takes does what OpenAI's does, and every one it cannot
honour is an `openai.BadRequestError` whose `param` names it.

Every call goes through the endpoint's gateway (`openai_base_url`) with the endpoint's key, as a client's would:
chat and text completions and `GET /v1/models/{id}`. The deployment takes the default request settings, so the
burst of ten concurrent requests exercises the default `max_concurrent_requests_per_instance`. The tools and JSON
tests use the tiny model with a tools template; a second deployment keeps the plain template, which has no tool
support.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from pathlib import Path

import openai
import pytest
from live_server import LiveServer
from pydantic import BaseModel, ConfigDict, Field
from tiny import build_tiny_model, vary_weights

pytestmark = pytest.mark.integration

USER = {"role": "user", "content": "What is the capital of France?"}


def _tools_model(out: Path) -> Path:
    """The tiny model with a tools template (Hermes-style, as Qwen2.5's) and larger random weights, so its greedy
    choices are decisive and vary with the prompt."""
    build_tiny_model(out, tools=True)
    return vary_weights(out, seed=3)


@pytest.fixture(scope="module")
def target(tmp_path_factory, tiny_model_dir):
    """A live server with endpoint `oai`: deployment `blue` (all traffic) serves the tiny model with a tools
    template, `green` (no traffic, reached by header) the plain tiny model, whose template has no tools."""
    server = LiveServer.on_loopback(tmp_path_factory.mktemp("openai-home"))
    model_dir = _tools_model(tmp_path_factory.mktemp("tools-model"))
    server.start()
    try:
        server.cli("online-endpoint", "create", "--name", "oai")
        dep = server.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "oai",
                              "--model", str(model_dir), "--all-traffic")
        assert dep["provisioning_state"] == "Succeeded", dep
        green = server.cli_json("online-deployment", "create", "--name", "green", "--endpoint-name", "oai",
                                "--model", str(tiny_model_dir))
        assert green["provisioning_state"] == "Succeeded", green
        key = server.cli_json("online-endpoint", "get-credentials", "--name", "oai")["primary_key"]
        base_url = server.cli_json("online-endpoint", "show", "--name", "oai")["openai_base_url"]
        yield {"key": key, "base_url": base_url, "model_dir": model_dir}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(target) -> openai.OpenAI:
    return openai.OpenAI(api_key=target["key"], base_url=target["base_url"], max_retries=0, timeout=120)


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


def test_completions_and_models_through_the_gateway(client):
    card = client.models.retrieve("blue")
    assert card.id == "blue" and card.object == "model" and card.created > 0
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")

    done = client.completions.create(model="blue", prompt="The capital of France is", max_tokens=6, seed=3)
    assert done.object == "text_completion" and done.created > 0
    assert done.choices[0].text and done.choices[0].finish_reason in ("stop", "length")
    assert 0 < done.usage.completion_tokens <= 6
    again = client.completions.create(model="blue", prompt=["The capital of France is"], max_tokens=6,
                                        seed=3)
    assert again.choices[0].text == done.choices[0].text
    streamed = client.completions.create(model="blue", prompt="The capital of France is", max_tokens=6,
                                           seed=3, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == done.choices[0].text
    two = client.completions.create(model="blue", prompt="Once", max_tokens=6, n=2, seed=5)
    assert [c.index for c in two.choices] == [0, 1]

    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="blue", prompt="x", suffix="y")
    assert caught.value.param == "suffix"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="blue", prompt=[1, 2, 3])
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
    ({"messages": [{"role": "user", "content": "hi", "name": "Dana Scully"}]}, "messages[0].name"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "m" * 257}, "model"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "call_9"}]}, "messages[0].tool_call_id"),
]


@pytest.mark.parametrize(("fields", "param"), UNSUPPORTED, ids=[p for _, p in UNSUPPORTED])
def test_what_forgeflow_cannot_honour_is_a_bad_request_naming_it(client, fields, param):
    fields = {"messages": [USER], "max_tokens": 2, **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        result = client.chat.completions.create(**{"model": "blue", **fields})
        if fields.get("stream"):
            list(result)
    assert caught.value.status_code == 400 and caught.value.param == param, caught.value.body
    assert caught.value.body["type"] == "invalid_request_error"


def test_null_fields_take_their_defaults_and_message_names_are_taken(client):
    """openai-python sends null for an explicit None; LangGraph and AutoGen name a message's participant."""
    out = client.chat.completions.create(model="blue", messages=[{"role": "user", "content": "hi", "name": "alice"}],
                                         n=None, max_tokens=None, max_completion_tokens=3, temperature=None,
                                         stop=None, seed=None, stream=None, tools=None, tool_choice=None)
    assert len(out.choices) == 1 and out.usage.completion_tokens <= 3
    done = client.completions.create(model="blue", prompt="Once", max_tokens=None, n=None, temperature=0)
    assert len(done.choices) == 1 and done.usage.completion_tokens <= 16


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


# -- decoding under a grammar, log-probabilities, bias and penalties ------------------------------------------

# Strings are bounded: a random model under a grammar ends a string only when its length says so.
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"],
    "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a timezone", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"],
    "additionalProperties": False}}}
BUDGET = 200  # tokens enough for a bounded JSON answer


class Person(BaseModel):
    # no other keys: LangChain's default json_schema mode is not strict, and extra keys would leave the answer unbounded
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=8)
    age: int = Field(ge=0, le=120)


def _arguments(call) -> dict:
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments, dict)
    return arguments


def test_json_schema_strict_parses_and_matches(client):
    parsed = client.chat.completions.parse(model="blue", messages=[USER], response_format=Person, max_tokens=BUDGET,
                                           seed=1)
    person = parsed.choices[0].message.parsed
    assert isinstance(person, Person)
    assert set(json.loads(parsed.choices[0].message.content)) == {"name", "age"}

    async def json_mode():
        async with openai.AsyncOpenAI(api_key=client.api_key, base_url=client.base_url, max_retries=0) as aclient:
            return await aclient.chat.completions.create(model="blue", messages=[USER], max_tokens=300, seed=2,
                                                         response_format={"type": "json_object"})

    assert isinstance(json.loads(asyncio.run(json_mode()).choices[0].message.content), dict)


def test_langchain_structured_output(target):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=target["base_url"], api_key=target["key"], model="blue", max_tokens=BUDGET, seed=1,
                     max_retries=0)
    assert isinstance(llm.with_structured_output(Person).invoke("Who are you?"), Person)
    assert isinstance(llm.with_structured_output(Person, method="function_calling").invoke("Who are you?"), Person)


def test_tool_choice_required_auto_named_and_none(client):
    ask = {"model": "blue", "messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": BUDGET,
           "seed": 4, "tools": [WEATHER, TIME]}
    required = client.chat.completions.create(**ask, tool_choice="required").choices[0]
    assert required.finish_reason == "tool_calls" and required.message.tool_calls
    for call in required.message.tool_calls:
        assert call.type == "function" and call.id
        wanted = {"get_weather": "city", "get_time": "zone"}[call.function.name]
        assert set(_arguments(call)) == {wanted} and isinstance(_arguments(call)[wanted], str)

    named = client.chat.completions.create(**ask, tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = named.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"] and isinstance(_arguments(calls[0])["zone"], str)

    single = client.chat.completions.create(**ask, tool_choice="required", parallel_tool_calls=False)
    assert len(single.choices[0].message.tool_calls) == 1

    none = client.chat.completions.create(**ask, tool_choice="none").choices[0]
    assert not none.message.tool_calls and none.finish_reason in ("stop", "length")

    auto = client.chat.completions.create(**ask).choices[0]  # the model decides; a call it makes parses
    assert (auto.finish_reason == "tool_calls") == bool(auto.message.tool_calls)
    for call in auto.message.tool_calls or ():
        _arguments(call)

    streamed = client.chat.completions.create(**ask, tool_choice="required", stream=True)
    deltas, finish = [], None
    for chunk in streamed:
        for choice in chunk.choices:
            deltas += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and [d.function.name for d in deltas] == [
        c.function.name for c in required.message.tool_calls]


def test_a_tool_result_round_trip(client, target):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    question = {"role": "user", "content": "Weather in Paris?"}
    asked = client.chat.completions.create(model="blue", messages=[question], tools=[WEATHER], max_tokens=BUDGET,
                                           tool_choice="required", parallel_tool_calls=False, seed=5).choices[0].message
    call = asked.tool_calls[0]
    answer = client.chat.completions.create(model="blue", max_tokens=12, seed=5, tools=[WEATHER], messages=[
        question, asked, {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]).choices[0]
    assert answer.finish_reason in ("stop", "length", "tool_calls")

    llm = ChatOpenAI(base_url=target["base_url"], api_key=target["key"], model="blue", max_tokens=BUDGET, seed=5,
                     max_retries=0).bind_tools([WEATHER], tool_choice="required", parallel_tool_calls=False)
    ai = llm.invoke([HumanMessage("Weather in Paris?")])
    assert ai.tool_calls[0]["name"] == "get_weather" and isinstance(ai.tool_calls[0]["args"]["city"], str)
    again = llm.bind(tool_choice="none").invoke([HumanMessage("Weather in Paris?"), ai,
                                                  ToolMessage("Sunny", tool_call_id=ai.tool_calls[0]["id"])])
    assert not again.tool_calls


def test_tools_on_a_model_whose_template_has_none_are_refused(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="green", messages=[USER], tools=[WEATHER], max_tokens=4,
                                       extra_headers={"azureml-model-deployment": "green"})
    assert caught.value.param == "tools"


def _tokens(answer) -> list[str]:
    return [t.token for t in answer.choices[0].logprobs.content]


def test_logprobs(client):
    greedy = client.chat.completions.create(model="blue", messages=[USER], temperature=0, max_tokens=8, logprobs=True,
                                            top_logprobs=3)
    content = greedy.choices[0].logprobs.content
    assert len(content) == greedy.usage.completion_tokens
    for token in content:
        assert 1 <= len(token.top_logprobs) <= 3 and token.logprob <= 0
        assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs), reverse=True)
        assert (token.token, token.logprob) == (token.top_logprobs[0].token, token.top_logprobs[0].logprob)
    sampled = client.chat.completions.create(model="blue", messages=[USER], seed=9, max_tokens=8, logprobs=True,
                                             top_logprobs=1)
    assert all(t.logprob <= t.top_logprobs[0].logprob + 1e-6 for t in sampled.choices[0].logprobs.content)
    streamed = client.chat.completions.create(model="blue", messages=[USER], temperature=0, max_tokens=8,
                                              logprobs=True, top_logprobs=3, stream=True)
    assert [t.token for c in streamed if c.choices and c.choices[0].logprobs
            for t in c.choices[0].logprobs.content] == _tokens(greedy)


def test_logit_bias_and_penalties(client, target):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target["model_dir"])
    forced = tokenizer.encode("Paris", add_special_tokens=False)[0]
    answer = client.chat.completions.create(model="blue", messages=[USER], temperature=0, max_tokens=5,
                                            logit_bias={str(forced): 100}, logprobs=True)
    assert _tokens(answer) == [tokenizer.decode([forced])] * 5

    plain = client.chat.completions.create(model="blue", messages=[USER], temperature=0, max_tokens=8, logprobs=True)
    single = next(t for t in _tokens(plain) if len(tokenizer.encode(t, add_special_tokens=False)) == 1)
    banned = tokenizer.encode(single, add_special_tokens=False)[0]
    without = client.chat.completions.create(model="blue", messages=[USER], temperature=0, max_tokens=8,
                                             logit_bias={str(banned): -100}, logprobs=True)
    assert single not in _tokens(without)

    repeating = client.chat.completions.create(model="blue", messages=[USER], temperature=0, max_tokens=24,
                                               logprobs=True, logit_bias={str(forced): 5})
    assert Counter(_tokens(repeating)).most_common(1)[0][1] >= 3, _tokens(repeating)
    penalized = client.chat.completions.create(model="blue", messages=[USER], temperature=0, max_tokens=24,
                                               logprobs=True, logit_bias={str(forced): 5}, frequency_penalty=2,
                                               presence_penalty=2)
    assert Counter(_tokens(penalized)).most_common(1)[0][1] < Counter(_tokens(repeating)).most_common(1)[0][1]


def test_completions_logprobs_through_the_gateway(client):
    done = client.completions.create(model="blue", prompt="The capital of France is", max_tokens=5, temperature=0,
                                       logprobs=2)
    logprobs = done.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset) == \
        done.usage.completion_tokens
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
