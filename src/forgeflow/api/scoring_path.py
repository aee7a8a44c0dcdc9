"""The scoring routes' short path: a POST to an endpoint's scoring route (serving/gateway.py,
serving/azure_inference.py) goes straight to that route's function, past FastAPI's router, its exception
middleware, its exit stack and its dependency solving, which a scoring request needs none of and which ran on
every one of them (bench/README.md, "Gateway overhead"). The same functions answer; FastAPI still lists them
(OpenAPI, the 404s and 405s of its catch-all route).

Mounted innermost (api/app.py): inside the endpoint-address routing and the guard, so credentials, body caps, the
JSON depth limit and the failed-credential limit apply as on every route, and inside the server's error
middleware, so a failure nothing expected is still the 500 in the route's dialect. Anything else (another path or
method, a trailing slash) goes on to FastAPI unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Route = Callable[[str, Request], Awaitable[Response]]
PREFIX = "/endpoints/"


class ScoringPath:
    """`routes` maps a route's path under /endpoints/NAME (e.g. "/score") to its function."""

    def __init__(self, app: ASGIApp, routes: dict[str, Route]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(PREFIX):
                endpoint, slash, rest = path[len(PREFIX):].partition("/")
                route = self.routes.get("/" + rest) if endpoint and slash else None
                if route is not None:
                    response = await route(endpoint, Request(scope, receive, send))
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
