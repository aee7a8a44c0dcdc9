"""The scoring routes' short path (api/scoring_path.py): a POST to an endpoint's scoring route goes to that route's
function with the endpoint's name, past the app behind it; every other request reaches that app unchanged. Through
the whole app, a scoring request is answered without FastAPI's router and anything else still is routed by it."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from forgeflow.api.app import create_app
from forgeflow.api.scoring_path import ScoringPath
from forgeflow.store.workspace import Workspace


def _run(scoring: ScoringPath, method: str, path: str) -> list:
    async def go():
        scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message["type"])

        sent: list = []
        await scoring(scope, receive, send)
        return sent

    return asyncio.run(go())


def test_only_a_post_to_a_scoring_route_takes_the_short_path():
    taken, passed = [], []

    async def route(endpoint, request):
        from starlette.responses import Response

        taken.append((endpoint, request.url.path))
        return Response(b"{}", media_type="application/json")

    async def app(scope, receive, send):
        passed.append((scope["method"], scope["path"]))

    scoring = ScoringPath(app, {"/score": route, "/v1/chat/completions": route})
    assert _run(scoring, "POST", "/endpoints/blue-ep/score") == ["http.response.start", "http.response.body"]
    _run(scoring, "POST", "/endpoints/blue-ep/v1/chat/completions")
    assert taken == [("blue-ep", "/endpoints/blue-ep/score"), ("blue-ep", "/endpoints/blue-ep/v1/chat/completions")]
    others = [("GET", "/endpoints/blue-ep/score"), ("POST", "/endpoints/blue-ep/score/"), ("POST", "/endpoints//score"),
              ("POST", "/endpoints/blue-ep"), ("POST", "/endpoints/blue-ep/v1/models"), ("POST", "/api/jobs"),
              ("POST", "/endpoints/a/b/score"), ("HEAD", "/endpoints/blue-ep/v1/chat/completions")]
    for method, path in others:
        _run(scoring, method, path)
    assert passed == others and len(taken) == 2


SCORING = ["/score", "/v1/chat/completions", "/v1/completions", "/chat/completions"]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_scoring_needs_no_router_while_the_rest_still_uses_it(monkeypatch):
    """The app's router made to fail on every scoring route: a scoring request is still answered (here a 401 for a
    wrong key, by the route's own function), while a wrong method on the same path still gets the router's 405."""
    ws = Workspace.open()
    app = create_app(ws, background=False)
    async with app.router.lifespan_context(app):
        app.state.ff.endpoints.create_endpoint("quick")
        routed = []
        inner = app.router.middleware_stack or app.router.app

        async def watched(scope, receive, send):
            routed.append((scope["method"], scope["path"]))
            await inner(scope, receive, send)

        monkeypatch.setattr(app.router, "middleware_stack", watched)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers={"Authorization": "Bearer wrong"}) as client:
            for path in SCORING:
                r = await client.post(f"/endpoints/quick{path}", json={})
                assert r.status_code == 401, (path, r.text)
            r = await client.put("/endpoints/quick/score", json={})
            assert r.status_code == 405
    assert routed == [("PUT", "/endpoints/quick/score")]


def test_the_short_path_serves_exactly_the_apps_scoring_routes_which_need_nothing_fastapi_solves():
    """The short path calls each function with the endpoint's name and the request only: every route it serves is
    the app's POST route on that path with that function, asking FastAPI for nothing else (no dependency, query,
    header, cookie or body parameter it would have solved), and every such POST route under an endpoint is in it."""
    from fastapi.routing import APIRoute, iter_route_contexts

    from forgeflow.serving.gateway import SCORING_ROUTES

    app = create_app(Workspace.open(), background=False)
    prefix = "/endpoints/{endpoint}"
    posts = {ctx.path[len(prefix):]: ctx.route for ctx in iter_route_contexts(app.routes)
             if isinstance(ctx.original_route, APIRoute) and "POST" in (ctx.methods or ())
             and ctx.path.startswith(prefix + "/") and "{rest:path}" not in ctx.path}
    assert set(SCORING_ROUTES) == set(posts) == set(SCORING)
    for path, function in SCORING_ROUTES.items():
        dependant = posts[path].dependant  # the route as included, with any dependency its routers add
        assert posts[path].endpoint is function, path
        assert [p.name for p in dependant.path_params] == ["endpoint"], path
        assert dependant.request_param_name == "request", path
        assert not (dependant.dependencies or dependant.query_params or dependant.header_params
                    or dependant.cookie_params or dependant.body_params), path
