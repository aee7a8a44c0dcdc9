"""Chat calls of `llm` nodes and `.prompty` files over a connection.

- `open_ai`: POST {base_url}/chat/completions (any OpenAI-compatible server, including a forgeflow
  endpoint's `openai_base_url`), `Authorization: Bearer <api_key>`.
- `azure_open_ai`: POST {api_base}/openai/deployments/{deployment}/chat/completions?api-version=...,
  `api-key` header.
- `custom` with an `endpoint`: an Azure ML / forgeflow scoring URI, `{"input_data": {"input_string":
  messages, "parameters": ...}}` -> `{"output": text}`, `Authorization: Bearer <key>`.

Every API parameter of Prompt flow's llm tool (PARAMETERS) is sent, or refused by its input's name, never
dropped: an OpenAI-style server gets them all (and judges them); the scoring body takes those in SCORE_NAMES and
refuses the rest (NOT_SCORED). An llm node answers one text, so `n` above 1 is refused on every connection.
With `tools` (or the older `functions`) the answer is the assistant's message, `tool_calls` included, as Prompt
flow's llm tool gives it, and the call is not streamed. 429/502/503/504 answers are retried with exponential
backoff, honouring `Retry-After`.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from forgeflow.chat import score_body
from forgeflow.errors import InvalidInput, UpstreamError

RETRY_STATUS = (429, 502, 503, 504)
MAX_ATTEMPTS = 4
BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
REQUEST_TIMEOUT_S = 300.0
PARAMETERS = ("max_tokens", "temperature", "top_p", "top_k", "stop", "presence_penalty", "frequency_penalty",
              "seed", "response_format", "logit_bias", "user", "n", "tools", "tool_choice", "functions",
              "function_call")
SETTINGS = ("model", "deployment_name", "stream", "connection", "api")
SCORE_NAMES = {  # an input the scoring body takes -> its name in input_data.parameters
    "max_tokens": "max_new_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
    "seed": "seed", "stop": "stop", "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
}
_TO_V1 = "use an open_ai connection whose base_url is the endpoint's openai_base_url (its /v1), which takes it"
NOT_SCORED = {  # an input the scoring body has no place for -> why, and what to do instead
    "response_format": f"the scoring body answers plain text only; {_TO_V1}",
    "tools": f"the scoring body cannot offer tools; {_TO_V1}",
    "tool_choice": f"the scoring body cannot offer tools; {_TO_V1}",
    "functions": f"the scoring body cannot offer functions; {_TO_V1} as tools",
    "function_call": f"the scoring body cannot offer functions; {_TO_V1} as tool_choice",
    "logit_bias": f"the scoring body has no logit_bias; {_TO_V1}",
    "user": "the scoring body has no place for an end user's id; remove it",
}
_MESSAGE_ANSWER = ("tools", "functions")  # with these the answer is the assistant's message, not its text
_INTEGERS = ("max_tokens", "n", "seed", "top_k")
_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_JSON = {"stop": "[", "response_format": "{", "logit_bias": "{", "tools": "[", "tool_choice": "{", "functions": "[",
         "function_call": "{"}  # inputs written as JSON in a string, by how that JSON starts
_client: httpx.Client | None = None
_client_lock = threading.Lock()


def client() -> httpx.Client:
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = httpx.Client(timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0))
    return _client


def _field(at: str, key: str) -> str:
    """An input's name as errors give it: `NODE.inputs.KEY` for an llm node."""
    return f"{at}.{key}" if at else key


def _coerce(key: str, value: Any, at: str = "") -> Any:
    """Prompt flow DAGs often write numbers as strings ('128', '0.2', ''); read them as values."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text == "" or text.lower() in ("none", "null"):
        return None
    field = _field(at, key)
    if key in _INTEGERS:
        if key == "max_tokens" and text.lower() == "inf":
            return None  # Prompt flow's "no limit": the server's default length
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
            if number.is_integer():
                return int(number)
        except (ValueError, OverflowError):
            pass
        raise InvalidInput(f"{field} must be an integer, got {value!r}", field=field)
    if key in _NUMBERS:
        try:
            return float(text)
        except ValueError:
            raise InvalidInput(f"{field} must be a number, got {value!r}", field=field) from None
    if text.startswith(_JSON.get(key, "\0")):
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            if key == "stop":
                return value  # a stop string that merely starts with "["
            raise InvalidInput(f"{field} is not valid JSON ({exc}); write it as a YAML list or mapping",
                               field=field) from None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return value


def split_inputs(inputs: dict[str, Any], at: str = "") -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(API parameters, settings like model/stream, template variables) of an llm node's inputs; `at` names the
    inputs in errors (`NODE.inputs`). A parameter left empty (Prompt flow's default '', [] or {}) is not set."""
    params, settings, variables = {}, {}, {}
    for key, value in inputs.items():
        if key in PARAMETERS:
            value = _coerce(key, value, at)
            if value is not None and value != [] and value != {}:
                params[key] = value
        elif key in SETTINGS:
            settings[key] = _coerce(key, value, at)
        else:
            variables[key] = value
    return params, settings, variables


def _check_params(params: dict[str, Any], scoring: bool, where: str, at: str) -> None:
    """Refuse, by the input's name, a parameter the call cannot honour, so none is dropped on the way."""
    n = params.get("n")
    if n is not None and n != 1:
        field = _field(at, "n")
        raise InvalidInput(f"{where}: {field} is {n!r}, but an llm node outputs one answer: set n to 1 (run the "
                           "flow again, or a batch run over several lines, for more answers)", field=field)
    if not scoring:
        return
    for key, value in params.items():
        if key == "response_format" and value in ({"type": "text"}, "text"):
            continue  # plain text is what the scoring body answers
        if key in NOT_SCORED:
            field = _field(at, key)
            raise InvalidInput(f"{where}: {field} cannot be sent over a scoring connection (a custom connection "
                               f"with an endpoint): {NOT_SCORED[key]}", field=field)


def _request(method: str, url: str, *, headers: dict, body: dict, stream: bool, where: str) -> httpx.Response:
    http = client()
    for attempt in range(MAX_ATTEMPTS):
        try:
            req = http.build_request(method, url, headers=headers, json=body)
            resp = http.send(req, stream=stream)
        except httpx.TransportError as exc:
            if attempt + 1 >= MAX_ATTEMPTS:
                raise UpstreamError(f"{where}: {url} unreachable: {exc}", field=where) from exc
            time.sleep(_delay(attempt, None))
            continue
        if resp.status_code in RETRY_STATUS and attempt + 1 < MAX_ATTEMPTS:
            retry_after = resp.headers.get("Retry-After")
            resp.close()
            time.sleep(_delay(attempt, retry_after))
            continue
        if resp.status_code >= 400:
            text = resp.read().decode("utf-8", "replace")[:300]
            resp.close()
            raise UpstreamError(f"{where}: {url} answered {resp.status_code}: {text}", field=where)
        return resp
    raise AssertionError("unreachable")


def _delay(attempt: int, retry_after: str | None) -> float:
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), MAX_BACKOFF_S)
        except ValueError:
            pass
    return min(BACKOFF_S * 2**attempt, MAX_BACKOFF_S) * (0.5 + random.random() / 2)


def _target(conn: dict, settings: dict, where: str) -> tuple[str, str, dict, dict]:
    """(kind, url, headers, extra body) for a connection."""
    configs, secrets = conn.get("configs") or {}, conn.get("secrets") or {}
    fields = {**configs, **secrets}
    kind = conn.get("type") or "custom"
    key = fields.get("api_key") or fields.get("key") or ""
    model = settings.get("model") or settings.get("deployment_name") or fields.get("model")
    if kind == "open_ai" or (kind == "custom" and fields.get("base_url") and not fields.get("endpoint")):
        base = str(fields.get("base_url") or "https://api.openai.com/v1").rstrip("/")
        headers = {"Authorization": f"Bearer {key}"}
        if fields.get("organization"):
            headers["OpenAI-Organization"] = str(fields["organization"])
        if not model:
            raise InvalidInput(f"{where}: set model (or deployment_name) in the node inputs", field=f"{where}.model")
        return "openai", f"{base}/chat/completions", headers, {"model": model}
    if kind == "azure_open_ai":
        base = str(fields.get("api_base") or fields.get("azure_endpoint") or "").rstrip("/")
        deployment = settings.get("deployment_name") or settings.get("model") or fields.get("azure_deployment")
        if not base or not deployment:
            raise InvalidInput(f"{where}: an azure_open_ai call needs api_base and deployment_name", field=where)
        version = fields.get("api_version") or "2024-02-01"
        url = f"{base}/openai/deployments/{deployment}/chat/completions?api-version={version}"
        return "openai", url, {"api-key": key}, {}
    if kind == "custom" and fields.get("endpoint"):
        return "scoring", str(fields["endpoint"]), {"Authorization": f"Bearer {key}"}, {}
    raise InvalidInput(
        f"{where}: connection {conn.get('name')!r} of type {kind!r} cannot serve chat calls; use open_ai, "
        "azure_open_ai, or a custom connection with an endpoint (a scoring URI) and key",
        field=f"{where}.connection",
    )


def chat(conn: dict, messages: list[dict], params: dict, settings: dict, *, stream: bool, where: str,
         at: str = "") -> str | dict | Iterator[str]:
    """Send `messages`; the answer's text, or an iterator of text chunks when streaming, or the assistant's
    message (a dict with `tool_calls`) when `tools` or `functions` were given. `at` names the inputs in errors."""
    if not messages:
        raise InvalidInput(f"{where}: the template rendered no messages", field=where)
    kind, url, headers, extra = _target(conn, settings, where)
    _check_params(params, kind == "scoring", where, at)
    if kind == "scoring":
        body = score_body(messages, **{SCORE_NAMES[k]: v for k, v in params.items() if k in SCORE_NAMES})
        resp = _request("POST", url, headers=headers, body=body, stream=False, where=where)
        data = resp.json()
        text = data.get("output") if isinstance(data, dict) else data[0] if isinstance(data, list) and data else data
        return iter([str(text)]) if stream else str(text)
    body = {**extra, "messages": messages, **params}
    message_answer = any(k in params for k in _MESSAGE_ANSWER)
    if stream and not message_answer:
        body["stream"] = True
        resp = _request("POST", url, headers=headers, body=body, stream=True, where=where)
        return _sse_chunks(resp, where)
    resp = _request("POST", url, headers=headers, body=body, stream=False, where=where)
    try:
        message = resp.json()["choices"][0]["message"]
        return dict(message) if message_answer else message.get("content") or ""
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamError(f"{where}: unexpected chat completion body: {resp.text[:300]}", field=where) from exc


def _sse_chunks(resp: httpx.Response, where: str) -> Iterator[str]:
    try:
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                choices = json.loads(data).get("choices") or []
            except ValueError:
                raise UpstreamError(f"{where}: bad stream chunk {data[:200]!r}", field=where) from None
            if choices:
                piece = (choices[0].get("delta") or {}).get("content")
                if piece:
                    yield piece
    finally:
        resp.close()
