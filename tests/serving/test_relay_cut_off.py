"""An instance that dies mid-stream while the gateway is still sending its client earlier events: every whole event
the instance wrote before it died reaches the client, then the error event. (aiohttp's reader raises the break
before it hands back bytes it has already received, so a relay that was busy with its client when the break came
used to lose them.)"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import aiohttp

from forgeflow.errors import RequestTimeout
from forgeflow.serving.metrics import Metrics
from forgeflow.serving.relay import relay
from forgeflow.serving.schemas import Dialect


def event(text: str) -> bytes:
    return f'data: {json.dumps({"choices": [{"delta": {"content": text}}]})}\n\n'.encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Release:
    tokens, usage, status, calls, failed = 0, None, 499, 0, False

    async def __call__(self):
        self.calls += 1


async def cut_off_instance(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, go_on: asyncio.Event,
                           died: asyncio.Event) -> None:
    """An instance that sends one event, then (once told) three more and dies before the body's end."""
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(2)  # the request's body ({}), read as a model server reads it
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    writer.write(chunk(event("a")))
    await writer.drain()
    await go_on.wait()
    writer.write(chunk(event("b") + event("c")) + chunk(event("d")) + chunk(b'data: {"choi'))
    await writer.drain()
    writer.transport.abort()  # the process died: no last chunk
    died.set()


def test_the_events_an_instance_wrote_before_it_died_all_reach_the_client():
    async def main():
        go_on, died = asyncio.Event(), asyncio.Event()
        server = await asyncio.start_server(lambda r, w: cut_off_instance(r, w, go_on, died), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        done = Release()
        call = SimpleNamespace(svc=SimpleNamespace(metrics=Metrics()), endpoint="e", deployment="d",
                               started=time.perf_counter(), dialect=Dialect.OPENAI)
        got = []
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=b"{}")
            async for piece in relay(call, resp, done, RequestTimeout("too slow")):
                got.append(piece)
                if len(got) == 1:  # the client is slow to take the first event: the rest and the break arrive
                    go_on.set()
                    await asyncio.wait_for(died.wait(), 10)
                    await asyncio.sleep(0.2)
        server.close()
        return b"".join(got), done

    out, done = asyncio.run(main())
    events = out.decode().split("\n\n")
    assert [json.loads(e.removeprefix("data: "))["choices"][0]["delta"]["content"] for e in events[:4]] == \
        ["a", "b", "c", "d"]
    error = json.loads(events[4].removeprefix("data: "))["error"]
    assert error["code"] == "UpstreamError" and "incomplete" in error["message"]
    assert events[5:] == [""] and done.status == 424 and done.tokens == 4 and done.calls == 1


async def stalled_instance(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An instance that sends one event and then nothing more (it is still thinking)."""
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(2)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    writer.write(chunk(event("a")))
    await writer.drain()
    await asyncio.sleep(30)


async def first_piece_of_a_stalled_stream(then):
    """Relay a stalled instance's stream with forgeflow's own Release, take its first piece and hand the relay,
    its Release and its reading to `then`."""
    from forgeflow.serving.relay import Release as Releasing

    server = await asyncio.start_server(stalled_instance, "127.0.0.1", 0)
    recorded = []
    call = SimpleNamespace(svc=SimpleNamespace(metrics=Metrics()), endpoint="e", deployment="d",
                           started=time.perf_counter(), dialect=Dialect.OPENAI,
                           record=lambda *args: recorded.append(args))
    try:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x", data=b"{}")
            done = Releasing(call, resp, SimpleNamespace(release=lambda: None))
            pieces = relay(call, resp, done, RequestTimeout("too slow"))
            assert b'"a"' in await pieces.__anext__()
            return await then(pieces, done, done.reading._task), recorded
    finally:
        server.close()


def test_a_client_that_leaves_stops_the_reading_when_the_response_is_let_go():
    """The client leaves while the relay waits at an event (its generator is never closed): the release stops the
    reading task (it is cancelled, not left waiting on the upstream response). That it does so before it closes the
    response, so no reader is woken by the close, is the code's order; this test cannot tell the two orders apart."""
    async def leave(pieces, done, reading):
        await done()  # what the response's end does when its client has gone
        await asyncio.sleep(0)
        return reading.cancelled(), done.resp.closed  # stopped, not woken by the close

    (stopped, closed), recorded = asyncio.run(first_piece_of_a_stalled_stream(leave))
    assert stopped and closed and recorded[0][0] == 499


def test_a_reading_stopped_by_anything_else_ends_the_relay_as_a_broken_stream_rather_than_hanging_it():
    async def stop_the_reading(pieces, done, reading):
        reading.cancel()

        async def rest():
            return [piece async for piece in pieces]

        return await asyncio.wait_for(rest(), 5)  # (a relay left waiting would hang here)

    rest, recorded = asyncio.run(first_piece_of_a_stalled_stream(stop_the_reading))
    error = json.loads(b"".join(rest).decode().removeprefix("data: "))["error"]
    assert "broke off" in error["message"] and recorded[0][0] == 424
