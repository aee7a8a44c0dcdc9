"""Roles on every route: each control-plane route declares the least role it needs exactly once, the
declarations match the rules of issue 12, and every route tried with a reader's, a contributor's and an owner's
token answers 403 (naming the missing role) or goes ahead, never 401 or 500."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from forgeflow.api.guard import route_of
from forgeflow.api.security import Needs
from forgeflow.store.identity import OWNER_USER, Role

pytestmark = pytest.mark.anyio

# The rules: reading is for readers and changing for contributors, except these.
EXCEPTIONS = {
    ("GET", "/api/endpoints/{name}/credentials"): Role.CONTRIBUTOR,  # endpoint keys are secrets
    ("POST", "/api/token/rotate"): Role.OWNER,  # the workspace's keys
    ("GET", "/api/workspace"): Role.OWNER,  # where the database is, and as whom
    ("POST", "/api/users"): Role.OWNER,
    ("PATCH", "/api/users/{name}"): Role.OWNER,
    ("DELETE", "/api/users/{name}"): Role.OWNER,
    ("POST", "/api/tokens"): Role.READER,  # anyone makes and revokes their own tokens (others' need owner)
    ("DELETE", "/api/tokens/{token_id}"): Role.READER,
}
FILL = {"name": "nothing-here", "deployment": "nothing-here", "job_id": "nothing-here", "version": "1",
        "path": "config.json", "token_id": "nothing-here"}


def control_routes(app) -> list[tuple[str, str, APIRoute]]:
    """(method, path, route) of every API route; the path with its router's prefix."""
    found = []
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        if isinstance(route, APIRoute):
            found += [(method, ctx.path, route) for method in sorted(ctx.methods or ())]
    return found


def declared(route: APIRoute) -> list[Role]:
    return [d.dependency.role for d in route.dependencies if isinstance(d.dependency, Needs)]


def expected(method: str, path: str) -> Role:
    return EXCEPTIONS.get((method, path), Role.READER if method in ("GET", "HEAD") else Role.CONTRIBUTOR)


def test_every_control_plane_route_declares_its_role_once_and_as_the_rules_say(app):
    wrong = []
    routes = control_routes(app)
    assert len(routes) > 60  # the walk sees the routers' routes, not just the app's own
    for method, path, route in routes:
        kind, _ = route_of(method, path)
        roles = declared(route)
        if kind in ("scoring", "public", "sign-in"):
            if roles:
                wrong.append(f"{method} {path} is reached without a credential yet declares {roles}")
        elif len(roles) != 1:
            wrong.append(f"{method} {path} declares {len(roles)} roles: {roles}")
        elif roles[0] != expected(method, path):
            wrong.append(f"{method} {path} needs {roles[0]}, the rules say {expected(method, path)}")
    assert not wrong, "\n".join(wrong)
    assert set(EXCEPTIONS) <= {(m, p) for m, p, _ in routes}  # no stale exception


@pytest.fixture
async def as_role(app, ws):
    """A client per role, each with a personal access token of a user of that role."""
    tokens = {}
    for role in Role:
        ws.identity.create_user(f"the-{role}", role, created_by=OWNER_USER)
        tokens[role] = ws.identity.create_token(f"the-{role}")["token"]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        clients = {role: httpx.AsyncClient(transport=transport, base_url="http://test",
                                           headers={"Authorization": f"Bearer {token}"})
                   for role, token in tokens.items()}
        yield clients
        for c in clients.values():
            await c.aclose()


async def test_every_route_with_every_role_is_allowed_or_403_never_500(app, as_role):
    seen = 0
    for method, path, route in control_routes(app):
        if route_of(method, path)[0] not in ("control", "upload") or method == "HEAD":
            continue
        url = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: FILL[m[1]], path)
        needed = declared(route)[0]
        for role, client in as_role.items():
            kw = {} if method in ("GET", "DELETE") else {"json": {}}
            r = await client.request(method, url, **kw)
            seen += 1
            assert r.status_code != 500 and r.status_code != 401, (method, path, role, r.status_code, r.text)
            if role.covers(needed):
                assert r.status_code != 403, (method, path, role, r.text)
            else:
                assert r.status_code == 403, (method, path, role, r.status_code, r.text)
                assert r.json()["error"] == "Forbidden"
                assert f"needs the {needed} role; you are {role}" in r.json()["message"]
    assert seen > 180


async def test_a_reader_sees_connections_masked_and_cannot_read_secrets_or_keys(app, as_role):
    reader, contributor = as_role[Role.READER], as_role[Role.CONTRIBUTOR]
    r = await contributor.post("/api/connections", json={"name": "c1", "configs": {"endpoint": "http://x"},
                                                         "secrets": {"key": "s3cret-value"}})
    assert r.status_code == 201 and r.json()["secrets"] == {"key": "******"}
    assert (await reader.get("/api/connections/c1")).json()["secrets"] == {"key": "******"}
    r = await reader.get("/api/connections/c1", params={"with_secrets": "true"})
    assert r.status_code == 403 and "reading a connection's secrets needs the contributor role" in r.json()["message"]
    r = await contributor.get("/api/connections/c1", params={"with_secrets": "true"})
    assert r.json()["secrets"] == {"key": "s3cret-value"}
    assert (await contributor.post("/api/endpoints", json={"name": "ep-keys"})).status_code == 201
    assert (await reader.get("/api/endpoints/ep-keys")).status_code == 200
    assert "primary_key" not in (await reader.get("/api/endpoints/ep-keys")).text
    assert (await reader.get("/api/endpoints/ep-keys/credentials")).status_code == 403
    assert "primary_key" in (await contributor.get("/api/endpoints/ep-keys/credentials")).json()
