"""OpenAI's bodies in the chat contract: every field forgeflow takes converts into the ChatRequest the runtime
gets, every value it cannot honour is a 400 naming the field, and the bodies the official clients send
(openai, langchain-openai) parse as they are."""

from __future__ import annotations

import json

import httpx
import pytest

from forgeflow.chat import (DEFAULT_MAX_NEW_TOKENS, ChatRequest, OutputFormat, Sampling, Tools,
                            parse_chat_completion_request, parse_completion_request)
from forgeflow.errors import InvalidInput

USER = {"role": "user", "content": "Who founded Microsoft?"}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "weather of a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
          "additionalProperties": False}


def chat(**fields) -> ChatRequest:
    return parse_chat_completion_request({"messages": [USER], **fields}).to_request()


def refused(parse, body) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse(body)
    error = caught.value
    assert error.field and error.message.startswith(error.field), error.message
    assert "pydantic" not in error.message and "validation error" not in error.message
    return error


def test_sampling_fields_become_the_sampling():
    assert chat(model="m", max_tokens=9, temperature=0) == ChatRequest([USER], 9, Sampling())
    assert chat() == ChatRequest([USER], DEFAULT_MAX_NEW_TOKENS, Sampling(greedy=False))
    assert chat(max_completion_tokens=5, max_tokens=5, seed=3, stop="\n").max_new_tokens == 5
    assert chat(stop=["a", "b"]).stop == ("a", "b") and chat(stop="\n").stop == ("\n",)
    assert chat(temperature=0.5, top_p=0.9, top_k=40, seed=3, frequency_penalty=0.5, presence_penalty=-1.5,
                logit_bias={"12": -100, "7": 2.5}).sampling == Sampling(
        greedy=False, temperature=0.5, top_p=0.9, seed=3, top_k=40, frequency_penalty=0.5, presence_penalty=-1.5,
        logit_bias=((12, -100.0), (7, 2.5)))
    # penalties and bias act on greedy decoding too; top-k -1 is "no cut", as vLLM takes it
    assert chat(temperature=0, presence_penalty=1.0, logit_bias={"3": 1}).sampling == Sampling(
        presence_penalty=1.0, logit_bias=((3, 1.0),))
    assert chat(top_k=-1).sampling.top_k == 0


def test_n_choices_take_seed_plus_i():
    body = parse_chat_completion_request({"messages": [USER], "n": 3, "seed": 10})
    assert [r.sampling.seed for r in body.to_requests()] == [10, 11, 12]
    assert len(parse_chat_completion_request({"messages": [USER], "n": 2}).to_requests()) == 2


def test_accepted_fields_that_change_nothing_forgeflow_does():
    """An opaque user id, the one service tier, no storing, text output, and OpenAI's null fields are accepted."""
    assert chat(user="u-1", safety_identifier="s-1", service_tier="auto", store=False, modalities=["text"],
                stream=True, stream_options={"include_usage": True, "include_obfuscation": False},
                audio=None, metadata=None, reasoning_effort=None, functions=None, prediction=None,
                response_format={"type": "text"}) == chat()


@pytest.mark.parametrize("parse", [parse_chat_completion_request, parse_completion_request])
def test_null_is_not_set_for_every_field(parse):
    """OpenAI's fields are nullable and openai-python sends null for an explicit None (`n=None`,
    `max_tokens=None`): every null field takes its default, as if it were left out."""
    base = {"messages": [USER]} if parse is parse_chat_completion_request else {"prompt": "Once upon a time"}
    model = type(parse(base))
    nulls = {name: None for name in model.model_fields if name not in base}
    assert {"n", "max_tokens", "temperature", "stream", "stream_options", "logprobs"} <= set(nulls)
    assert parse({**base, **nulls}).to_requests() == parse(base).to_requests()
    for name in nulls:
        assert parse({**base, name: None}).to_requests() == parse(base).to_requests(), name
    assert parse({**base, "stream": True, "stream_options": {"include_usage": None}}).include_usage is False


def test_messages_content_parts_and_roles():
    parts = [{"type": "text", "text": "Who founded"}, {"type": "text", "text": "Microsoft?"}]
    request = parse_chat_completion_request({"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": parts},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
        {"role": "assistant", "content": "It is sunny.", "refusal": None},
    ]}).to_request()
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who founded\nMicrosoft?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "It is sunny."},
    ]


@pytest.mark.parametrize(("messages", "field"), [
    ([], "messages"),
    ("hi", "messages"),
    ([7], "messages[0]"),
    ([{"role": "robot", "content": "x"}], "messages[0].role"),
    ([{"role": "function", "name": "f", "content": "x"}], "messages[0].role"),
    ([{"role": "user"}], "messages[0].content"),
    ([{"role": "user", "content": 3}], "messages[0].content"),
    ([{"role": "user", "content": []}], "messages[0].content"),
    ([{"role": "user", "content": ["hi"]}], "messages[0].content[0]"),
    ([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages[0].content[1].type"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "messages[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "file", "file": {}}]}], "messages[0].content[0].type"),
    ([{"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}], "messages[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "text", "text": "a", "cache_control": {}}]}],
     "messages[0].content[0].cache_control"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content[0].text"),
    ([{"role": "user", "content": "x", "name": "Dana Scully"}], "messages[0].name"),
    ([{"role": "user", "content": "x", "name": 7}], "messages[0].name"),
    ([{"role": "assistant", "content": None, "tool_calls": [CALL]},
      {"role": "tool", "content": "x", "tool_call_id": "call_1", "name": "get_weather"}], "messages[1].name"),
    ([{"role": "assistant", "content": "x", "refusal": "I cannot"}], "messages[0].refusal"),
    ([{"role": "assistant", "content": "x", "audio": {"id": "a"}}], "messages[0].audio"),
    ([{"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}],
     "messages[0].function_call"),
    ([{"role": "user", "content": "x", "mood": "happy"}], "messages[0].mood"),
    ([{"role": "assistant", "content": None}], "messages[0].content"),
    ([{"role": "user", "content": "x", "tool_calls": [CALL]}], "messages[0].tool_calls"),
    ([{"role": "user", "content": "x", "tool_call_id": "call_1"}], "messages[0].tool_call_id"),
    ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id"),
    ([USER, {"role": "tool", "content": "x", "tool_call_id": "call_9"}], "messages[1].tool_call_id"),
    ([{"role": "assistant", "content": None, "tool_calls": [{**CALL, "type": "custom"}]}],
     "messages[0].tool_calls[0].type"),
    ([{"role": "assistant", "content": None, "tool_calls": [{**CALL, "id": ""}]}], "messages[0].tool_calls[0].id"),
    ([{"role": "assistant", "content": None, "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}]}],
     "messages[0].tool_calls[0].function.arguments"),
    ([{"role": "assistant", "content": None, "tool_calls": [{**CALL, "function": {"name": "f g", "arguments": "{}"}}]}],
     "messages[0].tool_calls[0].function.name"),
])
def test_bad_messages_name_the_field(messages, field):
    assert refused(parse_chat_completion_request, {"messages": messages}).field == field


def test_response_format_becomes_the_output_format():
    assert chat(response_format={"type": "json_object"}).output == OutputFormat("json_object")
    strict = chat(response_format={"type": "json_schema", "json_schema": {"name": "Person", "schema": SCHEMA,
                                                                          "strict": True, "description": "a person"}})
    assert strict.output == OutputFormat("json_schema", SCHEMA, "Person", True)
    # a json_schema with no schema asks for any JSON object
    assert chat(response_format={"type": "json_schema", "json_schema": {"name": "any"}}).output == OutputFormat(
        "json_object", name="any")


def test_tools_and_tool_choice_become_the_tools():
    declared = chat(tools=[TOOL]).tools
    assert declared == Tools((TOOL,), "auto", True)
    assert chat(tools=[TOOL], tool_choice="required", parallel_tool_calls=False).tools == Tools((TOOL,), "required",
                                                                                               False)
    assert chat(tools=[TOOL], tool_choice="none").tools.choice == "none"
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert chat(tools=[TOOL], tool_choice=named).tools.choice == "get_weather"
    bare = chat(tools=[{"type": "function", "function": {"name": "now", "parameters": {}}}]).tools
    assert bare.definitions == ({"type": "function", "function": {"name": "now", "parameters": {
        "type": "object", "properties": {}}}},)
    assert chat(tools=[]).tools is None and chat(tools=None, tool_choice=None).tools is None


def test_a_message_name_reaches_the_chat_template():
    """LangGraph (AIMessage.name) and AutoGen name the participants; the name goes into the turn the template
    renders (templates that use it show it), on system, developer, user and assistant messages."""
    request = parse_chat_completion_request({"messages": [
        {"role": "developer", "content": "Be brief.", "name": "rules"},
        {"role": "user", "content": "Hi", "name": "alice"},
        {"role": "assistant", "content": "Hello", "name": "research_agent"},
        {"role": "user", "content": "Bye", "name": None}]}).to_request()
    assert request.messages == [{"role": "system", "content": "Be brief.", "name": "rules"},
                                {"role": "user", "content": "Hi", "name": "alice"},
                                {"role": "assistant", "content": "Hello", "name": "research_agent"},
                                {"role": "user", "content": "Bye"}]


def test_logprobs_ask_for_k_alternatives():
    assert chat().logprobs is None and chat(logprobs=False).logprobs is None
    assert chat(logprobs=True).logprobs == 0
    assert chat(logprobs=True, top_logprobs=20).logprobs == 20


@pytest.mark.parametrize(("fields", "field"), [
    ({"model": 3}, "model"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 4097}, "max_completion_tokens"),
    ({"max_tokens": 9, "max_completion_tokens": 5}, "max_tokens"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"n": 0}, "n"),
    ({"n": 9}, "n"),
    ({"seed": 2**64}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"stop": 3}, "stop"),
    ({"stop": ["a"] * 5}, "stop"),
    ({"stop": ""}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation"),
    ({"stream_options": {"chunk_size": 3}}, "stream_options.chunk_size"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"),
    ({"presence_penalty": -3}, "presence_penalty"),
    ({"logit_bias": [1]}, "logit_bias"),
    ({"logit_bias": {"hello": 1}}, "logit_bias.hello"),
    ({"logit_bias": {"12": 101}}, "logit_bias.12"),
    ({"logit_bias": {"12": True}}, "logit_bias.12"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ({"logprobs": 1}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "grammar", "grammar": "x"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_object", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": SCHEMA}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}}},
     "response_format.json_schema.strict"),
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": "a.b"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "examples": []}}]}, "tools[0].function.examples"),
    ({"tools": [TOOL, TOOL]}, "tools[1].function.name"),
    ({"tools": [TOOL] * 129}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tool_choice": "none", "tools": []}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": False, "stream_options": {"include_usage": False}}, "stream_options"),
    ({"model": "m" * 257}, "model"),
    ({"tool_choice": "always", "tools": [TOOL]}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "other"}}, "tools": [TOOL]}, "tool_choice.function.name"),
    ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}, "tools": [TOOL]}, "tool_choice.type"),
    ({"tool_choice": {"type": "function"}, "tools": [TOOL]}, "tool_choice.function"),
    ({"tool_choice": {"type": "function", "function": {"name": "auto"}},
      "tools": [{"type": "function", "function": {"name": "auto"}}]}, "tool_choice.function.name"),
    ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ({"user": 5}, "user"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"store": True}, "store"),
    ({"modalities": ["text", "audio"]}, "modalities[1]"),
])
def test_bad_values_name_the_field(fields, field):
    assert refused(parse_chat_completion_request, {"messages": [USER], **fields}).field == field


@pytest.mark.parametrize("name", ["audio", "prediction", "web_search_options", "functions", "function_call",
                                  "reasoning_effort", "verbosity", "metadata", "moderation", "prompt_cache_key",
                                  "prompt_cache_retention", "prompt_cache_options"])
def test_openai_fields_forgeflow_cannot_honour_are_refused_by_name(name):
    error = refused(parse_chat_completion_request, {"messages": [USER], name: {"any": "value"}})
    assert error.field == name and "not supported by forgeflow" in error.message


@pytest.mark.parametrize("name", ["best_of", "echo", "repetition_penalty", "min_p", "guided_json", "foo"])
def test_unknown_names_are_refused_as_openai_does(name):
    error = refused(parse_chat_completion_request, {"messages": [USER], name: 1})
    assert error.field == name and "Unrecognized request argument" in error.message


def test_legacy_completions_body():
    request = parse_completion_request({"model": "m", "prompt": "Once upon", "temperature": 0})
    assert request.to_request() == ChatRequest([], 16, Sampling(), prompt="Once upon")
    full = parse_completion_request({"prompt": ["Once"], "max_tokens": 5, "n": 2, "best_of": 2, "seed": 1,
                                     "stop": ["\n"], "logprobs": 3, "echo": False, "top_p": 0.5,
                                     "presence_penalty": 1, "logit_bias": {"5": -1}, "user": "u",
                                     "stream": True, "stream_options": {"include_usage": True}, "suffix": None})
    first, second = full.to_requests()
    assert first == ChatRequest([], 5, Sampling(greedy=False, top_p=0.5, seed=1, presence_penalty=1.0,
                                                logit_bias=((5, -1.0),)), ("\n",), logprobs=3, prompt="Once")
    assert second.sampling.seed == 2 and full.stream and full.include_usage
    assert parse_completion_request({"prompt": "x", "logprobs": 0}).to_request().logprobs == 0


@pytest.mark.parametrize(("fields", "field"), [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": [[1, 2]]}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "suffix": "end"}, "suffix"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ({"prompt": "x", "logprobs": True}, "logprobs"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "messages": [USER]}, "messages"),
    ({"prompt": "x", "tools": [TOOL]}, "tools"),
])
def test_bad_completions_name_the_field(fields, field):
    assert refused(parse_completion_request, fields).field == field


def _sent_by(call) -> dict:
    """The JSON body a client library sends (captured at its HTTP transport), after checking it parses."""
    sent = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(body)
        message = {"role": "assistant", "content": '{"name": "Ada"}'}
        if body.get("tools"):
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": "c1", "type": "function",
                "function": {"name": body["tools"][0]["function"]["name"], "arguments": '{"name": "Ada"}'}}]}
        return httpx.Response(200, json={"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                                         "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    call(httpx.Client(transport=httpx.MockTransport(answer)))
    return sent[-1]


def test_the_bodies_official_clients_send_parse():
    import openai
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    class Person(BaseModel):
        """A person the text names (LangChain sends this as the schema's description)."""

        name: str

    def lc(http):
        return ChatOpenAI(base_url="http://x/v1", api_key="k", model="m", http_client=http, max_retries=0)

    bodies = [
        _sent_by(lambda http: lc(http).invoke("hello")),
        _sent_by(lambda http: lc(http).with_structured_output(Person).invoke("hi")),
        _sent_by(lambda http: lc(http).with_structured_output(Person, method="function_calling").invoke("hi")),
        _sent_by(lambda http: lc(http).with_structured_output(Person, method="json_mode").invoke("hi")),
        _sent_by(lambda http: lc(http).bind_tools([Person], tool_choice="required").invoke("hi")),
        _sent_by(lambda http: lc(http).invoke([("human", "hi"), lc(http).bind_tools([Person]).invoke("hi"),
                                               ToolMessage("done", tool_call_id="c1")])),
        _sent_by(lambda http: openai.OpenAI(base_url="http://x/v1", api_key="k", http_client=http)
                 .chat.completions.parse(model="m", messages=[USER], response_format=Person)),
        _sent_by(lambda http: lc(http).invoke([HumanMessage("hi", name="alice"),
                                               AIMessage("hello", name="research_agent")])),
        _sent_by(lambda http: openai.OpenAI(base_url="http://x/v1", api_key="k", http_client=http)
                 .chat.completions.create(model="m", messages=[USER], n=None, temperature=None, stop=None)),
    ]
    for body in bodies:
        parse_chat_completion_request(body).to_request()
    assert bodies[1]["response_format"]["json_schema"]["strict"] is True
    assert bodies[1]["response_format"]["json_schema"]["schema"]["description"].startswith("A person")
    assert [m.get("name") for m in parse_chat_completion_request(bodies[7]).to_request().messages] == [
        "alice", "research_agent"]
    assert bodies[8]["n"] is None and parse_chat_completion_request(bodies[8]).n == 1
    completion = _sent_by(lambda http: openai.OpenAI(base_url="http://x/v1", api_key="k", http_client=http)
                          .completions.create(model="m", prompt="Once", max_tokens=None, n=None))
    assert completion["max_tokens"] is None and parse_completion_request(completion).to_request().max_new_tokens == 16
    assert bodies[5]["messages"][-1] == {"content": "done", "role": "tool", "tool_call_id": "c1"}
