"""Chat calls of `llm` nodes and `.prompty` files over a connection.

- `open_ai`: POST {base_url}/chat/completions (any OpenAI-compatible server, including a forgeflow
  endpoint's `openai_base_url`), `Authorization: Bearer <api_key>`.
- `azure_open_ai`: POST {api_base}/openai/deployments/{deployment}/chat/completions?api-version=...,
  `api-key` header.
- `custom` with an `endpoint`: an Azure ML / forgeflow scoring URI, `{"input_data": {"input_string":
  messages, "parameters": ...}}` -> `{"output": text}`, `Authorization: Bearer <key>`.

429/502/503/504 answers are retried with exponential backoff, honouring `Retry-After`.
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
PARAMETERS = ("max_tokens", "temperature", "top_p", "stop", "presence_penalty", "frequency_penalty",
              "seed", "response_format", "logit_bias", "user", "n", "tools", "tool_choice")
SETTINGS = ("model", "deployment_name", "stream", "connection", "api")
_client: httpx.Client | None = None
_client_lock = threading.Lock()


def client() -> httpx.Client:
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = httpx.Client(timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0))
    return _client


def _coerce(key: str, value: Any) -> Any:
    """Prompt flow DAGs often write numbers as strings ('128', '0.2', ''); read them as values."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text == "" or text.lower() in ("none", "null"):
        return None
    if key in ("max_tokens", "n", "seed"):
        try:
            return int(float(text))
        except ValueError:
            raise InvalidInput(f"{key} must be an integer, got {value!r}", field=key) from None
    if key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        try:
            return float(text)
        except ValueError:
            raise InvalidInput(f"{key} must be a number, got {value!r}", field=key) from None
    if key == "stop" and text.startswith("["):
        return json.loads(text)
    if key in ("response_format", "logit_bias") and text.startswith("{"):
        return json.loads(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return value


def split_inputs(inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(API parameters, settings like model/stream, template variables) of an llm node's inputs."""
    params, settings, variables = {}, {}, {}
    for key, value in inputs.items():
        if key in PARAMETERS:
            value = _coerce(key, value)
            if value is not None:
                params[key] = value
        elif key in SETTINGS:
            settings[key] = _coerce(key, value)
        else:
            variables[key] = value
    return params, settings, variables


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


def chat(conn: dict, messages: list[dict], params: dict, settings: dict, *, stream: bool, where: str) -> str | Iterator[str]:
    """Send `messages`; the answer's text, or an iterator of text chunks when streaming."""
    if not messages:
        raise InvalidInput(f"{where}: the template rendered no messages", field=where)
    kind, url, headers, extra = _target(conn, settings, where)
    if kind == "scoring":
        body = score_body(messages, temperature=params.get("temperature"), top_p=params.get("top_p"),
                          max_new_tokens=params.get("max_tokens"))
        resp = _request("POST", url, headers=headers, body=body, stream=False, where=where)
        data = resp.json()
        text = data.get("output") if isinstance(data, dict) else data[0] if isinstance(data, list) and data else data
        return iter([str(text)]) if stream else str(text)
    body = {**extra, "messages": messages, **params}
    if stream:
        body["stream"] = True
        resp = _request("POST", url, headers=headers, body=body, stream=True, where=where)
        return _sse_chunks(resp, where)
    resp = _request("POST", url, headers=headers, body=body, stream=False, where=where)
    try:
        return resp.json()["choices"][0]["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, ValueError) as exc:
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
