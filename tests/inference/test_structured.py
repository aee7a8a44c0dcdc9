"""Constrained decoding and tools, on both runtimes: a response_format's output parses and matches its schema,
a required or named tool choice yields valid calls, "none" and "auto" behave as OpenAI's, and what a model or
llguidance cannot honour is a 400 naming the field, raised when the request is queued."""

from __future__ import annotations

import json

import jsonschema
import pytest
from tiny import TOOLS_CHAT_TEMPLATE

from forgeflow.chat import ChatRequest, OutputFormat, Sampling, Tools
from forgeflow.errors import InvalidInput
from forgeflow.inference.runtimes.base import TokenStream
from forgeflow.inference.runtimes.prepare import RequestPreparer

CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "days": {"type": "integer", "minimum": 0, "maximum": 99},
        "sunny": {"type": "boolean"},
        "unit": {"enum": ["C", "F"]},
    },
    "required": ["city", "days", "sunny", "unit"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                                       "required": ["zone"], "additionalProperties": False}}}
PARAMETERS = {f["function"]["name"]: f["function"]["parameters"] for f in (WEATHER, CLOCK)}


def ask(runtime, **fields) -> ChatRequest:
    fields.setdefault("max_new_tokens", 200)
    return ChatRequest(fields.pop("messages", CHAT), **fields)


def tag_id(runtime) -> int:
    return runtime.tokenizer.convert_tokens_to_ids("<tool_call>")


def test_json_schema_output_parses_and_matches(runtime):
    result = runtime.generate(ask(runtime, output=OutputFormat("json_schema", SCHEMA, "weather", strict=True)))
    assert result.finish_reason == "stop"
    jsonschema.validate(json.loads(result.text), SCHEMA)
    lenient = runtime.generate(ask(runtime, output=OutputFormat("json_schema", SCHEMA, "weather", strict=False)))
    jsonschema.validate(json.loads(lenient.text), SCHEMA)


def test_json_object_output_is_an_object_even_against_the_models_wish(runtime):
    """A huge bias on `}` cannot make the answer start with it: the grammar forces `{` first, then the bias
    closes the object at once."""
    close = runtime.tokenizer.convert_tokens_to_ids("}")
    result = runtime.generate(ask(runtime, output=OutputFormat("json_object"),
                                  sampling=Sampling(logit_bias=((close, 100.0),))))
    assert result.text == "{}" and result.finish_reason == "stop"
    free = runtime.generate(ask(runtime, output=OutputFormat("json_object"), max_new_tokens=300))
    assert isinstance(json.loads(free.text), dict)


def test_a_budget_that_runs_out_mid_json_is_length(runtime):
    result = runtime.generate(ask(runtime, output=OutputFormat("json_schema", SCHEMA, "weather", strict=True),
                                  max_new_tokens=5))
    assert result.finish_reason == "length" and result.completion_tokens == 5
    with pytest.raises(ValueError):
        json.loads(result.text)


def test_a_schema_llguidance_cannot_enforce_is_refused_when_queued(runtime):
    odd = {"type": "object", "properties": {"day": {"type": "string", "format": "lunar-date"}}}
    with pytest.raises(InvalidInput, match="lunar-date") as refused:
        runtime.stream(ask(runtime, output=OutputFormat("json_schema", odd, "odd", strict=True)))
    assert refused.value.field == "response_format"
    # not strict: an unsupported keyword is ignored, the rest still enforced
    assert isinstance(json.loads(runtime.generate(ask(runtime, output=OutputFormat(
        "json_schema", odd, "odd", strict=False), max_new_tokens=300)).text), dict)
    with pytest.raises(InvalidInput) as bad_tool:
        runtime.stream(ask(runtime, tools=Tools((WEATHER, {"type": "function", "function": {
            "name": "broken", "parameters": {"type": "frobnicate"}}}), "required")))
    assert bad_tool.value.field == "tools[1].function.parameters"


def test_a_schema_that_matches_nothing_is_refused_by_name(transformers_runtime):
    """JSON schema `false` is refused as such, strict or not (not compiled into a keyword llguidance lacks, nor
    leniently into "anything")."""
    for strict in (True, False):
        unsatisfiable = OutputFormat("json_schema", False, "n", strict)
        with pytest.raises(InvalidInput, match="`false`, which no answer can match") as refused:
            transformers_runtime.stream(ask(transformers_runtime, output=unsatisfiable))
        assert refused.value.field == "response_format"
    nothing = {"type": "function", "function": {"name": "never", "parameters": False}}
    with pytest.raises(InvalidInput, match="`false`") as tool:
        transformers_runtime.stream(ask(transformers_runtime, tools=Tools((WEATHER, nothing), "auto")))
    assert tool.value.field == "tools[1].function.parameters"


def test_a_schema_no_answer_can_satisfy_is_a_400_not_a_failed_generation(runtime):
    """A schema that compiles but recurses without end is refused naming the field, when queued or at the step
    where the grammar gives out; never a generation failure (a 5xx)."""
    for schema in ({"$ref": "#"}, {"$ref": "#/definitions/a", "definitions": {"a": {"$ref": "#/definitions/a"}}},
                   {"type": "object", "properties": {"a": {"$ref": "#/properties/a"}}, "required": ["a"]}):
        with pytest.raises(InvalidInput) as refused:
            runtime.generate(ask(runtime, output=OutputFormat("json_schema", schema, "loop", strict=True)))
        assert refused.value.field == "response_format", schema


def test_required_tool_choice_yields_valid_calls(runtime):
    result = runtime.generate(ask(runtime, tools=Tools((WEATHER, CLOCK), "required")))
    assert result.finish_reason == "tool_calls" and result.tool_calls and result.text == ""
    for call in result.tool_calls:
        assert call.id.startswith("call_") and call.name in PARAMETERS
        jsonschema.validate(json.loads(call.arguments), PARAMETERS[call.name])
    assert len({call.id for call in result.tool_calls}) == len(result.tool_calls)


def test_a_named_function_is_the_one_called(runtime):
    for name in PARAMETERS:
        result = runtime.generate(ask(runtime, tools=Tools((WEATHER, CLOCK), name, parallel=False)))
        assert result.finish_reason == "tool_calls"
        assert [call.name for call in result.tool_calls] == [name]
        jsonschema.validate(json.loads(result.tool_calls[0].arguments), PARAMETERS[name])


def test_auto_calls_or_answers_and_none_never_calls(runtime):
    tools = Tools((WEATHER, CLOCK), "auto")
    called = runtime.generate(ask(runtime, tools=tools, sampling=Sampling(logit_bias=((tag_id(runtime), 100.0),))))
    assert called.finish_reason == "tool_calls" and called.tool_calls
    answered = runtime.generate(ask(runtime, tools=tools, max_new_tokens=20,
                                    sampling=Sampling(logit_bias=((tag_id(runtime), -100.0),))))
    assert answered.tool_calls == () and answered.finish_reason == "length" and answered.text
    never = runtime.generate(ask(runtime, tools=Tools((WEATHER, CLOCK), "none"), max_new_tokens=20,
                                 sampling=Sampling(logit_bias=((tag_id(runtime), 100.0),))))
    assert never.tool_calls == () and "<tool_call>" not in never.text and never.finish_reason == "length"
    shaped = runtime.generate(ask(runtime, tools=tools, output=OutputFormat("json_schema", SCHEMA, "w", strict=True),
                                  sampling=Sampling(logit_bias=((tag_id(runtime), -100.0),))))
    jsonschema.validate(json.loads(shaped.text), SCHEMA)  # auto's plain answer follows the response_format


def test_tool_calls_come_only_in_the_final_event(runtime):
    stream = runtime.stream(ask(runtime, tools=Tools((WEATHER, CLOCK), "required")))
    events = list(stream)
    assert all(e.result is None and "<" not in e.text for e in events[:-1])
    result = events[-1].result
    assert result.finish_reason == "tool_calls" and result.tool_calls
    assert "".join(e.text for e in events) == result.text == ""


def test_a_conversation_with_calls_and_results_renders_through_the_template(runtime):
    messages = [*CHAT,
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]
    prompt = runtime.tokenizer.decode(runtime.requests.prepare(ask(runtime, messages=messages)).prompt)
    assert '{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}' in prompt
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    result = runtime.generate(ask(runtime, messages=messages, tools=Tools((WEATHER,), "auto"), max_new_tokens=10))
    assert result.completion_tokens > 0
    broken = [*messages[:1], {**messages[1], "tool_calls": [{"id": "c", "type": "function",
                                                              "function": {"name": "x", "arguments": "{oops"}}]}]
    with pytest.raises(InvalidInput) as refused:
        runtime.stream(ask(runtime, messages=broken))
    assert refused.value.field == "messages[1].tool_calls[0].function.arguments"


@pytest.fixture(scope="module")
def plain_model(tiny_model_dir):
    """The tiny model as built by default: a ChatML template that does not render tools."""
    from forgeflow.inference.generation import ChatGenerator

    generator = ChatGenerator(tiny_model_dir)
    yield generator
    generator.close()


def test_a_template_without_tool_support_refuses_tools(plain_model):
    with pytest.raises(InvalidInput, match="no tool support") as refused:
        plain_model.stream(ChatRequest(CHAT, tools=Tools((WEATHER,), "auto")))
    assert refused.value.field == "tools"
    with pytest.raises(InvalidInput, match="no tool support") as none_too:
        plain_model.stream(ChatRequest(CHAT, tools=Tools((WEATHER,), "none")))
    assert none_too.value.field == "tools"
    result = [*CHAT, {"role": "tool", "tool_call_id": "c", "content": "21 C"}]
    with pytest.raises(InvalidInput) as tool_turn:
        plain_model.stream(ChatRequest(result))
    assert tool_turn.value.field == "messages[1].role"
    call = [*CHAT, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}]
    with pytest.raises(InvalidInput) as past_call:
        plain_model.stream(ChatRequest(call))
    assert past_call.value.field == "messages[1].tool_calls"


def test_an_unknown_call_format_is_refused_naming_the_known_ones(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = ("{% if tools %}Functions: {{ tools | tojson }}. Answer with "
                               "{\"function\": ..., \"parameters\": ...}\n{% endif %}"
                               "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    preparer = RequestPreparer(tokenizer, max_positions=512, vocab_size=len(tokenizer), eos_ids=[2])
    assert preparer.tools.supported and preparer.tools.format is None
    with pytest.raises(InvalidInput, match="known formats: Hermes") as refused:
        preparer.prepare(ChatRequest(CHAT, tools=Tools((WEATHER,), "required")))
    assert refused.value.field == "tools"


def test_tags_written_as_text_are_matched_as_text(tiny_model_dir):
    """A tokenizer without <tool_call> tokens: the grammar matches the tags as text, free text may come first
    (auto), and a call must be one of the functions with valid arguments."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = TOOLS_CHAT_TEMPLATE
    preparer = RequestPreparer(tokenizer, max_positions=2048, vocab_size=len(tokenizer), eos_ids=[2])
    assert preparer.tools.supported and not preparer.tools.special_tags
    call = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'

    def accepts(choice: str, text: str) -> bool:
        lark, _tag = preparer.tools.grammar(Tools((WEATHER, CLOCK), choice), None)
        matcher = preparer.grammars.matcher(lark, field="tools")
        try:
            for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
                matcher.consume(token)
        except RuntimeError:
            return False
        return bool(matcher.allowed()[2])  # the end of the answer may come now

    assert accepts("auto", "Let me look. " + call) and accepts("auto", "It is sunny.")
    assert accepts("required", call + "\n" + call) and not accepts("required", "Let me look. " + call)
    assert not accepts("get_weather", call) and not accepts("none", call) and accepts("none", "It is sunny.")
    assert not accepts("required", call.replace('"UTC"', '"PST"'))
    assert preparer.tools.parse("Let me look. " + call)[0] == "Let me look."
    deep = "<tool_call>\n" + "[" * 100_000  # a model that writes brackets to its last token: text, no call
    assert preparer.tools.parse("Hm. " + deep) == ("Hm.", (), False)


def test_streams_hold_back_a_tag_being_written(transformers_runtime):
    pieces = ["Sure", ",", " <", "tool", "_call>", "\n", '{"name": "get_time", "arguments": {"zone": "UTC"}}',
              "\n", "</tool_call>"]
    steps = [(i, None, None) for i in range(len(pieces) - 1)] + [(len(pieces) - 1, "stop", None)]
    stream = TokenStream(steps, lambda ids: "".join(pieces[i] for i in ids), 3, [], tool_tag="<tool_call>",
                         read_calls=transformers_runtime.requests.tools.parse)
    deltas = [e.text for e in stream]
    assert "".join(deltas) == stream.result.text == "Sure," and not any("<" in d for d in deltas)
    assert stream.result.finish_reason == "tool_calls"
    assert [(c.name, json.loads(c.arguments)) for c in stream.result.tool_calls] == [("get_time", {"zone": "UTC"})]


def test_a_stop_string_never_cuts_a_call(runtime):
    """Stop strings apply to the text before the tool tag: "\\n" cannot cut the Hermes `<tool_call>\\n`, and no
    markup reaches the text or the stream."""
    stream = runtime.stream(ask(runtime, tools=Tools((WEATHER, CLOCK), "required"), stop=("\n", "}")))
    events = list(stream)
    result = events[-1].result
    assert result.finish_reason == "tool_calls" and result.tool_calls and result.text == ""
    assert "".join(e.text for e in events) == ""
    for call in result.tool_calls:
        jsonschema.validate(json.loads(call.arguments), PARAMETERS[call.name])


def test_a_budget_that_runs_out_mid_call_keeps_the_complete_calls(runtime):
    """The end of the answer banned, the model writes call after call until its budget runs out: the complete calls
    come back, the cut one and its markup do not, and the finish reason says the answer was cut."""
    never_end = Sampling(logit_bias=tuple((eos, -100.0) for eos in runtime.eos_token_ids))
    tools = Tools((WEATHER, CLOCK), "required")
    long = runtime.generate(ask(runtime, tools=tools, sampling=never_end, max_new_tokens=120))
    assert long.finish_reason == "length" and len(long.tool_calls) >= 2 and long.text == ""
    for call in long.tool_calls:
        jsonschema.validate(json.loads(call.arguments), PARAMETERS[call.name])
    events = list(runtime.stream(ask(runtime, tools=tools, sampling=never_end, max_new_tokens=6)))
    cut = events[-1].result
    assert cut.finish_reason == "length" and cut.tool_calls == () and cut.text == ""
    assert "".join(e.text for e in events) == ""


def scripted(pieces: list[str], stop=(), parse=None) -> TokenStream:
    """A stream over `pieces`, one token each, the last one ending the answer (with reason "length")."""
    steps = [(i, None, None) for i in range(len(pieces) - 1)] + [(len(pieces) - 1, "length", None)]
    return TokenStream(steps, lambda ids: "".join(pieces[i] for i in ids), 3, list(stop), tool_tag="<tool_call>",
                       read_calls=parse)


def test_stop_strings_and_cut_calls_in_the_stream(transformers_runtime):
    parse = transformers_runtime.requests.tools.parse
    call = ["<tool_call>", "\n", '{"name": "get_time", "arguments": {"zone": "UTC"}}', "\n", "</tool_call>"]
    # a stop string before the tag ends the answer there, with no call
    stream = scripted(["Sure", "\n", *call], stop=["\n"], parse=parse)
    assert "".join(e.text for e in stream) == stream.result.text == "Sure" and stream.result.finish_reason == "stop"
    # a stop string that the tag is still being written over waits for it; text that is not the tag is cut
    stream = scripted(["Hi", " <", "tool", "_call>", *call[1:], "\n"], stop=[" <"], parse=parse)
    assert [e.text for e in stream] and stream.result.text == "Hi" and stream.result.finish_reason == "tool_calls"
    stream = scripted(["Hi", " <", "b>", " there"], stop=[" <"], parse=parse)
    assert "".join(e.text for e in stream) == stream.result.text == "Hi" and stream.result.finish_reason == "stop"
    # the budget cuts the second of two calls: the first comes back, finish "length", no markup as text
    stream = scripted([*call, "\n", "<tool_call>", "\n", '{"name'], parse=parse)
    deltas = [e.text for e in stream]
    assert "".join(deltas) == stream.result.text == "" and stream.result.finish_reason == "length"
    assert [(c.name, json.loads(c.arguments)) for c in stream.result.tool_calls] == [("get_time", {"zone": "UTC"})]
    # cut after a call's arguments, before its closing tag: that call is incomplete
    stream = scripted([*call, "\n", "<tool_call>", "\n", call[2], "\n"], parse=parse)
    assert stream.run().finish_reason == "length" and len(stream.result.tool_calls) == 1
    # cut right after a complete call: nothing is missing
    stream = scripted([*call, "\n"], parse=parse)
    assert stream.run().finish_reason == "tool_calls" and len(stream.result.tool_calls) == 1
