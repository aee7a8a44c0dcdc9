"""The chat contract: the Azure and OpenAI bodies validate naming the field, each converts into the one
ChatRequest, plain Python arguments build the same request, and clients build the scoring body."""

from __future__ import annotations

import pytest

from forgeflow.chat import (
    DEFAULT_MAX_NEW_TOKENS,
    ChatRequest,
    Sampling,
    chat_request,
    parse_chat_completion_request,
    parse_score_request,
    score_body,
)
from forgeflow.errors import InvalidInput

USER = {"role": "user", "content": "Who founded Microsoft?"}


def body(messages=None, **parameters):
    return {"input_data": {"input_string": [USER] if messages is None else messages, "parameters": parameters}}


def test_walkthrough_body_parses():
    request = parse_score_request(
        {**body(temperature=0.7, top_p=0.9, do_sample=True, max_new_tokens=128), "params": {"x": 1}}
    ).to_request()
    assert request == ChatRequest([USER], 128, Sampling(greedy=False, temperature=0.7, top_p=0.9))


def test_defaults_and_unknown_keys_are_ignored():
    parsed = parse_score_request({"input_data": {"input_string": [{**USER, "name": "x"}],
                                                 "parameters": {"return_full_text": False}}, "extra": True})
    assert parsed.to_request() == ChatRequest([USER], DEFAULT_MAX_NEW_TOKENS, Sampling())
    assert parsed.to_request(default_max_new_tokens=64).max_new_tokens == 64


@pytest.mark.parametrize(("parameters", "sampling"), [
    ({"temperature": 0.7}, Sampling(greedy=False, temperature=0.7)),
    ({"temperature": 0.7, "do_sample": False}, Sampling()),
    ({"temperature": 0, "do_sample": True, "top_p": 0.5}, Sampling()),
    ({"do_sample": True, "top_p": 0.5}, Sampling(greedy=False, top_p=0.5)),
])
def test_sampling_rule_is_the_same_for_the_body_and_plain_arguments(parameters, sampling):
    assert parse_score_request(body(**parameters)).to_request().sampling == sampling
    assert chat_request([USER], **parameters).sampling == sampling


@pytest.mark.parametrize(
    ("payload", "message", "field"),
    [
        ([], "the request body must be a JSON object", None),
        ({}, "input_data is required", "input_data"),
        ({"params": {}}, "input_data is required", "input_data"),
        ({"input_data": "hi"}, "input_data must be an object", "input_data"),
        ({"input_data": {}}, "input_data.input_string must be a non-empty list of messages", "input_data.input_string"),
        (body([]), "input_data.input_string must be a non-empty list of messages", "input_data.input_string"),
        (body("hello"), "input_data.input_string must be a non-empty list of messages", "input_data.input_string"),
        (body([USER, {"role": "bot", "content": "x"}]),
         "input_data.input_string[1].role must be one of system, user, assistant", "input_data.input_string[1].role"),
        (body([USER, 7]), "input_data.input_string[1] must be an object with role and content",
         "input_data.input_string[1]"),
        (body([{"role": "user"}]), "input_data.input_string[0].content is required", "input_data.input_string[0].content"),
        (body([{"role": "user", "content": 3}]), "input_data.input_string[0].content must be a string",
         "input_data.input_string[0].content"),
        (body(temperature=-0.1), "input_data.parameters.temperature must be a number >= 0",
         "input_data.parameters.temperature"),
        (body(temperature="hot"), "input_data.parameters.temperature must be a number >= 0",
         "input_data.parameters.temperature"),
        (body(top_p=0), "input_data.parameters.top_p must be a number > 0 and <= 1", "input_data.parameters.top_p"),
        (body(top_p=1.5), "input_data.parameters.top_p must be a number > 0 and <= 1", "input_data.parameters.top_p"),
        (body(max_new_tokens=0), "input_data.parameters.max_new_tokens must be an integer from 1 to 4096",
         "input_data.parameters.max_new_tokens"),
        (body(max_new_tokens=4097), "input_data.parameters.max_new_tokens must be an integer from 1 to 4096",
         "input_data.parameters.max_new_tokens"),
        (body(max_new_tokens=1.5), "input_data.parameters.max_new_tokens must be an integer from 1 to 4096",
         "input_data.parameters.max_new_tokens"),
        (body(do_sample="yes"), "input_data.parameters.do_sample must be true or false",
         "input_data.parameters.do_sample"),
        ({"input_data": {"input_string": [USER], "parameters": [1]}}, "input_data.parameters must be an object",
         "input_data.parameters"),
        ({**body(), "params": 3}, "params must be an object", "params"),
    ],
)
def test_errors_name_the_field(payload, message, field):
    with pytest.raises(InvalidInput) as caught:
        parse_score_request(payload)
    assert caught.value.message == message
    assert caught.value.field == field
    assert "pydantic" not in caught.value.message and "validation error" not in caught.value.message


def test_openai_chat_body():
    request = parse_chat_completion_request({"model": "m", "messages": [USER], "max_tokens": 9, "temperature": 0})
    assert request.to_request() == ChatRequest([USER], 9, Sampling())
    sampled = parse_chat_completion_request({"messages": [USER], "max_tokens": 9, "max_completion_tokens": 5,
                                             "seed": 3, "stop": "\n"}).to_request()
    assert sampled == ChatRequest([USER], 5, Sampling(greedy=False, temperature=1.0, seed=3), ("\n",))
    assert parse_chat_completion_request({"messages": [USER], "stop": ["a", "b"]}).to_request().stop == ("a", "b")
    assert parse_chat_completion_request({"messages": [USER]}).to_request().max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    with pytest.raises(InvalidInput, match=r"^messages must be a non-empty list") as caught:
        parse_chat_completion_request({"messages": []})
    assert caught.value.field == "messages"
    with pytest.raises(InvalidInput, match=r"^temperature must be a number from 0 to 2"):
        parse_chat_completion_request({"messages": [USER], "temperature": 2.5})
    with pytest.raises(InvalidInput, match=r"^messages\[0\]\.role must be one of"):
        parse_chat_completion_request({"messages": [{"role": "tool", "content": "x"}]})


def test_plain_arguments_build_the_request():
    assert chat_request([USER]) == ChatRequest([USER], DEFAULT_MAX_NEW_TOKENS, Sampling())
    assert chat_request([{**USER, "extra": 1}], max_new_tokens=5, stop="x", seed=1).stop == ("x",)
    for bad, field in (([], "messages"), ("hi", "messages"), ([7], "messages[0]"),
                       ([{"role": "robot", "content": "x"}], "messages[0].role"),
                       ([{"role": "user", "content": None}], "messages[0].content")):
        with pytest.raises(InvalidInput) as caught:
            chat_request(bad)
        assert caught.value.field == field and caught.value.message.startswith(field)
    with pytest.raises(InvalidInput, match="max_new_tokens must be at least 1"):
        chat_request([USER], max_new_tokens=0)
    with pytest.raises(InvalidInput, match="stop must be a non-empty string or a list of at most 4"):
        chat_request([USER], stop=["a"] * 5)


def test_score_body_round_trips_through_the_parser():
    sent = score_body([USER], temperature=0.2, max_new_tokens=64)
    assert sent == {"input_data": {"input_string": [USER], "parameters": {"temperature": 0.2, "max_new_tokens": 64}}}
    assert parse_score_request(sent).to_request() == ChatRequest([USER], 64, Sampling(greedy=False, temperature=0.2))
    assert score_body([USER])["input_data"]["parameters"] == {}
