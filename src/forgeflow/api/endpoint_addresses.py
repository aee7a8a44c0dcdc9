"""Endpoints at Azure-style URLs (serving/endpoint_hosts.py): the ASGI middleware that serves a request on an
endpoint's host name or own port as `/endpoints/NAME/<path>`, and the listeners on endpoints' own ports.

The middleware sits outside api/guard.py, so the guard sees the rewritten path: credentials, body caps, the
failed-credential limit and the error shapes apply exactly as on `/endpoints/NAME/...`. A request on an endpoint's
host name or port reaches that endpoint's routes only (`/score`, `/v1/...`, and whatever else the gateway serves
under `/endpoints/NAME/`), never the control plane or another endpoint. A request with more than one Host header
is refused first (400, RFC 9112 section 3.2), on every port: which one names the request is anybody's guess, and a
proxy in front may have judged by the other. The server's own host name is never taken for an endpoint's.

`PortListeners` keeps one listener per endpoint port in this server's own event loop, serving the same app: each
is a uvicorn `Server` started on a socket bound here, with lifespan off and no signal handlers of its own (the
server `forgeflow serve` runs owns the signals and the app's lifespan, which starts and stops these). The table
is read every TABLE_TTL_S, so an endpoint given a port on any server is listened on by every server within about a
second, and a port taken away stops being listened on (requests in flight there finish first). A port this
server cannot bind (another program, or another forgeflow server on this host, holds it) is logged, never fatal,
and tried again every RETRY_S; a port outside this server's range (another server, started with another
--endpoint-ports, gave it) is logged once and never bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time

import uvicorn
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from forgeflow.errors import InvalidInput
from forgeflow.serving.endpoint_hosts import EndpointAddresses, describe_ports, host_label, own_label

ENDPOINT_SCOPE_KEY = "forgeflow.endpoint"  # set by a port's listener: the endpoint its requests are for
RETRY_S = 5.0  # how often a port that could not be bound is tried again
GRACE_S = 10.0  # how long a closing listener waits for its requests in flight

log = logging.getLogger("forgeflow.server")


class EndpointRouting:
    """ASGI middleware: a request for an endpoint's host name (`NAME.DOMAIN`) or that came in on its port is served
    as `/endpoints/NAME/<path>`; one with several Host headers is refused. `base_url`: the server's own address,
    whose host name stays the server's even when it falls under the domain."""

    def __init__(self, app: ASGIApp, addresses: EndpointAddresses, domain: str, base_url: str) -> None:
        self.app = app
        self.addresses = addresses
        self.domain = domain
        self.own_label = own_label(base_url, domain)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            hosts = sum(1 for key, _ in scope["headers"] if key.lower() == b"host")
            if hosts > 1:
                await _refuse(scope, receive, send, InvalidInput(
                    f"the request has {hosts} Host headers: send exactly one (RFC 9112 section 3.2)", field="host"))
                return
            name = scope.get(ENDPOINT_SCOPE_KEY) or await self._by_host(scope)
            if name is not None:
                prefix = f"/endpoints/{name}"
                raw = scope.get("raw_path") or scope["path"].encode()
                scope = {**scope, "path": prefix + scope["path"], "raw_path": prefix.encode() + raw}
        await self.app(scope, receive, send)

    async def _by_host(self, scope: Scope) -> str | None:
        label = host_label(Headers(scope=scope).get("host"), self.domain)
        if label is None or label == self.own_label:
            return None
        if self.addresses.stale:
            try:
                await run_in_threadpool(self.addresses.refresh)
            except Exception:  # the store did not answer: route by the table as last read; the gateway says more
                log.exception("could not read the endpoints' names and ports")
        return self.addresses.name_for(label)


async def _refuse(scope: Scope, receive: Receive, send: Send, error: InvalidInput) -> None:
    """Answer `error` as JSON in the tree's shape (the request is routed nowhere yet); a WebSocket is closed."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": error.message})  # the server answers 403
        return
    await JSONResponse(error.to_dict(), status_code=error.status_code)(scope, receive, send)


class _PortApp:
    """What a port's listener serves: the app, each request marked as being for the port's endpoint (which a
    change of the port's owner moves in place)."""

    def __init__(self, app: ASGIApp, endpoint: str) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app({**scope, ENDPOINT_SCOPE_KEY: self.endpoint}, receive, send)


class _Listener:
    def __init__(self, app: _PortApp, server: uvicorn.Server, sock: socket.socket) -> None:
        self.app, self.server, self.sock = app, server, sock

    async def close(self) -> None:
        """Stop accepting at once; wait up to GRACE_S for the requests in flight."""
        await self.server.shutdown(sockets=[self.sock])


class PortListeners:
    """This server's listeners on the endpoints' own ports in its range `allowed`, kept in step with the table of
    `addresses`."""

    def __init__(self, app: ASGIApp, host: str, addresses: EndpointAddresses, allowed: range) -> None:
        self.app = app
        self.host = host
        self.addresses = addresses
        self.allowed = allowed
        self._open: dict[int, _Listener] = {}
        self._failed: dict[int, tuple[float, str]] = {}  # port -> (when to try again, what went wrong)
        self._closing: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._syncing = asyncio.Lock()  # one pass at a time: two would both try to bind a port

    def listening(self) -> dict[int, str]:
        """Port -> endpoint, for the ports this server listens on now."""
        return {port: listener.app.endpoint for port, listener in self._open.items()}

    def failures(self) -> dict[int, str]:
        """Port -> why this server does not listen there, for the ports it could not bind."""
        return {port: why for port, (_, why) in self._failed.items()}

    async def start(self) -> None:
        """Open the ports the table names now, then follow the table on a task of this event loop."""
        await self._pass()
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with self._syncing:
            for port in list(self._open):
                self._close(port)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.addresses.ttl_s)
            await self._pass()

    async def _pass(self) -> None:
        try:
            await self.sync()
        except Exception:  # a store that did not answer this time: the next pass tries again
            log.exception("could not bring the endpoint ports in step with the store")

    async def sync(self) -> None:
        """Read the table and open, move or close listeners to match it."""
        async with self._syncing:
            await self._sync()

    async def _sync(self) -> None:
        await run_in_threadpool(self.addresses.refresh, force=True)
        wanted = self.addresses.ports()
        for port in [p for p in self._open if p not in wanted]:
            log.info("endpoint port %d closed (%s no longer has it)", port, self._open[port].app.endpoint)
            self._close(port)
        for port in [p for p in self._failed if p not in wanted]:
            del self._failed[port]
        now = time.monotonic()
        for port, name in wanted.items():
            listener = self._open.get(port)
            if listener is not None:
                listener.app.endpoint = name
                await listener.server.on_tick(0)  # what uvicorn's own loop does each second: the Date header
            elif now >= self._failed.get(port, (0.0, ""))[0]:
                await self._listen(port, name)

    async def _listen(self, port: int, name: str) -> None:
        if port not in self.allowed:
            ports = describe_ports(self.allowed)
            log.error("not listening on port %d for endpoint %s: it is outside this server's endpoint ports (%s); "
                      "give the endpoint a port in that range (forgeflow online-endpoint update --name %s --set "
                      "port=PORT), or start this server with --endpoint-ports including it", port, name, ports, name)
            self._failed[port] = (math.inf, f"outside this server's --endpoint-ports {ports}")
            return
        try:
            sock = _bind(self.host, port)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if self._failed.get(port, (0.0, ""))[1] != why:  # said once per reason, not every RETRY_S
                log.error("cannot listen on port %d for endpoint %s at %s: %s (another program, or another forgeflow "
                          "server on this host, may hold it); trying again every %.0f s - or give the endpoint "
                          "another port: forgeflow online-endpoint update --name %s --set port=PORT",
                          port, name, self.host, why, RETRY_S, name)
            self._failed[port] = (time.monotonic() + RETRY_S, why)
            return
        app = _PortApp(self.app, name)
        config = uvicorn.Config(app, interface="asgi3", lifespan="off", log_config=None, proxy_headers=False,
                                timeout_graceful_shutdown=GRACE_S)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        await server.on_tick(0)
        self._failed.pop(port, None)
        self._open[port] = _Listener(app, server, sock)
        log.info("endpoint %s also answers on port %d: http://%s:%d/score", name, port, self.host, port)

    def _close(self, port: int) -> None:
        """Stop accepting on the port now; its requests in flight finish on a task of their own."""
        listener = self._open.pop(port)
        for srv in listener.server.servers:
            srv.close()  # at once, so the port may be bound again before the graceful part ends
        task = asyncio.get_running_loop().create_task(listener.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), as uvicorn binds its own (SO_REUSEADDR, so a port just closed may be
    bound again at once); never inherited by the processes this server starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock
