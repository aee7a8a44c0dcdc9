"""The chat contract: the Azure scoring body validates naming the field and converts into the one ChatRequest,
plain Python arguments build the same request, and clients build the scoring body. (OpenAI's bodies:
test_chat_contract_openai.py.)"""

from __future__ import annotations

import pytest

from forgeflow.chat import (
    DEFAULT_MAX_NEW_TOKENS,
    ChatRequest,
    Sampling,
    chat_request,
    parse_score_request,
    per_choice,
    score_body,
)
from forgeflow.errors import InvalidInput

USER = {"role": "user", "content": "Who founded Microsoft?"}


def body(messages=None, **parameters):
    return {"input_data": {"input_string": [USER] if messages is None else messages, "parameters": parameters}}


def test_walkthrough_body_parses():
    request = parse_score_request(
        {**body(temperature=0.7, top_p=0.9, do_sample=True, max_new_tokens=128), "params": {}}
    ).to_request()
    assert request == ChatRequest([USER], 128, Sampling(greedy=False, temperature=0.7, top_p=0.9))
    # the walkthrough's integrate_with_promptflow.py sends exactly this
    seed = {"input_data": {"input_string": [USER], "parameters": {"temperature": 0.7, "max_new_tokens": 128}}}
    assert parse_score_request(seed).to_request() == ChatRequest([USER], 128, Sampling(greedy=False, temperature=0.7))


def test_defaults_and_every_parameter_forgeflow_honours():
    parsed = parse_score_request({"input_data": {"input_string": [USER], "parameters": {"return_full_text": False}}})
    assert parsed.to_request() == ChatRequest([USER], DEFAULT_MAX_NEW_TOKENS, Sampling())
    assert parsed.to_request(default_max_new_tokens=64).max_new_tokens == 64
    everything = body(temperature=0.5, top_p=0.8, top_k=20, do_sample=True, max_tokens=32, seed=7, stop=["\n"],
                      frequency_penalty=0.5, presence_penalty=-0.5, return_full_text=False)
    assert parse_score_request(everything).to_request() == ChatRequest(
        [USER], 32, Sampling(greedy=False, temperature=0.5, top_p=0.8, seed=7, top_k=20, frequency_penalty=0.5,
                             presence_penalty=-0.5), ("\n",))


def test_top_level_params_are_generation_parameters_too():
    """Azure's MLflow-served chat models take their inference parameters in `params`: so does forgeflow, merged
    with input_data.parameters; a name set in both must agree."""
    merged = parse_score_request({**body(temperature=0.7), "params": {"max_new_tokens": 12, "top_p": 0.5}})
    assert merged.to_request() == ChatRequest([USER], 12, Sampling(greedy=False, temperature=0.7, top_p=0.5))
    alone = parse_score_request({**body(), "params": {"temperature": 0.3, "max_tokens": 9}}).to_request()
    assert alone == ChatRequest([USER], 9, Sampling(greedy=False, temperature=0.3))
    agreeing = parse_score_request({**body(temperature=0.7, max_tokens=5), "params": {"temperature": 0.7,
                                                                                      "max_new_tokens": 5}})
    assert agreeing.to_request().max_new_tokens == 5
    for params, parameters, field in (({"temperature": 0.2}, {"temperature": 0.7}, "params.temperature"),
                                      ({"max_new_tokens": 9}, {"max_tokens": 5}, "params.max_new_tokens"),
                                      ({"max_tokens": 9}, {"max_new_tokens": 5}, "params.max_tokens")):
        with pytest.raises(InvalidInput) as caught:
            parse_score_request({**body(**parameters), "params": params})
        assert caught.value.field == field and "set it in one of them" in caught.value.message


@pytest.mark.parametrize(("payload", "field"), [
    (body(repetition_penalty=1.1), "input_data.parameters.repetition_penalty"),
    (body(num_beams=2), "input_data.parameters.num_beams"),
    (body(return_full_text=True), "input_data.parameters.return_full_text"),
    (body(max_tokens=5, max_new_tokens=6), "input_data.parameters.max_tokens"),
    ({**body(), "params": {"ignore_eos": True}}, "params.ignore_eos"),
    ({**body(), "params": {"temperature": -1}}, "params.temperature"),
    ({**body(), "extra": True}, "extra"),
    ({"input_data": {"input_string": [USER], "columns": ["a"]}}, "input_data.columns"),
    (body([{**USER, "name": "dana"}]), "input_data.input_string[0].name"),
])
def test_what_forgeflow_cannot_honour_is_a_400_naming_it(payload, field):
    with pytest.raises(InvalidInput) as caught:
        parse_score_request(payload)
    assert caught.value.field == field and caught.value.message.startswith(field)


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
    stopped = score_body([USER], stop=["\n"], seed=3, top_k=None)
    assert stopped["input_data"]["parameters"] == {"stop": ["\n"], "seed": 3}
    assert parse_score_request(stopped).to_request().stop == ("\n",)


def test_choices_sample_with_their_own_seeds():
    request = chat_request([USER], temperature=1.0, seed=5)
    assert [r.sampling.seed for r in per_choice(request, 3)] == [5, 6, 7]
    assert per_choice(chat_request([USER], temperature=1.0), 2) == [chat_request([USER], temperature=1.0)] * 2
    wrapped = per_choice(chat_request([USER], temperature=1.0, seed=2**63 - 1), 2)
    assert [r.sampling.seed for r in wrapped] == [2**63 - 1, -(2**63)]
