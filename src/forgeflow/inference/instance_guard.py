"""The door of an instance (a model server or a flow served as a deployment): only its gateway gets in.

Every request must name the address the instance listens on in its Host header (a page a browser loaded
from elsewhere cannot reach a loopback port by DNS rebinding), carry the instance's secret as
`Authorization: Bearer <secret>` (compared in constant time), and send a body no larger than the
instance's own limit. The secret is the placement's, fresh each time the instance starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forgeflow.errors import ForgeflowError, InvalidInput, PayloadTooLarge, Unauthorized
from forgeflow.store.secrets import same

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The Host headers that name this instance: its bound address, and `localhost` when that is loopback."""
    names = {host, "localhost"} if host in LOOPBACK else {host}
    return frozenset(f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in names)


class _TooLarge(Exception):
    pass


class InstanceGuard:
    """ASGI middleware: refuse (400) a Host that is not the instance's, (401) a missing or wrong secret,
    (413) a body over max_body_bytes, before the app sees the request."""

    def __init__(self, app: ASGIApp, *, secret: str, hosts: Iterable[str],
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if not secret:
            raise ValueError("an instance needs a secret")
        self.app = app
        self.secret = secret
        self.hosts = frozenset(h.lower() for h in hosts)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refused = self._refusal(headers)
        if refused:
            await _answer(send, refused)
            return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _TooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except _TooLarge:
            if started:
                raise
            await _answer(send, self._too_large())

    def _refusal(self, headers: Headers) -> ForgeflowError | None:
        host = headers.get("host", "").lower()
        if host not in self.hosts:
            return InvalidInput(f"this instance answers only as {' or '.join(sorted(self.hosts))}, "
                                f"not Host {host[:100]!r}", field="host")
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not same(given, self.secret):
            return Unauthorized("this instance answers only its gateway: missing or wrong instance key")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the body is larger than this instance's limit of {self.max_body_bytes} bytes")


async def _answer(send: Send, exc: ForgeflowError) -> None:
    body = json.dumps(exc.to_dict()).encode()
    await send({"type": "http.response.start", "status": exc.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
