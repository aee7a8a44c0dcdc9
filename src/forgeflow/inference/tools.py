"""Tool calling through the model's own chat template: OpenAI's `tools` and `tool_choice`, assistant
`tool_calls` and `tool` results in the conversation.

The template renders the tool definitions, past calls and their results, so the model sees tools the
way it was trained to see them. A call is generated under a grammar (inference/grammar.py) built from
the allowed functions' parameter schemas, so it always parses, and is read back into `ToolCall`s.

The format a model writes calls in is read from its template's text. Known: the Hermes format, which
Qwen2.5, Hermes 2/3 and SmolLM3 write (several calls one after another, separated by a newline):

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A template that does not render `tools` takes no tools, tool results or past calls (a 400 naming the
field); one that renders them but writes calls in an unknown format takes no tools either.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from forgeflow.chat import ChatRequest, Tools
from forgeflow.errors import InvalidInput
from forgeflow.inference.grammar import Grammars, json_rule
from forgeflow.inference.runtimes.base import ToolCall


@dataclass(frozen=True)
class CallFormat:
    """How a family of models writes a tool call: a JSON object between two tags."""

    name: str
    open: str
    close: str


HERMES = CallFormat("hermes", "<tool_call>", "</tool_call>")
FORMATS = (HERMES,)
KNOWN_FORMATS = ('Hermes (<tool_call>{"name": ..., "arguments": {...}}</tool_call>, '
                 "written by Qwen2.5, Hermes 2/3 and SmolLM3)")
_PROBE = {"type": "function", "function": {"name": "forgeflow_probe_tool", "description": "probe",
                                           "parameters": {"type": "object", "properties": {}}}}
_NO_TOOLS = ("this model's chat template has no tool support (it does not render `tools`), so it cannot "
             "{what}: use a model whose template does (Qwen2.5, Hermes, SmolLM3)")


class ToolTemplate:
    """What a model's chat template says about tools: whether it renders them, and how calls are written."""

    def __init__(self, tokenizer: Any, grammars: Grammars) -> None:
        self.grammars = grammars
        try:
            source = tokenizer.get_chat_template(None, tools=[_PROBE])
        except Exception:
            source = ""
        self.supported = "tools" in source and _renders_tools(tokenizer)
        self.format = next((f for f in FORMATS if f.open in source and f.close in source), None)
        # a tag that is one special token to llguidance is written as that token (`<tag>`) in the grammar
        self.special_tags = bool(self.format) and all(grammars.is_special(t) for t in (HERMES.open, HERMES.close))

    # -- the request ------------------------------------------------------------------------------
    def check(self, request: ChatRequest) -> None:
        """Refuse what this template cannot take: tools, tool results or past calls without tool support,
        tools in a call format forgeflow cannot read, a tool choice naming no given function."""
        for index, message in enumerate([] if self.supported else request.messages):
            if message.get("role") == "tool":
                raise InvalidInput(_NO_TOOLS.format(what="read tool results"), field=f"messages[{index}].role")
            if message.get("tool_calls"):
                raise InvalidInput(_NO_TOOLS.format(what="read past tool calls"),
                                   field=f"messages[{index}].tool_calls")
        tools = request.tools
        if tools is None:
            return
        if request.prompt is not None:
            raise InvalidInput("tools need a chat (messages); a raw prompt is not rendered through the chat "
                               "template", field="tools")
        if not self.supported:
            raise InvalidInput(_NO_TOOLS.format(what="take tools"), field="tools")
        if self.format is None:
            raise InvalidInput("this model's chat template writes tool calls in a format forgeflow cannot read; "
                               f"known formats: {KNOWN_FORMATS}", field="tools")
        for index, definition in enumerate(tools.definitions):
            if _function(definition).get("parameters") is False:
                raise InvalidInput(f"tools[{index}].function.parameters is `false`, which no arguments can match: "
                                   "send the function's parameter schema (or {} for any arguments)",
                                   field=f"tools[{index}].function.parameters")
        names = [_function(d).get("name") for d in tools.definitions]
        if tools.choice not in ("auto", "required", "none") and tools.choice not in names:
            raise InvalidInput(f"tool_choice names {tools.choice!r}, which is not among the tools "
                               f"({', '.join(map(str, names))})", field="tool_choice")

    def chat(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages as chat templates expect them: a past call's `arguments` as an object, not JSON text."""
        chat = []
        for index, message in enumerate(messages):
            calls = message.get("tool_calls")
            if calls:
                message = {**message, "tool_calls": [_template_call(call, f"messages[{index}].tool_calls[{j}]")
                                                     for j, call in enumerate(calls)]}
            chat.append(message)
        return chat

    # -- generation -------------------------------------------------------------------------------
    def grammar(self, tools: Tools, answer: str | None) -> tuple[str, str | None]:
        """The Lark grammar of a request's output, and the tag a stream holds its text back at (None when
        no call can come). `answer` is the response_format's rule for a plain answer, if any.

        "none" allows a plain answer only, "required" or a named function one call or more (one when
        `parallel` is off), "auto" either: free text, then calls or nothing."""
        assert self.format is not None
        open_, close = self._tag(self.format.open), self._tag(self.format.close)
        rules = f"answer: {answer}\n" if answer else (
            f"TEXT: /(?s:.*)/ & ~/(?s:.*){_regex_escape(self.format.open)}(?s:.*)/\n")
        plain = "answer" if answer else "TEXT"
        if tools.choice == "none":
            return f"start: {plain}\n{rules}", None
        allowed = [d for d in tools.definitions
                   if tools.choice in ("auto", "required") or _function(d).get("name") == tools.choice]
        strict = all(_function(d).get("strict") for d in allowed)
        rules += (f'call: {open_} body\nbody: "\\n" fn "\\n" {close}\n'
                  f"fn: {json_rule({'anyOf': [_call_schema(d) for d in allowed]}, strict=strict)}\n")
        more = ' ("\\n" call)*' if tools.parallel else ""
        if tools.choice != "auto":
            start = f"call{more}"
        elif answer or self.special_tags:
            start = f"{plain} | {'' if answer else 'TEXT '}call{more}"
        else:  # a tag written as text: free text up to its first occurrence (lazily), then the calls
            start = f"TEXT | head body{more}"
            rules += f"head[lazy]: /(?s:.*){_regex_escape(self.format.open)}/\n"
        return f"start: {start}\n{rules}", self.format.open

    def locate(self, tools: Tools) -> str | None:
        """The field of the first function whose parameters llguidance cannot enforce, if any."""
        for index, definition in enumerate(tools.definitions):
            strict = bool(_function(definition).get("strict"))
            if self.grammars.check(f"start: fn\nfn: {json_rule(_call_schema(definition), strict=strict)}\n"):
                return f"tools[{index}].function.parameters"
        return None

    def parse(self, text: str) -> tuple[str, tuple[ToolCall, ...], bool]:
        """The text before the calls, the complete calls, and whether they end cleanly (False when the text
        after them is not a call: one cut short by the token budget)."""
        assert self.format is not None
        start = text.find(self.format.open)
        if start < 0:
            return text, (), True
        head, decoder, calls, pos = text[:start].strip(), json.JSONDecoder(), [], start
        while pos < len(text):
            if not text.startswith(self.format.open, pos):
                return head, tuple(calls), False
            try:
                call, pos = decoder.raw_decode(text, _skip_space(text, pos + len(self.format.open)))
            except (ValueError, RecursionError):  # a model's text nested past the parser's depth: no call either
                return head, tuple(calls), False
            pos = _skip_space(text, pos)
            if not (text.startswith(self.format.close, pos) and isinstance(call, dict)
                    and isinstance(call.get("name"), str) and isinstance(call.get("arguments"), dict)):
                return head, tuple(calls), False
            calls.append(ToolCall(f"call_{secrets.token_hex(12)}", call["name"],
                                  json.dumps(call["arguments"], ensure_ascii=False)))
            pos = _skip_space(text, pos + len(self.format.close))
        return head, tuple(calls), True

    def _tag(self, tag: str) -> str:
        return tag if self.special_tags else json.dumps(tag)


def _renders_tools(tokenizer: Any) -> bool:
    chat = [{"role": "user", "content": "hi"}]
    try:
        rendered = tokenizer.apply_chat_template(chat, tools=[_PROBE], tokenize=False, add_generation_prompt=True)
    except Exception:
        return False
    return isinstance(rendered, str) and _PROBE["function"]["name"] in rendered


def _function(definition: dict[str, Any]) -> dict[str, Any]:
    function = definition.get("function", definition)
    return function if isinstance(function, dict) else {}


def _call_schema(definition: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of one call in the Hermes format: the function's name, then arguments matching its
    `parameters` (an object of any shape when it declares none)."""
    function = _function(definition)
    parameters = function.get("parameters")
    if parameters is None or parameters == {}:
        parameters = {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": function.get("name")}, "arguments": parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def _template_call(call: Any, field: str) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    arguments = call["function"].get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            raise InvalidInput(f"{field}.function.arguments must be a JSON object (as text)",
                               field=f"{field}.function.arguments") from None
    return {**call, "function": {**call["function"], "arguments": arguments}}


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _regex_escape(text: str) -> str:
    """`text` as a literal inside a Lark /regex/ (Rust regex syntax; the slash ends the regex)."""
    return "".join("\\" + c if c in r"\.+*?()|[]{}^$/-#&~" else c for c in text)
