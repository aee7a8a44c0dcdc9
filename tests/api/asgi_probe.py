"""Calling the app as an ASGI server would, counting how much of a request body the app pulled in."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    read: int  # body bytes the app (and its middleware) received
    chunks_left: bool = field(default=False)  # the client still had body to send

    def json(self):
        return json.loads(self.body)


async def call(app, method: str, path: str, *, headers: dict[str, str] | None = None,
               chunks: Iterable[bytes] = (), client: tuple[str, int] = ("10.1.1.1", 40000),
               scheme: str = "http") -> Answer:
    """One request; `chunks` are handed over only as the app asks for them (lazily, so an unread body costs
    nothing)."""
    pending = iter(chunks)
    read = 0
    done = False
    out: dict = {"status": 0, "headers": {}, "body": b""}

    async def receive():
        nonlocal read, done
        if done:
            return {"type": "http.disconnect"}
        chunk = next(pending, None)
        if chunk is None:
            done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": scheme,
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": raw_headers, "client": client, "server": ("127.0.0.1", 8765)}
    await app(scope, receive, send)
    left = next(pending, None) is not None
    return Answer(out["status"], out["headers"], out["body"], read, left)


def endless(chunk_size: int = 64 * 1024, total: int = 100 * 1024 * 1024) -> Iterable[bytes]:
    """A body of `total` bytes, made only as far as it is read."""
    sent = 0
    while sent < total:
        sent += chunk_size
        yield b"a" * chunk_size
