"""The guard in front of every route: pure ASGI middleware, so it acts before FastAPI reads a byte of a body.

- Credentials before bodies. Control-plane routes (everything but scoring, health, sign-in and the Studio's
  pages) need a token (the owner token or a personal access token) or a Studio session (api/security.py),
  checked from the headers alone; a request without one is refused unread, and the principal found is left in
  the request's state for the route's role check. A scoring request without any key is refused here too (saying
  nothing about the endpoint); the gateway checks the key itself, also before reading.
- Every change is audited (store/audit.py): a control-plane request other than GET or HEAD that passed the
  credential check, a read that hands out secrets (`audit_secret_read`), a sign-in, a sign-out that ended a
  session, and a presented credential refused, whatever the answer (a request with no credential leaves no row).
  The row is written when the answer starts (so it is there before the client sees the answer) and names the
  route's template (or "(no such route)"), the target's name (from the path, or what the route named with
  `audit_target`), what the route said with `audit_detail`, the principal, the client's address and the status;
  never a body, a query string or a credential.
- A refusal on an endpoint's route is in that route's dialect (serving/schemas.py): OpenAI's shape under /v1,
  Azure's on the Azure AI model inference routes, forgeflow's own on /score.
- Every body has a cap: control plane CONTROL_MAX_BYTES, sign-in SIGN_IN_MAX_BYTES, dataset uploads the data
  library's own (larger) limit, scoring SCORING_MAX_BYTES (the gateway then applies the endpoint's
  `max_body_bytes`). A declared Content-Length over the cap is answered 413 at once; a chunked body is cut off
  with a 413 as soon as it grows past the cap.
- JSON bodies may nest MAX_JSON_DEPTH levels at most: deeper ones are refused with a 400 while they stream in,
  before any parser could recurse into them.
- Failed credentials are limited per client address (serving/throttle.py): every 401 answered to a request that
  presented a credential counts, whoever answered it (this guard, the gateway, the sign-in route), and past the
  limit the answer becomes 429 with Retry-After. A good credential is checked first and never counted.
- A refusal sent while part of the body is still unread keeps the connection alive when what is left is small
  (the server discards it as it arrives) and closes it otherwise (`Connection: close`, as RFC 9110 allows for
  413), so a large unread body is never drained.
"""

from __future__ import annotations

import json
import logging
import re

from fastapi.routing import iter_route_contexts
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, HTTPConnection
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forgeflow.api.security import (DETAIL, PRINCIPAL, SECRET_READ, TARGET, authenticate, presents_credential,
                                    services)
from forgeflow.data.library import max_upload_bytes
from forgeflow.errors import ForgeflowError, InvalidInput, PayloadTooLarge, TooManyRequests, Unauthorized
from forgeflow.serving.auth import presented_credential
from forgeflow.serving.schemas import dialect_of, error_body
from forgeflow.serving.specs import SCORING_MAX_BYTES
from forgeflow.serving.throttle import FailureLimiter

CONTROL_MAX_BYTES = 4 * 1024 * 1024
SIGN_IN_MAX_BYTES = 4096
MAX_JSON_DEPTH = 64
DRAIN_BYTES = 64 * 1024  # unread body the server may still discard to keep a connection alive
SIGN_OUT = ("DELETE", "/api/session")
NO_ROUTE = "(no such route)"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

log = logging.getLogger("forgeflow.server")

# Reached without a credential: (method, path) pairs, and path prefixes for GET and HEAD.
PUBLIC = {("GET", "/api/health"), ("HEAD", "/api/health"), ("POST", "/api/session"), ("DELETE", "/api/session"),
          ("GET", "/"), ("HEAD", "/"), ("GET", "/signin"), ("HEAD", "/signin"), ("GET", "/openapi.json")}
PUBLIC_PREFIXES = ("/studio/",)
_UPLOAD = re.compile(r"/api/datasets/[^/]+")


def route_of(method: str, path: str) -> tuple[str, int]:
    """The kind of route a request goes to (scoring, sign-in, public, upload or control) and its body cap."""
    if path.startswith("/endpoints/"):
        return "scoring", SCORING_MAX_BYTES
    if (method, path) == ("POST", "/api/session"):
        return "sign-in", SIGN_IN_MAX_BYTES
    if (method, path) in PUBLIC or (method in ("GET", "HEAD") and path.startswith(PUBLIC_PREFIXES)):
        return "public", CONTROL_MAX_BYTES
    if method == "PUT" and _UPLOAD.fullmatch(path):
        return "upload", max_upload_bytes()
    return "control", CONTROL_MAX_BYTES


class JsonDepth:
    """Tracks how deep the arrays and objects of a JSON text nest, fed chunk by chunk (strings and their escapes
    are skipped, so a bracket inside a string does not count)."""

    _TOKENS = re.compile(rb'[\\"\[\]{}]')

    def __init__(self, limit: int = MAX_JSON_DEPTH) -> None:
        self.limit = limit
        self.depth = 0
        self.in_string = False
        self.escaped = False  # the last chunk ended on a backslash inside a string

    def feed(self, chunk: bytes) -> bool:
        """False once the text nests deeper than the limit."""
        skip = 0 if self.escaped else -1
        self.escaped = False
        for match in self._TOKENS.finditer(chunk):
            i = match.start()
            if i == skip:
                continue
            c = chunk[i]
            if self.in_string:
                if c == 0x5C:  # a backslash escapes the next byte, which may be in the next chunk
                    skip = i + 1
                    self.escaped = skip == len(chunk)
                elif c == 0x22:
                    self.in_string = False
            elif c == 0x22:
                self.in_string = True
            elif c in b"[{":
                self.depth += 1
                if self.depth > self.limit:
                    return False
            elif c in b"]}":
                self.depth -= 1
        return True


class Guard:
    """The middleware (mounted by the composition root, api/app.py); one limiter of failures per app."""

    def __init__(self, app: ASGIApp, throttle: FailureLimiter | None = None) -> None:
        self.app = app
        self.throttle = throttle or FailureLimiter()
        self._templates: dict[int, str | None] | None = None  # a route's template with its router's prefix, by id

    def route(self, scope: Scope) -> tuple[str, dict]:
        """The template of the route a request went (or would go) to, with the router's prefix, and its path
        parameters. A request the router saw names its route in the scope; one this guard refused before routing
        is matched against the routes here."""
        route = scope.get("route")
        if route is not None and "path_params" in scope:
            if self._templates is None:
                self._templates = _templates(scope["app"])
            template = self._templates.get(id(route))
            if template is not None:
                return template, scope["path_params"]
        return _route(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _Exchange(self, scope, receive, send).run()


class _Exchange:
    """One request through the guard."""

    def __init__(self, guard: Guard, scope: Scope, receive: Receive, send: Send) -> None:
        self.guard, self.scope, self._receive, self._send = guard, scope, receive, send
        self.conn = HTTPConnection(scope)
        self.kind, self.cap = route_of(scope["method"], scope["path"])
        headers = self.conn.headers
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        try:
            self.declared: int | None = int(headers["content-length"])
        except (KeyError, ValueError):
            self.declared = None
        self.received = 0
        self.complete = not (self.chunked or (self.declared or 0) > 0)  # the whole body has come in
        self.depth = None if self.kind == "upload" else JsonDepth()
        self.counts = self.kind == "sign-in" or presents_credential(self.conn)  # a 401 is a failed credential
        self.started = False  # a response has begun
        self.answered = False  # by this guard: what the app sends is dropped
        method = scope["method"]
        self.changes = ((self.kind in ("control", "upload") and method not in ("GET", "HEAD"))
                        or self.kind == "sign-in" or (method, scope["path"]) == SIGN_OUT)
        self.recorded = False  # the audit log has had its say about this request

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await self.record(None)  # no answer went out (the client left): recorded without a status

    async def _run(self) -> None:
        if "\x00" in self.scope["path"]:  # no name holds one, and Postgres could not even be asked about it
            await self.answer(InvalidInput("the path holds a NUL character (%00), which no name may", field="path"))
            return
        if self.kind in ("control", "upload"):
            try:
                principal = await run_in_threadpool(authenticate, self.conn)
            except Unauthorized as exc:
                await self.answer(exc)
                return
            self.scope.setdefault("state", {})[PRINCIPAL] = principal
        elif self.kind == "scoring" and not presented_credential(self.conn):
            await self.answer(Unauthorized("missing key: send 'Authorization: Bearer <key>' (see: forgeflow "
                                           "online-endpoint get-credentials)"))
            return
        # Scoring requests go on to the gateway, which checks the key and then the endpoint's own cap (at most this
        # one) before it reads; here they are only cut off should they stream past the cap.
        if self.kind != "scoring" and self.declared is not None and self.declared > self.cap:
            await self.answer(self.too_large())
            return
        try:
            await self.guard.app(self.scope, self.receive, self.send)
        except ClientDisconnect:
            if not self.answered:
                raise  # the client really left; otherwise it is the app meeting the end this guard made
        except Exception:
            await self.record(500)  # the server's error handler, outside this guard, answers 500
            raise

    async def record(self, status: int | None) -> None:
        """Write this request's audit row once, if it is a change or a refused credential."""
        if self.recorded:
            return
        self.recorded = True
        state = self.scope.get("state", {})
        principal = state.get(PRINCIPAL)
        refused = status == 401 and self.counts and self.kind != "scoring"
        # Recorded: a change whose credential passed (so a sign-in that succeeded, a sign-out that ended a session)
        # and a presented credential refused (throttled, so bounded). A request with no credential at all is refused
        # unread, counts as no failure and leaves no row: else anyone could fill the log without limit.
        changes = self.changes or state.get(SECRET_READ, False)
        if not (refused or (changes and principal is not None)):
            return
        template, params = self.guard.route(self.scope)
        action = f"{_method(self.scope['method'])} {template}"
        row = {"status": status, "client": self.client,
               "target": state.get(TARGET) or "/".join(str(v) for v in params.values()) or None}
        detail = dict(state.get(DETAIL) or {})
        if principal is not None:
            row |= {"user": principal.user, "role": principal.role}
            if principal.token_id:
                detail["token_id"] = principal.token_id
        row["detail"] = detail or None
        try:
            await run_in_threadpool(services(self.conn).ws.audit.record, action, **row)
        except Exception:  # the change is made and answered: a failed audit write is logged, not a failed request
            log.exception("could not write the audit row for %s", action)

    def too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the body is larger than {self.cap} bytes, the most this route takes")

    async def receive(self) -> Message:
        if self.answered:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            self.received += len(chunk)
            self.complete = not message.get("more_body", False)
            refusal: ForgeflowError | None = None
            if self.received > self.cap:
                refusal = self.too_large()
            elif self.depth is not None and not self.depth.feed(chunk):
                refusal = InvalidInput(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels", field="body")
            if refusal is not None:
                await self.answer(refusal)  # unless the app has begun its answer: then it just gets no more
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        """The app's answer, passed on; a 401 past the limit of failures becomes this guard's 429."""
        if self.answered:
            return
        if message["type"] == "http.response.start" and message["status"] == 401 and self.counts:
            retry = self.guard.throttle.failed(self.client)
            if retry is not None:
                await self._answer(self.throttled(retry), {"Retry-After": str(retry)})
                return
        await self._out(message)

    async def answer(self, exc: ForgeflowError) -> None:
        """Refuse the request with the guard's own JSON error (a counted 401 may become a 429)."""
        if isinstance(exc, Unauthorized) and self.counts:
            retry = self.guard.throttle.failed(self.client)
            if retry is not None:
                await self._answer(self.throttled(retry), {"Retry-After": str(retry)})
                return
        await self._answer(exc, {})

    @property
    def client(self) -> str:
        return self.scope["client"][0] if self.scope.get("client") else "unknown"

    def throttled(self, retry: int) -> TooManyRequests:
        return TooManyRequests(f"too many failed credentials from {self.client}: retry in {retry} s")

    async def _answer(self, exc: ForgeflowError, headers: dict[str, str]) -> None:
        if self.started:
            return  # the app's answer is already on its way
        self.answered = True
        data = json.dumps(self._shape(exc)).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await self._out({"type": "http.response.start", "status": exc.status_code, "headers": raw})
        await self._out({"type": "http.response.body", "body": data})

    def _shape(self, exc: ForgeflowError) -> dict:
        """Errors on an endpoint's routes in the shape of the route's dialect (OpenAI's under /v1, Azure's on the
        Azure AI model inference routes), as the gateway answers them; else the tree's."""
        if self.kind == "scoring":
            return error_body(dialect_of(self.scope["path"]), exc)
        return exc.to_dict()

    async def _out(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self.record(message["status"])
            self.started = True
            left = None if self.declared is None else self.declared - self.received
            if not self.complete and (left is None or left > DRAIN_BYTES):
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await self._send(message)


def _templates(app) -> dict[int, str | None]:
    """Each route's template with the prefix it was included under (None for a route included under two, which
    only matching can tell apart)."""
    found: dict[int, str | None] = {}
    for route in iter_route_contexts(getattr(app, "routes", ())):
        key = id(route.original_route)
        found[key] = route.path if found.get(key, route.path) == route.path else None
    return found


def _route(scope: Scope) -> tuple[str, dict]:
    """The template of the route a request goes (or would go) to, with the router's prefix, and its path
    parameters; NO_ROUTE when no route matches (the log never holds a path the client made up)."""
    partial = None
    for route in iter_route_contexts(getattr(scope.get("app"), "routes", ())):
        match, child = route.matches(scope)
        if match is Match.FULL:
            return route.path, child.get("path_params", {})
        if match is Match.PARTIAL and partial is None:
            partial = route.path, child.get("path_params", {})
    return partial or (NO_ROUTE, {})


def _method(method: str) -> str:
    """The request's method as the log keeps it: one of HTTP's own, else a fixed word (any token is a method)."""
    return method if method in METHODS else "OTHER"
