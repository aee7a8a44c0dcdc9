"""What every body on the wire shares: closed pydantic models (a key forgeflow does not take is a 400, never
ignored), the value types of the generation parameters, and the one translation of a validation error into
an `InvalidInput` sentence that starts with the field's path (`messages[0].content[1].type must be ...`).

A validator that knows better than pydantic's message raises `refuse(rule, *at)`: `rule` follows the path,
and `at` extends the path below the value validated (a content part's index and key).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from forgeflow.chat.request import MAX_NEW_TOKENS, MAX_STOPS, STOP_RULE
from forgeflow.errors import InvalidInput

Temperature = Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, strict=True, allow_inf_nan=False)]
TopK = Annotated[int, Field(ge=-1, strict=True)]
Penalty = Annotated[float, Field(ge=-2, le=2, strict=True, allow_inf_nan=False)]
NewTokens = Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS, strict=True)]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1, strict=True)]
Flag = Annotated[bool, Field(strict=True)]
Stop = Annotated[str, Field(strict=True, min_length=1)]
Stops = Stop | Annotated[list[Stop], Field(max_length=MAX_STOPS)]
Text = Annotated[str, Field(strict=True)]
MAX_LOGIT_BIAS = 300

NEW_TOKENS_RULE = f"must be an integer from 1 to {MAX_NEW_TOKENS}"


class Closed(BaseModel):
    """A body part whose every key is known: anything else is refused by name."""

    model_config = ConfigDict(extra="forbid")


def refuse(rule: str, *at: str | int) -> PydanticCustomError:
    """A validation error whose message is `rule`, about the value's sub-path `at` (empty: the value itself)."""
    return PydanticCustomError("forgeflow", rule, {"at": at})


def stops(stop: str | list[str] | None) -> tuple[str, ...]:
    return (stop,) if isinstance(stop, str) else tuple(stop or ())


def check_logit_bias(value: Any) -> tuple[tuple[int, float], ...] | None:
    """OpenAI's logit_bias: an object of token ids (as strings) to a bias from -100 to 100, at most 300 of them."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise refuse("must be an object of token ids (as strings) to a bias from -100 to 100")
    if len(value) > MAX_LOGIT_BIAS:
        raise refuse(f"has {len(value)} entries; at most {MAX_LOGIT_BIAS} are allowed")
    biases = []
    for key, bias in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 10):
            raise refuse("keys must be token ids written as strings of digits, e.g. {\"1234\": -100}", key)
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise refuse("must be a number from -100 to 100", key)
        biases.append((int(key), float(bias)))
    return tuple(biases)


# -- validation errors that name the field ----------------------------------------------------------

_RULES = {  # by the field's own name (or a dotted tail of its path, tried first)
    "temperature": "must be a number >= 0",
    "top_p": "must be a number > 0 and <= 1",
    "top_k": "must be an integer >= -1 (0 or -1: no top-k cut)",
    "do_sample": "must be true or false",
    "max_new_tokens": NEW_TOKENS_RULE,
    "max_tokens": NEW_TOKENS_RULE,
    "max_completion_tokens": NEW_TOKENS_RULE,
    "frequency_penalty": "must be a number from -2 to 2",
    "presence_penalty": "must be a number from -2 to 2",
    "seed": "must be an integer that fits in 64 bits",
    "n": "must be an integer from 1 to 8",
    "logprobs": "must be true or false",
    "top_logprobs": "must be an integer from 0 to 20",
    "content": "must be a string",
    "params": "must be an object",
    "parameters": "must be an object",
    "input_data": "must be an object",
    "model": "must be a string",
    "user": "must be a string",
    "safety_identifier": "must be a string",
    "stream": "must be true or false",
    "stop": STOP_RULE,
    "stream_options": "must be an object",
    "include_usage": "must be true or false",
    "include_obfuscation": "can only be false: forgeflow adds no obfuscation padding to stream events",
    "parallel_tool_calls": "must be true or false",
    "service_tier": "must be auto or default: forgeflow has one service tier",
    "store": "can only be false: forgeflow does not store completions",
    "modalities": 'can only be ["text"]: forgeflow serves text models',
    "return_full_text": "can only be false: forgeflow answers the generated text alone",
    "tool_call_id": "must be a non-empty string",
    "id": "must be a non-empty string",
    "name": "must be 1 to 64 letters, digits, underscores or dashes",
    "input_string.role": "must be one of system, user, assistant",
    "messages.role": "must be one of system, developer, user, assistant, tool",
    "response_format.type": "must be text, json_object or json_schema",
    "tools.type": "must be function",
    "tool_calls.type": "must be function",
    "tool_choice.type": "must be function",
    "tool_choice": 'must be none, auto, required or {"type": "function", "function": {"name": ...}}',
    "schema": "must be a JSON schema (an object)",
    "parameters.parameters": "must be a JSON schema of type object",
    "function.parameters": "must be a JSON schema of type object",
    "arguments": "must be a string",
    "description": "must be a string",
    "strict": "must be true or false",
    "echo": "can only be false: forgeflow does not echo the prompt",
}
_TYPE_RULES = {
    "missing": "is required",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "list_type": "must be a list",
}


def parse(model: type[BaseModel], body: Any, *, list_field: str = "", list_rule: str = "",
          rules: Mapping[str, str] | None = None) -> Any:
    """Validate `body` as `model`, raising InvalidInput that names the wrong field. `list_field` is the list of
    messages (its own rule, `list_rule`); `rules` overrides the rule of a field name for this body."""
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise translate(exc, list_field, list_rule, rules) from None


def translate(exc: ValidationError, list_field: str, list_rule: str,
              rules: Mapping[str, str] | None = None) -> InvalidInput:
    """Turn pydantic's first error into one sentence naming the field path."""
    loc, rule = _describe(exc, list_field, list_rule, rules or {})
    path = _path(loc)
    if not path:
        return InvalidInput(rule if rule != "is not valid" else "the request body must be a JSON object")
    return InvalidInput(f"{path} {rule}", field=path)


def nested(exc: ValidationError, *at: str | int) -> PydanticCustomError:
    """The first error of a part validated by hand inside a validator, as that validator's own error."""
    loc, rule = _describe(exc, "", "", {})
    return refuse(rule, *at, *loc)


def _describe(exc: ValidationError, list_field: str, list_rule: str, rules: Mapping[str, str]) -> tuple[list, str]:
    """The first error's path (as a list) and the rule that follows it."""
    error = exc.errors(include_url=False)[0]
    # Pydantic reports the branch of `X | None` it tried (e.g. "float"); drop those segments.
    loc = [part for part in error["loc"] if isinstance(part, int) or not _is_type_tag(part)]
    if error["type"] == "forgeflow":
        return loc + list(error.get("ctx", {}).get("at", ())), error["msg"]
    if not loc:
        return loc, "is not valid"
    last = loc[-1]
    if last == list_field:
        return loc, list_rule
    if error["type"] == "extra_forbidden":
        return loc, "is not a field forgeflow takes here; remove it"
    if error["type"] == "missing":
        return loc, "is required"
    if isinstance(last, int) and loc[-2:-1] == [list_field]:
        return loc, "must be an object with role and content"
    if isinstance(last, int) and error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return loc, "must be an object"
    if last == "temperature" and "le" in str(error.get("ctx", {})):
        return loc, "must be a number from 0 to 2"
    return loc, _rule(loc, rules) or _TYPE_RULES.get(error["type"], "is not valid")


def _rule(loc: list, rules: Mapping[str, str]) -> str | None:
    names = [str(part) for part in loc if not isinstance(part, int)]
    for start in range(len(names)):
        tail = ".".join(names[start:])
        rule = rules.get(tail) or _RULES.get(tail)
        if rule:
            return rule
    return None


def known_fields(model: type[BaseModel], data: Any, unsupported: Mapping[str, str], unknown_rule: str) -> Any:
    """`data` without the null fields of `unsupported` (OpenAI's "not set"); a key the model does not take is
    refused: one of `unsupported` with its reason, any other with `unknown_rule` and the names it takes."""
    if not isinstance(data, dict):
        return data
    for name, value in data.items():
        if name in model.model_fields:
            continue
        if name in unsupported:
            if value is not None:
                raise refuse(f"is not supported by forgeflow: {unsupported[name]}", name)
            continue
        raise refuse(f"{unknown_rule}. Taken: {', '.join(model.model_fields)}", name)
    return {k: v for k, v in data.items() if k in model.model_fields}


def _is_type_tag(part: Any) -> bool:
    return part in {"float", "int", "bool", "str", "dict[str,any]"} or (
        isinstance(part, str) and ("[" in part or part.startswith(("constrained-", "literal[", "function-")))
    )


def _path(loc: list) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
