"""Passing an instance's server-sent events through the gateway (serving/forwarding.py hands a stream over here):
whole events as they complete, read on the way for the metrics (time to first token, token counts, a failure),
the admission ticket and the upstream response given back exactly once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp
from fastapi.responses import StreamingResponse

from forgeflow.chat import USAGE_COMMENT, error_event, is_error_event
from forgeflow.errors import ForgeflowError, UpstreamError
from forgeflow.serving.admission import Ticket
from forgeflow.serving.metrics import Metrics
from forgeflow.serving.schemas import Dialect

log = logging.getLogger("forgeflow.gateway")
RECEIVED_AHEAD = 256 * 1024  # bytes of an upstream body that may wait for the relay (`_Received`)


class Relayed(Protocol):
    """What a relayed stream needs of its request (forwarding.Call)."""

    svc: Any
    endpoint: str
    deployment: str | None
    dialect: Dialect
    started: float

    def record(self, status: int, completion_tokens: int | None = None, prompt_tokens: int | None = None) -> None: ...


class Release:
    """Give back what a relayed stream holds (the upstream response, its admission ticket) exactly
    once: when the stream ends, breaks, or the client leaves before it even started."""

    def __init__(self, call: Relayed, resp: aiohttp.ClientResponse, ticket: Ticket) -> None:
        self.call, self.resp, self.ticket = call, resp, ticket
        self.status, self.tokens, self.usage = 499, 0, None  # 499: the client went away first
        self.failed = False  # an error event was passed on: the answer is incomplete
        self.done = False
        self.reading: _Received | None = None  # the relay's reading of the upstream body, stopped first

    async def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        if self.reading is not None:  # before the response goes: a reader still waiting on it would be woken
            self.reading.stop()  # by its close with aiohttp's shared "connection closed" exception
        self.ticket.release()
        try:
            if self.status == 200:  # read to its end: the connection goes back to the pool
                self.resp.release()
            else:  # cut off, or the client left: the connection is closed, never reused half-read
                self.resp.close()
        finally:
            usage = self.usage or {}
            prompt = header_int(self.resp.headers.get("x-forgeflow-prompt-tokens"))
            self.call.record(self.status, usage.get("completion_tokens", self.tokens),
                             usage.get("prompt_tokens", prompt))


class RelayResponse(StreamingResponse):
    def __init__(self, content: AsyncIterator[bytes], release: Release, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.release()


class _StreamFailed(BaseException):
    """Raised after a failed stream's error event on the Azure AI model inference route, so the server closes
    the connection before the chunked body's last chunk: azure-ai-inference skips an event with no choices, so
    the error event alone would leave the answer looking complete, while azure-core raises on an incomplete body.
    A BaseException, so no handler takes it for an unexpected failure and tries to answer a 500."""


def _quiet_aborts(record: logging.LogRecord) -> bool:
    """uvicorn logs every exception that leaves the app with its traceback; an aborted stream is logged here."""
    failure = record.exc_info[1] if record.exc_info else None
    return not isinstance(failure, _StreamFailed)


logging.getLogger("uvicorn.error").addFilter(_quiet_aborts)


async def relay(call: Relayed, resp: aiohttp.ClientResponse, release: Release,
                too_slow: ForgeflowError) -> AsyncIterator[bytes]:
    """Pass a server-sent-event stream through as its events complete, timing the first chunk and counting
    tokens (the final `usage` chunk, else the instance's usage comment, which is not passed on, else one per
    content chunk and the prompt tokens from the instance's header).

    A failed stream ends with an error event and no `data: [DONE]`, so the client knows the answer is
    incomplete (OpenAI's clients raise it): the instance's own, or the gateway's when the upstream breaks off
    (the instance died, or was silent past request_timeout_ms). It counts as a 424 (or 408). On the Azure route
    the connection is then closed before the body's end (`_StreamFailed`). Every whole event the instance wrote
    before it broke off is passed on first (`_Received`); a half-received event is dropped, never passed on.
    Events end with an empty line (LF line ends), as the model and flow servers write them."""
    m, labels = call.svc.metrics, Metrics.labels(endpoint=call.endpoint, deployment=call.deployment)
    first, pending = True, b""
    received = release.reading = _Received(resp.content)
    try:
        async for chunk in received:
            if first:
                first = False
                m.observe("forgeflow_time_to_first_token_seconds", labels, time.perf_counter() - call.started)
            pending += chunk
            cut = pending.rfind(b"\n\n")
            if cut < 0:
                continue
            events, pending = pending[:cut + 2], pending[cut + 2:]
            passed = _read_events(events, release)
            if passed:
                yield passed
        if pending:
            yield pending
        release.status = UpstreamError.status_code if release.failed else 200
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:  # aiohttp's read timeout is asyncio's
        broken = too_slow if isinstance(e, asyncio.TimeoutError) else UpstreamError(
            f"the model server of deployment {call.deployment!r} broke off the stream ({type(e).__name__}): "
            "the answer is incomplete")
        release.status, release.failed = broken.status_code, True
        yield error_event(broken).encode()
    finally:
        await release()
    if release.failed and call.dialect == Dialect.AZURE:
        log.warning("a stream of %s/%s failed mid-way; its connection is closed so the client sees it",
                    call.endpoint, call.deployment)
        raise _StreamFailed()


class _Received:
    """An upstream body's bytes as they arrive, then its break if it broke (iterate it). aiohttp's reader raises a
    break (the instance died) before it hands back bytes it had already received, so a task of its own reads the
    body while the relay is busy sending its client what came before: the events an instance wrote before it died
    get through as long as the client is less than RECEIVED_AHEAD bytes behind. Past that the task waits for the
    relay, and the instance's writes are held back by TCP's flow control, as when the relay read the body itself.
    `stop` ends the task (the relay's end, or its client's: before the response is let go)."""

    def __init__(self, content: Any) -> None:
        self._items: deque[bytes | BaseException | None] = deque()  # None: the body's end
        self._held = 0  # bytes received and not yet taken
        self._came, self._room = asyncio.Event(), asyncio.Event()
        self._task = asyncio.ensure_future(self._read(content))
        self._task.add_done_callback(self._ended)

    async def _read(self, content: Any) -> None:
        try:
            async for data in content.iter_any():
                self._items.append(data)
                self._held += len(data)
                self._came.set()
                while self._held >= RECEIVED_AHEAD:
                    self._room.clear()
                    await self._room.wait()
        except Exception as exc:  # the break, raised where the relay reads it
            self._items.append(exc)
        else:
            self._items.append(None)
        self._came.set()

    def _ended(self, task: asyncio.Task) -> None:
        """A reading cancelled at any point (even before it began) still ends what its consumer reads: as a
        broken stream, not a wait for ever."""
        if task.cancelled():
            self._items.append(aiohttp.ClientConnectionError("the reading of the upstream stream was stopped"))
            self._came.set()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                while not self._items:
                    self._came.clear()
                    await self._came.wait()
                item = self._items.popleft()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                self._held -= len(item)
                self._room.set()
                yield item
        finally:
            self.stop()

    def stop(self) -> None:
        self._task.cancel()


def _read_events(events: bytes, release: Release) -> bytes:
    """Whole events as they are passed on, read on the way for the metrics: the usage comment is kept back, an
    error event marks the stream failed."""
    passed = []
    for block in events.split(b"\n\n")[:-1]:
        if block.startswith(USAGE_COMMENT):
            release.usage = _json_object(block[len(USAGE_COMMENT):]) or release.usage
            continue
        for line in block.split(b"\n"):
            release.failed = release.failed or line.rstrip() == b"event: error"  # a flow server's error event
            event = _json_object(line[5:]) if line.startswith(b"data:") else None
            if event is None:
                continue
            release.failed = release.failed or is_error_event(event)
            usage = event.get("usage")
            release.usage = usage if isinstance(usage, dict) else release.usage
            # a chat chunk's delta.content, a text completion chunk's text
            release.tokens += any((c.get("delta") if isinstance(c.get("delta"), dict) else {}).get("content")
                                  or c.get("text") for c in event.get("choices") or [] if isinstance(c, dict))
        passed.append(block + b"\n\n")
    return b"".join(passed)


def _json_object(raw: bytes) -> dict | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def header_int(value: str | None) -> int | None:
    """A token count from an instance's header (None when absent or not a count)."""
    return int(value) if value and value.isdigit() else None
