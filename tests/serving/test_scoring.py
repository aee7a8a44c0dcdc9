from __future__ import annotations

import pytest

from forgeflow.errors import InvalidInput
from forgeflow.serving.scoring import parse_chat_completion_request, parse_score_request

USER = {"role": "user", "content": "Who founded Microsoft?"}


def body(messages=None, **parameters):
    return {"input_data": {"input_string": [USER] if messages is None else messages, "parameters": parameters}}


def test_walkthrough_body_parses():
    request = parse_score_request(
        {**body(temperature=0.7, top_p=0.9, do_sample=True, max_new_tokens=128), "params": {"x": 1}}
    )
    assert request.messages == [USER]
    assert request.generation_kwargs() == {"temperature": 0.7, "top_p": 0.9, "do_sample": True, "max_new_tokens": 128}


def test_defaults_and_unknown_keys_are_ignored():
    request = parse_score_request({"input_data": {"input_string": [USER], "parameters": {"return_full_text": False}},
                                   "extra": True})
    assert request.generation_kwargs(default_max_new_tokens=64) == {
        "temperature": None, "top_p": None, "do_sample": None, "max_new_tokens": 64}


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
    assert request.chat == [USER]
    assert request.generation_kwargs()["max_new_tokens"] == 9
    assert request.generation_kwargs()["do_sample"] is False
    with pytest.raises(InvalidInput, match=r"^messages must be a non-empty list") as caught:
        parse_chat_completion_request({"messages": []})
    assert caught.value.field == "messages"
    with pytest.raises(InvalidInput, match=r"^temperature must be a number from 0 to 2"):
        parse_chat_completion_request({"messages": [USER], "temperature": 2.5})
    with pytest.raises(InvalidInput, match=r"^messages\[0\]\.role must be one of"):
        parse_chat_completion_request({"messages": [{"role": "tool", "content": "x"}]})
