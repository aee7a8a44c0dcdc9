"""What an authenticated request costs the database: one query to know who a personal access token or a Studio
session signed in with one stands for (token, user and session joined), and no query at all on the event loop, where
it would hold up every other request of the server (the gateway's personal-token check and its endpoint view are
read on worker threads)."""

from __future__ import annotations

import asyncio
from contextlib import contextmanager

import httpx
import pytest
import sqlalchemy as sa

from forgeflow.api.app import create_app
from forgeflow.api.security import COOKIE
from forgeflow.store.workspace import Workspace

pytestmark = pytest.mark.anyio
STUDIO = {"X-Forgeflow-Studio": "1"}


class Queries:
    """The statements the store sends, and how many of them were sent from a thread running an event loop."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.on_loop = 0

    def __call__(self, _conn, _cursor, statement, *_args) -> None:
        self.sent.append(statement)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.on_loop += 1


@contextmanager
def counting(ws: Workspace):
    queries = Queries()
    sa.event.listen(ws.store.engine, "before_cursor_execute", queries)
    try:
        yield queries
    finally:
        sa.event.remove(ws.store.engine, "before_cursor_execute", queries)


@pytest.fixture
async def team(database_url):
    """A workspace (on SQLite, and on Postgres) with a reader, her personal token and a client for its app."""
    ws = Workspace.open()
    ws.identity.create_user("alice", "reader", created_by=None)
    token = ws.identity.create_token("alice")["token"]
    app = create_app(ws, background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield ws, token, client


async def test_a_personal_token_or_session_is_one_query_per_request(team):
    ws, token, client = team
    bearer = {"Authorization": f"Bearer {token}"}
    with counting(ws) as queries:
        r = await client.get("/api/me", headers=bearer)
    assert r.status_code == 200 and r.json()["user"] == "alice"
    assert len(queries.sent) == 1, queries.sent

    assert (await client.post("/api/session", json={"token": token})).status_code == 200
    assert COOKIE in client.cookies
    with counting(ws) as queries:
        r = await client.get("/api/me", headers=STUDIO)
    assert r.status_code == 200 and r.json()["user"] == "alice"
    assert len(queries.sent) == 1, queries.sent  # the owner token is not read for a personal token's session

    ws.identity.revoke(ws.identity.tokens("alice")[0]["id"])  # still refused at once: nothing is cached
    assert (await client.get("/api/me", headers=STUDIO)).status_code == 401
    client.cookies.clear()
    assert (await client.get("/api/me", headers=bearer)).status_code == 401


async def test_the_gateway_reads_the_store_off_its_event_loop(team):
    ws, token, client = team
    ws.identity.create_user("bob", "reader", created_by=None)
    bob = ws.identity.create_token("bob")["token"]
    owner = {"Authorization": f"Bearer {ws.admin_token()}"}
    r = await client.post("/api/endpoints", json={"name": "team-ep", "auth_mode": "token", "allowed_users": ["alice"]},
                          headers=owner)
    assert r.status_code == 201

    def score(key: str):
        return client.post("/endpoints/team-ep/score", json={"input_data": {"input_string": [{"role": "user", "content": "hi"}]}},
                           headers={"Authorization": f"Bearer {key}"})

    with counting(ws) as queries:
        # Past authentication, the endpoint has no deployment taking traffic yet.
        assert (await score(token)).status_code == 404
        assert (await score(bob)).status_code == 403
        assert (await score("ffp_0_not-a-token")).status_code == 401
    assert queries.sent and queries.on_loop == 0, queries.sent

    ws.identity.revoke(ws.identity.tokens("alice")[0]["id"])
    with counting(ws) as queries:
        assert (await score(token)).status_code == 401  # refused at once: the token is looked up every time
    assert len(queries.sent) == 1 and queries.on_loop == 0, queries.sent
